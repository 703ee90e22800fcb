"""Checkpoint selection follows a moving average of the validation metric, not its luckiest epoch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from landcover.config import load_config
from landcover.training.train import TrainConfig, train
from tests.learnable import make_learnable_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_best_checkpoint_is_the_best_smoothed_epoch(tmp_path: Path) -> None:
    dataset = make_learnable_dataset(tmp_path, size=512)
    overrides = [
        f"data.dataset={dataset}",
        "trainer.max_epochs=4",
        "trainer.patience=4",
        "data.max_train_tiles_per_epoch=32",
    ]
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny.yaml", [*overrides, "trainer.monitor_smoothing=0.6"])
    metrics = train(cfg, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    raw = log.dropna(subset=["val/miou"]).groupby("epoch")["val/miou"].last()
    smooth, s = [], None
    for v in raw:  # the documented average, computed here independently
        s = v if s is None else 0.6 * s + 0.4 * v
        smooth.append(s)
    logged = log.dropna(subset=["val/miou_smooth"])["val/miou_smooth"].to_numpy()
    assert logged == pytest.approx(smooth, abs=1e-6)
    best = int(pd.Series(smooth, index=raw.index).idxmax())
    assert metrics is not None and metrics.best_epoch == best
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any("SmoothedMonitor" in k for k in ckpt["callbacks"])  # a resumed run continues the same average
