"""Checks of a command's arguments that need no heavy library (no torch, no Lightning, no geopandas).

The CLI runs them before importing the modules that do the work, so a missing file, a typo in a
``--set`` key or an unreadable config is reported in a second instead of after the tens of seconds
torch and Lightning take to import on a loaded machine; nothing is created before they pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from landcover.config import config_data
from landcover.errors import ConfigError, DatasetError, InputFormatError, ModelError

TRAIN_SECTIONS = ("model", "data", "optim", "loss", "trainer")  # TrainConfig's fields (a test keeps them equal)


def check_checkpoint_exists(path: str | Path) -> None:
    if not Path(path).is_file():
        raise ModelError(f"checkpoint {path} does not exist; point at RUN/checkpoints/best.ckpt of a "
                         "`landcover train` run")


def check_inputs_exist(inputs: Sequence[str | Path]) -> None:
    """Every input exists (checked before any output is created)."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if len(inputs) == 1 and missing:
        raise InputFormatError(f"{missing[0]} does not exist; check the path")
    if missing:
        raise InputFormatError(f"{len(missing)} of {len(inputs)} inputs do not exist ({', '.join(missing[:5])}"
                               f"{', ...' if len(missing) > 5 else ''}); check the paths (or the --from-list file)")


def check_dataset_folder(dataset: str | Path | None) -> None:
    """``dataset`` is a finished ``landcover ingest`` folder (the DataModule checks the rest)."""
    if dataset is None:
        raise ConfigError("no dataset: pass --dataset DIR (a folder made by landcover ingest) or set data.dataset")
    folder = Path(dataset)
    if not folder.is_dir() or not (folder / "dataset.json").is_file() or not (folder / "catalog.parquet").is_file():
        what = "does not exist" if not folder.is_dir() else "has no dataset.json or catalog.parquet"
        raise DatasetError(f"dataset folder {folder} {what}: it is not a finished ingested dataset; run "
                           "`landcover ingest ... --out DIR` first and pass that DIR")


def check_train_arguments(config: Path, overrides: Sequence[str] | None, resume: str | None,
                          **values: object) -> None:
    """The config file reads, ``--set`` assignments are KEY=VALUE in known sections, the dataset and the
    checkpoint to resume from exist. The full validation (every key and value) follows in train."""
    data = config_data(config, list(overrides or []), **values)
    unknown = sorted(set(data) - set(TRAIN_SECTIONS))
    if unknown:
        raise ConfigError(f"invalid settings in {config}: unknown section {', '.join(unknown)}; the sections are "
                          f"{', '.join(TRAIN_SECTIONS)} (check the config file and the --set keys)")
    for section in TRAIN_SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"invalid settings in {config}: {section} must be a section of settings")
    check_dataset_folder(data.get("data", {}).get("dataset"))
    if resume is not None and resume != "auto" and not Path(resume).is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint; pass RUN/checkpoints/last.ckpt or 'auto'")
