"""The PyTorch engine of ``predict``: a checkpoint's model on CPU (channels-last, float32 or bf16) or CUDA
(autocast), fed raw windows that it normalises with the checkpoint's statistics."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landcover.errors import ConfigError
from landcover.inference.checkpoint import LoadedModel, load_checkpoint, probabilities, resolve_device


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw windows (B, C, H, W) -> ``(x - mean) / std``, 0 where a pixel is 0 in every band (as in training)."""
    x = x.float()
    return (x - mean) / std * (x != 0).any(dim=1, keepdim=True)


class TorchEngine:
    """A loaded checkpoint run by PyTorch."""

    name, backend = "torch", "torch"

    def __init__(self, lm: LoadedModel, device: torch.device, precision: str):
        self.lm, self.info, self.dev = lm, lm.info(), device
        self.device = str(device)
        self.amp = _autocast_dtype(device, precision)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.amp]
        lm.model.to(device).eval()
        # on a CPU: batch norms folded into the convolutions before them, and channels-last memory format: the
        # same float32 arithmetic up to rounding, laid out for the CPU kernels (docs/benchmarks.md: each lever)
        self.channels_last = device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in lm.model.modules())
        if self.channels_last:
            self.lm = dataclasses.replace(
                lm, model=_fold_batch_norms(lm.model, len(lm.bands)).to(memory_format=torch.channels_last)
            )
        self.classes_last = self.channels_last and lm.task == "segmentation"  # a layout hint for the strip
        self.mean = torch.from_numpy(lm.mean.reshape(1, -1, 1, 1)).to(device)
        self.std = torch.from_numpy(lm.std.reshape(1, -1, 1, 1)).to(device)

    @classmethod
    def load(
        cls,
        model: str | Path | LoadedModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
    ) -> TorchEngine:
        if threads:
            torch.set_num_threads(threads)
        lm = model if isinstance(model, LoadedModel) else load_checkpoint(model)
        return cls(lm, resolve_device(device), precision)

    def tensor(self, raw: np.ndarray) -> torch.Tensor:
        """Raw windows on the device, normalised (uint16 travels as int16 to a GPU: torch's uint16 is partial)."""
        if self.dev.type == "cuda":
            travel = raw.view(np.int16) if raw.dtype == np.uint16 else raw.astype(np.float32)
            x = torch.from_numpy(travel).pin_memory().to(self.dev, non_blocking=True)
            x = x.to(torch.int32).bitwise_and_(0xFFFF) if x.dtype == torch.int16 else x
        else:
            x = torch.from_numpy(raw.astype(np.float32, copy=False))
        x = normalise(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def probabilities(self, raw: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), _out_of_memory(len(raw), raw.shape[-1]):
            return probabilities(self.lm, self.tensor(raw), self.amp)


def _fold_batch_norms(model: nn.Module, channels: int) -> nn.Module:
    """``model`` with every batch norm that follows a convolution folded into it (torch.fx's inference fusion),
    or ``model`` itself when it has no batch norm, cannot be traced (an untraceable architecture, a wrapper with
    side effects), or the folded model disagrees with it on a probe window (more than float rounding)."""
    import torch.fx.experimental.optimization as fx_optimization

    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    try:
        fused = fx_optimization.fuse(model)
        probe = torch.randn(2, channels, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            same = torch.allclose(fused(probe), model(probe), rtol=1e-3, atol=1e-3)
    except Exception:  # fx raises many kinds of errors on untraceable code: run it unfused
        return model
    return fused if same else model


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if device.type == "cuda":
        if precision == "fp32":
            return None
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        if not _cpu_has_bf16():
            raise ConfigError("--precision bf16: this CPU has no bfloat16 instructions (AVX512-BF16/AMX); use fp32")
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


@contextlib.contextmanager
def _out_of_memory(batch_size: int, tile: int) -> Iterator[None]:
    """A GPU out of memory as a ConfigError naming the options that reduce it."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise ConfigError(
            f"the GPU ran out of memory with --batch-size {batch_size} and {tile}-px windows; "
            "pass a smaller --batch-size (or --tile)"
        ) from exc
