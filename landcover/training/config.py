"""The settings of a training run (``landcover train`` YAML configs), as pydantic models.

Only pydantic here: the CLI validates a whole config (every section, key and value) before torch and
Lightning are imported (the ``model`` section is :class:`landcover.models.config.ModelConfig`, pydantic too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from landcover.config import config_data, load_config
from landcover.errors import ConfigError
from landcover.models.config import ModelConfig
from landcover.preflight import check_dataset_folder


class AugmentConfig(pydantic.BaseModel, extra="forbid"):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: Annotated[float, pydantic.Field(ge=0, lt=1)] = 0.0  # max relative per-band brightness jitter
    contrast: Annotated[float, pydantic.Field(ge=0, lt=1)] = 0.0  # max relative per-band contrast jitter
    resized_crop: bool = False  # random crop of crop_scale x the area, resized back (mask: nearest)
    crop_scale: tuple[float, float] = (0.5, 1.0)

    @pydantic.field_validator("crop_scale")
    @classmethod
    def _scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {value}")
        return value


class DataConfig(pydantic.BaseModel, extra="forbid"):
    dataset: Path | None = None  # ingested dataset folder (set by the CLI --dataset)
    batch_size: Annotated[int, pydantic.Field(ge=1)] = 16
    num_workers: Annotated[int, pydantic.Field(ge=0)] | Literal["auto"] = "auto"  # see auto_num_workers()
    crop_size: Annotated[int | None, pydantic.Field(ge=1)] = None  # training random crop (None = whole tile)
    label_mode: Literal["multilabel", "single"] = "multilabel"
    present_threshold: Annotated[float | None, pydantic.Field(gt=0, le=1)] = None  # None: ingest's present_classes
    min_labelled_fraction: Annotated[float, pydantic.Field(ge=0, le=1)] = 0.05
    # which catalog column assigns tiles to splits: the spatial split, or BigEarthNet's official one
    split_column: Literal["split", "official_split"] = "split"
    # classification targets: 'auto' = the tile's patch labels (BigEarthNet) when it has them, else
    # the classes of its pixel labels; 'pixels' always uses the pixel labels
    targets: Literal["auto", "pixels"] = "auto"
    sampling: Literal["uniform", "rare_classes"] = "uniform"
    max_train_tiles_per_epoch: Annotated[int | None, pydantic.Field(ge=1)] = None
    # segmentation: train on windows of n x n tiles holding each drawn train tile (at a random one of the n x n
    # placements), so a network trained on small tiles sees context; pixels outside the split's train tiles
    # (buffer, other splits, beyond the scene) are no data and ignored: nothing crosses into another split
    context_tiles: Annotated[int, pydantic.Field(ge=1, le=8)] = 1
    augment: AugmentConfig = AugmentConfig()
    # auto: the input transform model.encoder_weights declares (landcover.models.input_transform), else dataset;
    # weights: that transform (an error if none is declared); dataset: the train-tile z-score; none: x / 10000
    normalization: Literal["auto", "weights", "dataset", "none"] = "auto"


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="L2 regularisation (AdamW decoupled weight decay)")
    encoder_lr_factor: float = Field(
        1.0, gt=0, description="Encoder learning rate = lr x this (e.g. 0.1 after unfreezing)"
    )
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["ce", "ce+dice", "focal", "ce+focal"] = "ce"
    class_weights: Literal["none", "inverse_frequency", "median_frequency"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(5, ge=1, description="Early stopping: epochs without improvement of the monitored metric")
    min_delta: float = Field(0.0, ge=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"] = "auto"  # Lightning's names
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    gradient_clip_val: float | None = None
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    log_every_n_steps: int = 10
    seed: int = 0
    deterministic: bool = False
    monitor_smoothing: float = Field(0.5, ge=0, lt=1)
    """The best checkpoint and early stopping follow an exponential moving average of the validation metric,
    ``s = w * s_previous + (1 - w) * metric`` with this w (0: the raw metric), not its luckiest epoch."""


class TrainConfig(BaseModel):
    """One training run (YAML: configs/*.yaml)."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    trainer: TrainerConfig = TrainerConfig()

    @pydantic.model_validator(mode="after")
    def _baseline_inputs(self) -> TrainConfig:
        if self.model.arch == "lightgbm" and self.data.normalization in ("dataset", "weights"):
            raise ValueError(
                "model.arch lightgbm reads reflectance (x / 10000): set data.normalization to auto or none"
            )
        return self


TRAIN_SECTIONS = tuple(TrainConfig.model_fields)


def check_train_arguments(
    config: Path, overrides: Sequence[str] | None, resume: str | None, **values: object
) -> TrainConfig:
    """The whole training config (file, options and ``--set`` assignments; every section, key and value), the
    dataset and the checkpoint to resume from; returns the validated config (pydantic only, no torch)."""
    data = config_data(config, list(overrides or []), **values)
    unknown = sorted(set(data) - set(TRAIN_SECTIONS))
    if unknown:
        raise ConfigError(
            f"invalid settings in {config}: unknown section {', '.join(unknown)}; the sections are "
            f"{', '.join(TRAIN_SECTIONS)} (check the config file and the --set keys)"
        )
    for section in TRAIN_SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"invalid settings in {config}: {section} must be a section of settings")
    cfg = load_config(TrainConfig, config, list(overrides or []), **values)
    check_dataset_folder(cfg.data.dataset)
    if resume is not None and resume != "auto" and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint; pass RUN/checkpoints/last.ckpt or 'auto'")
    return cfg
