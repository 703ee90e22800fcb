"""Intervals of a training run's scores: per-tile counts over the split blocks, saved for paired comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer

from landcover.config import load_config
from landcover.evaluation.bootstrap import bootstrap_scores, compare_runs, load_counts
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.train import TrainConfig, evaluate_checkpoint, train
from tests.learnable import make_learnable_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    dataset = make_learnable_dataset(tmp_path_factory.mktemp("learnable"))
    cfg = load_config(
        TrainConfig,
        ROOT / "configs" / "tiny.yaml",
        [f"data.dataset={dataset}", "trainer.max_epochs=2", "trainer.limit_train_batches=4"],
    )
    out = tmp_path_factory.mktemp("seg") / "run"
    result = train(cfg, out)
    assert result is not None
    return out, result.metrics, cfg


def independent_blocks(tiles, scheme):
    """Block of each tile: its footprint centre in the grid CRS, floored by the block size."""
    size = scheme["block_size_m"]
    keys = []
    for x0, y0, x1, y1, crs in zip(
        tiles["xmin"], tiles["ymin"], tiles["xmax"], tiles["ymax"], tiles["crs"], strict=True
    ):
        x, y = Transformer.from_crs(crs, scheme["grid_crs"], always_xy=True).transform((x0 + x1) / 2, (y0 + y1) / 2)
        keys.append((math.floor(x / size), math.floor(y / size)))
    return keys


def test_val_intervals_and_counts_of_a_run(run):
    out, metrics, _ = run
    iv = metrics["val/intervals"]
    assert iv["miou"]["estimate"] == pytest.approx(metrics["val/miou"], abs=1e-6)
    assert iv["overall_accuracy"]["estimate"] == pytest.approx(metrics["val/accuracy"], abs=1e-6)
    assert iv["miou_reference"]["estimate"] == pytest.approx(metrics["val/miou_reference"], abs=1e-12)
    assert json.loads((out / "metrics.json").read_text())["val/intervals"] == iv
    ids, groups, counts = load_counts(out / "val_counts.npz")
    cm = np.array(metrics["confusion_matrix"])
    np.testing.assert_array_equal(counts.sum(0), np.stack([np.diag(cm), cm.sum(1), cm.sum(0)]))
    info = json.loads((out / "dataset.json").read_text())
    data = LandcoverDataModule(run[2].data, task="segmentation")
    tiles = data.split_tiles("val")
    assert list(ids) == list(tiles["tile_id"])  # dataset order
    keys = independent_blocks(tiles, info["split_scheme"])
    # the same partition of the tiles into blocks (block numbers may differ)
    assert len(set(keys)) == len(set(groups.tolist())) == iv["n_blocks"] > 1
    assert len(set(zip(keys, groups.tolist(), strict=True))) == len(set(keys))
    want = bootstrap_scores(counts, groups, class_names=list(metrics["per_class_iou"]))
    assert {k: v for k, v in iv.items() if k != "blocks"} == want.to_dict() and iv["blocks"] == "blocks"


def test_test_split_counts_and_paired_comparison_of_runs(run, tmp_path):
    out, _, cfg = run
    data = LandcoverDataModule(cfg.data, task="segmentation")
    (tmp_path / "a").mkdir()
    test = evaluate_checkpoint(
        out / "checkpoints" / "best.ckpt", data, split="test", counts_path=tmp_path / "a" / "test_counts.npz"
    )
    assert test["test/intervals"]["miou"]["estimate"] == pytest.approx(test["test/miou"], abs=1e-6)
    diff = compare_runs(tmp_path / "a", tmp_path / "a")
    assert diff.miou.estimate == diff.miou.low == diff.miou.high == 0.0
