"""The settings of a network and of its pretrained weights (``model:`` in a training config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

ENCODERS = ("resnet18", "resnet34", "resnet50")


class ModelConfig(BaseModel, extra="forbid"):
    """Settings of the network and of its pretrained weights."""

    task: Literal["segmentation", "classification"] = "segmentation"
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
