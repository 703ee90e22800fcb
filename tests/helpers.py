"""Helpers several test modules share: the tiny training config, the command lines of a tiny training and of
a small ingest. (Data builders live in tests/learnable.py and tests/s2_fixtures.py.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from landcover.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CLI = [sys.executable, "-m", "landcover.cli"]
# a training of one batch of one epoch, validated on one batch: the quickest run that writes every output
ONE_BATCH = ("trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")


def tiny_config(dataset: Path, *overrides: str) -> TrainConfig:
    """configs/tiny.yaml on ``dataset``, with ``KEY=VALUE`` overrides."""
    from landcover.config import load_config
    from landcover.training.config import TrainConfig

    return load_config(TrainConfig, TINY, [f"data.dataset={dataset}", *overrides])


def train_command(dataset: Path, out: Path, *settings: str) -> list[str]:
    """``landcover train`` arguments (no program) of configs/tiny.yaml on ``dataset`` into ``out``, each of
    ``settings`` a ``--set KEY=VALUE``."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return ["train", str(TINY), "--dataset", str(dataset), "--out", str(out), *sets]


def ingest_command(image: Path, labels: Path, out: Path) -> list[str]:
    """``landcover ingest`` arguments (no program) of a learnable scene into 32-px level-1 tiles in ``out``."""
    return [
        "ingest",
        str(image),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--nomenclature",
        "level1",
        "--tile-size",
        "32",
        "--set",
        "split.min_valid_fraction=0",
    ]
