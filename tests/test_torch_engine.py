"""predict's PyTorch engine on a CPU: batch norms folded and channels-last give the plain model's probabilities
(float rounding only); models it cannot fold safely run as they are; bf16 needs the CPU's instructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landcover.errors import ConfigError
from landcover.inference import torch_engine
from landcover.inference.checkpoint import LoadedModel, load_checkpoint
from landcover.inference.torch_engine import TorchEngine
from tests.learnable import write_unet_checkpoint
from tests.test_predict import Conv1x1, meta


def test_folded_channels_last_unet_gives_the_plain_models_probabilities(tmp_path) -> None:
    ckpt = write_unet_checkpoint(tmp_path / "unet.ckpt", mean=1100.0, std=650.0)
    engine = TorchEngine.load(ckpt, device="cpu")
    assert engine.channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in engine.lm.model.modules())  # folded
    plain = load_checkpoint(ckpt)
    raw = np.random.default_rng(0).integers(0, 4000, (3, 4, 96, 128)).astype(np.uint16)
    raw[:, :, :10] = 0  # no data
    x = torch.from_numpy(raw.astype(np.float32))
    mean, std = torch.from_numpy(plain.mean.reshape(1, -1, 1, 1)), torch.from_numpy(plain.std.reshape(1, -1, 1, 1))
    with torch.inference_mode():
        want = torch.softmax(plain.model((x - mean) / std * (x != 0).any(1, keepdim=True)), 1)
    got = engine.probabilities(raw)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.9999


def test_a_model_with_python_side_effects_is_not_traced_away() -> None:
    model = Conv1x1()
    engine = TorchEngine(LoadedModel.from_meta(model, meta()), torch.device("cpu"), "fp32")
    engine.probabilities(np.ones((2, 4, 32, 32), np.uint16))
    assert model.calls == 1  # its own forward ran (an fx-traced copy would have frozen the counter)


def test_bf16_on_a_cpu_without_bfloat16_instructions_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch_engine, "_cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="bfloat16"):
        TorchEngine(LoadedModel.from_meta(Conv1x1(), meta()), torch.device("cpu"), "bf16")


def test_the_engines_normalised_windows_equal_the_training_expression_bit_for_bit() -> None:
    engine = TorchEngine(LoadedModel.from_meta(Conv1x1(), meta()), torch.device("cpu"), "fp32")
    engine.channels_last = True  # the layout the engine gives U-Nets on a CPU
    raw = np.random.default_rng(3).integers(0, 9000, (2, 4, 40, 56)).astype(np.uint16)
    raw[:, :, 5:9] = 0  # no data
    raw[0, 1, 20:22] = 0  # one band 0: still valid
    x = torch.from_numpy(raw.astype(np.float32))
    want = (x - engine.mean) / engine.std * (x != 0).any(1, keepdim=True)
    got = engine.tensor(raw)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
    assert torch.equal(torch_engine.normalise(x, engine.mean, engine.std), want)
