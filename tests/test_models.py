"""Model construction: shapes, dropout, encoder/head split, configs (no weights, no network)."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch

from landcover.errors import ConfigError
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.models.encoders import count_parameters, encoder_of, encoder_parameter_names, parameter_groups
from landcover.nomenclature import default_bands

BAND_SETS = {4: ["B04", "B03", "B02", "B08"], 12: list(default_bands("L2A")), 13: list(default_bands("L1C"))}


@pytest.mark.parametrize("n_bands", [4, 12, 13])
def test_segmentation_output_shape(n_bands: int) -> None:
    torch.manual_seed(0)
    model, prov = build_model(ModelConfig(), BAND_SETS[n_bands], num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, n_bands, 64, 64))
    assert out.shape == (2, 7, 64, 64)
    assert prov["data_bands"] == BAND_SETS[n_bands]
    assert prov["loaded"] is False and prov["source"] == "none"
    assert encoder_of(model).conv1.in_channels == n_bands


@pytest.mark.parametrize("n_bands", [4, 12, 13])
def test_classification_output_shape(n_bands: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(task="classification", dropout=0.2)
    model, _ = build_model(cfg, BAND_SETS[n_bands], num_classes=19)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, n_bands, 64, 64))
    assert out.shape == (3, 19)
    assert model.drop_rate == 0.2


def test_segmentation_dropout_keeps_state_dict_keys_and_is_active_in_training() -> None:
    plain, _ = build_model(ModelConfig(), BAND_SETS[4], 5)
    dropped, _ = build_model(ModelConfig(dropout=0.5), BAND_SETS[4], 5)
    assert set(plain.state_dict()) == set(dropped.state_dict())  # checkpoints stay interchangeable
    head = dropped.segmentation_head
    head.load_state_dict(plain.segmentation_head.state_dict())
    x = torch.randn(1, 16, 8, 8)  # the decoder's last output
    head.eval()
    with torch.no_grad():
        assert torch.equal(head(x), plain.segmentation_head(x))  # no dropout at eval time
        head.train()
        assert not torch.equal(head(x), plain.segmentation_head(x))


def test_encoder_of_classifier_excludes_head_and_shares_parameters() -> None:
    model, _ = build_model(ModelConfig(task="classification"), BAND_SETS[12], 10)
    encoder = encoder_of(model)
    keys = set(encoder.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert not any(k.startswith("fc.") for k in keys)
    assert encoder.conv1.weight is model.conv1.weight
    assert encoder(torch.randn(1, 12, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_parameter_groups_split_encoder_from_head(task: str) -> None:
    model, _ = build_model(ModelConfig(task=task), BAND_SETS[4], 3)
    groups = parameter_groups(model)
    names = encoder_parameter_names(model)
    assert sum(p.numel() for p in groups["encoder"]) + sum(p.numel() for p in groups["head"]) == (
        count_parameters(model)
    )
    if task == "segmentation":
        assert all(n.startswith("encoder.") for n in names)
        assert "decoder" in "".join(n for n, _ in model.named_parameters() if n not in names)
    else:
        assert {n for n, _ in model.named_parameters()} - names == {"fc.weight", "fc.bias"}


def test_count_parameters_trainable_only() -> None:
    model, prov = build_model(ModelConfig(task="classification"), BAND_SETS[4], 3)
    total = count_parameters(model)
    assert prov["parameters"] == total
    model.fc.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.fc.weight.numel()


def test_load_weights_false_needs_no_file(tmp_path) -> None:
    cfg = ModelConfig(encoder_weights=str(tmp_path / "missing.ckpt"), allow_download=False)
    _, prov = build_model(cfg, BAND_SETS[4], 3, load_weights=False)
    assert prov["loaded"] is False and prov["source"] == "checkpoint"
    assert prov["encoder_weights"].endswith("missing.ckpt")


def test_config_validation() -> None:
    assert ModelConfig(encoder_weights=" None ").encoder_weights == "none"
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(encoder="resnet101")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(dropout=1.0)
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(unknown_option=1)  # type: ignore[call-arg]


def test_bad_bands_and_classes() -> None:
    with pytest.raises(ConfigError):
        build_model(ModelConfig(), [], 3)
    with pytest.raises(ConfigError):
        build_model(ModelConfig(), ["B02", "B02"], 3)
    with pytest.raises(ConfigError):
        build_model(ModelConfig(), ["B02"], 0)


def test_models_module_does_not_import_lightning() -> None:
    import landcover.models.build

    source = Path(landcover.models.build.__file__).read_text(encoding="utf-8")
    assert "import lightning" not in source and "from lightning" not in source
    assert "pytorch_lightning" not in source
