"""The settings of a network and of its pretrained weights (``model:`` in a training config)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from landcover.sources.recipe import period_band, split_band

CHECKPOINT_FORMAT = "landcover-checkpoint/1"  # the landcover section of a checkpoint
ENCODERS = ("resnet18", "resnet34", "resnet50")

INDICES: dict[str, tuple[str, str]] = {
    # name: (a, b) -> (a - b) / (a + b)
    "NDVI": ("B08", "B04"),  # vegetation (Rouse et al. 1974)
    "NDWI": ("B03", "B08"),  # open water (McFeeters 1996)
    "MNDWI": ("B03", "B11"),  # water, built-up suppressed (Xu 2006)
    "NDBI": ("B11", "B08"),  # built-up (Zha et al. 2003)
}


class FeatureRecipe(BaseModel, extra="forbid"):
    """Which features the baseline computes per pixel (recorded in its checkpoint)."""

    indices: bool = True
    """Add the normalised-difference indices of :data:`INDICES` whose bands are present."""
    mean_scales: list[int] = Field(default_factory=lambda: [5, 11, 21])
    """Sides (odd, pixels) of the square neighbourhoods whose mean of every band and index is a feature."""
    std_scale: int | None = 5
    """Side of the neighbourhood whose standard deviation of every band and index is a feature (None: none)."""

    @field_validator("mean_scales")
    @classmethod
    def _odd_scales(cls, value: list[int]) -> list[int]:
        if any(s < 3 or s % 2 == 0 for s in value):
            raise ValueError(f"neighbourhood sides must be odd numbers of pixels >= 3, got {value}")
        return sorted(set(value))

    @field_validator("std_scale")
    @classmethod
    def _odd_std(cls, value: int | None) -> int | None:
        if value is not None and (value < 3 or value % 2 == 0):
            raise ValueError(f"std_scale must be an odd number of pixels >= 3 (or null), got {value}")
        return value

    @property
    def halo(self) -> int:
        """Pixels of context a feature needs on each side."""
        return max([*self.mean_scales, self.std_scale or 1]) // 2

    def index_names(self, bands: Sequence[str]) -> list[str]:
        """The indices whose two bands are present; a composite's per period (``NDVI@spring``)."""
        periods = list(dict.fromkeys(split_band(b)[1] for b in bands))
        return [
            n if p is None else period_band(n, p)
            for p in periods
            for n, (a, b) in INDICES.items()
            if self.indices and _named(a, p) in bands and _named(b, p) in bands
        ]

    def feature_names(self, bands: Sequence[str]) -> list[str]:
        base = [*bands, *self.index_names(bands)]
        names = list(base)
        names += [f"{b}_mean{s}" for s in self.mean_scales for b in base]
        if self.std_scale:
            names += [f"{b}_std{self.std_scale}" for b in base]
        return names


class LightGBMConfig(BaseModel, extra="forbid"):
    """``model.lightgbm``: the features and the gradient boosting of the per-pixel baseline."""

    features: FeatureRecipe = Field(default_factory=FeatureRecipe)
    pixels_per_class: int = Field(20000, ge=100)
    """Training pixels drawn per class at most (uniformly over the train tiles); classes are then balanced
    by sample weights, so a rare class counts as much as a common one."""
    validation_pixels_per_class: int = Field(5000, ge=100)
    """Validation pixels per class at most, for early stopping and the validation scores."""
    n_estimators: int = Field(400, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(20, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(1.0, ge=0)
    early_stopping_rounds: int = Field(30, ge=1)
    """Stop when the validation log-loss has not improved for this many rounds (the best round is kept)."""
    num_threads: int = Field(0, ge=0)
    """LightGBM threads (0: its default, one per core)."""


class ModelConfig(BaseModel, extra="forbid"):
    """Settings of the network and of its pretrained weights."""

    task: Literal["segmentation", "classification"] = "segmentation"
    arch: Literal["cnn", "lightgbm"] = "cnn"
    """'cnn': a U-Net (segmentation) or ResNet (classification) with ``encoder``; 'lightgbm': the per-pixel
    gradient-boosting baseline (segmentation only) with the settings of ``lightgbm``."""
    lightgbm: LightGBMConfig | None = None
    """Settings of the lightgbm baseline (None: the defaults of :class:`LightGBMConfig`)."""
    encoder: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    encoder_weights: str = "none"
    """'none' | 'imagenet' | a torchgeo name such as 'ResNet18_Weights.SENTINEL2_ALL_MOCO' |
    a path to a local .pth/.pt/.safetensors/Lightning .ckpt file."""
    weight_bands: list[str] | None = None
    """For local files: the band order the file's first convolution expects."""
    adapt_channels: bool = False
    """Allow data bands the weights lack (their kernels start as the mean kernel)."""
    weights_dir: Path | None = None
    """Searched for weight files before the torch hub cache ($TORCH_HOME/hub/checkpoints)."""
    allow_download: bool = True
    """If a named weight file is not found locally, try to download it."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout before the classification head / the segmentation head."""
    freeze_encoder_epochs: int = Field(0, ge=0)
    """Epochs with a frozen encoder at the start of training (used by the training task)."""
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    """Stochastic depth: the chance that a residual block is skipped in training (timm's
    ``drop_path_rate``, the classification ResNets; smp's U-Net encoders do not support it)."""

    @field_validator("encoder_weights")
    @classmethod
    def _strip_spec(cls, value: str) -> str:
        value = value.strip()
        return "none" if value.lower() in ("", "none", "null", "random") else value

    @model_validator(mode="after")
    def _baseline_segments(self) -> ModelConfig:
        if self.arch == "lightgbm" and self.task != "segmentation":
            raise ValueError(
                "model.arch lightgbm is a per-pixel (segmentation) baseline; use model.arch cnn for classification"
            )
        return self


def _named(band: str, period: str | None) -> str:
    return band if period is None else period_band(band, period)


def index_bands(name: str) -> tuple[str, str]:
    """The two bands of an index name of :meth:`FeatureRecipe.index_names` (``NDVI@spring`` -> B08@spring, B04@spring)."""
    index, period = split_band(name)
    a, b = INDICES[index]
    return _named(a, period), _named(b, period)
