"""Spatial k-fold cross-validation: every block tested once, the dataset itself untouched."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest

from landcover.config import load_config
from landcover.dataset.catalog import read_catalog
from landcover.errors import ConfigError
from landcover.training.config import TrainConfig
from landcover.training.crossval import cross_validate
from tests.learnable import make_learnable_dataset


def test_cross_validation_tests_each_block_once_and_summarises(tmp_path: Path) -> None:
    dataset = make_learnable_dataset(tmp_path)
    before = hashlib.sha256((dataset / "catalog.parquet").read_bytes()).hexdigest()
    overrides = [
        "model.arch=lightgbm",
        f"data.dataset={dataset}",
        "model.lightgbm.n_estimators=15",
        "model.lightgbm.pixels_per_class=500",
    ]
    cfg = load_config(TrainConfig, None, overrides)
    summary = cross_validate(cfg, tmp_path / "cv", folds=3)
    tested = [set(read_catalog(tmp_path / "cv" / f"fold-{k}" / "dataset", split="test")["tile_id"]) for k in range(3)]
    assert all(tested) and not (tested[0] & tested[1]) and not (tested[1] & tested[2]) and not (tested[0] & tested[2])
    values = [row["test/miou"] for row in summary["per_fold"]]
    assert summary["mean"]["test/miou"] == pytest.approx(statistics.mean(values))
    assert summary["sd"]["test/miou"] == pytest.approx(statistics.stdev(values))
    assert json.loads((tmp_path / "cv" / "crossval.json").read_text()) == summary
    assert (tmp_path / "cv" / "fold-1" / "run" / "test_counts.npz").is_file()
    assert hashlib.sha256((dataset / "catalog.parquet").read_bytes()).hexdigest() == before  # untouched
    again = cross_validate(cfg, tmp_path / "cv", folds=3)  # finished folds are kept, not retrained
    assert again == summary
    with pytest.raises(ConfigError, match="at least 3 folds"):
        cross_validate(cfg, tmp_path / "cv2", folds=2)


def test_cli_train_folds(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from landcover.cli import app

    dataset = make_learnable_dataset(tmp_path, size=512)
    config = tmp_path / "b.yaml"
    config.write_text("model: {arch: lightgbm, lightgbm: {n_estimators: 10, pixels_per_class: 300}}\n")
    args = ["train", str(config), "--dataset", str(dataset), "--out", str(tmp_path / "cv"), "--folds", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert f"test/miou: {summary['mean']['test/miou']:.3f} +- {summary['sd']['test/miou']:.3f}" in result.output
    bad = CliRunner().invoke(app, [*args[:-1], "2"])
    assert bad.exit_code == 2 and "--folds" in bad.output
