"""Classification scores average over the classes present in the evaluated split; absent ones are listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landcover.config import load_config
from landcover.training.tile_counts import PatchOutputs, present_class_scores
from landcover.training.train import TrainConfig, train
from tests.learnable import make_learnable_dataset

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c", "d", "e"]


def hand_ap(score, y):
    order = np.argsort(-score)
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(y) + 1)
    return float((precision * hits).sum() / hits.sum())


def test_macro_ap_and_f1_over_present_classes_only(rng):
    labels = (rng.random((30, 5)) < 0.4).astype(np.int64)
    labels[:, 3:] = 0  # d and e have no positive in this split
    logits = rng.normal(size=(30, 5)) + 1.5 * labels
    collected = PatchOutputs()
    collected.logits, collected.labels = (
        [torch.tensor(logits[:12]), torch.tensor(logits[12:])],
        [torch.tensor(labels[:12]), torch.tensor(labels[12:])],
    )
    got = present_class_scores(collected, "test", NAMES, multilabel=True)
    probs = 1 / (1 + np.exp(-logits))
    aps = [hand_ap(probs[:, c], labels[:, c]) for c in range(3)]
    assert got["test/map_macro_present"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert got["test/ap_present"] == pytest.approx(dict(zip(NAMES[:3], aps, strict=True)), abs=1e-6)
    pred = probs > 0.5
    f1 = [2 * (pred[:, c] & (labels[:, c] == 1)).sum() / (pred[:, c].sum() + labels[:, c].sum()) for c in range(3)]
    assert got["test/f1_macro_present"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert got["test/classes_present"] == 3 and got["test/absent_classes"] == ["d", "e"]


def test_single_label_f1_over_present_classes(rng):
    labels = rng.integers(0, 3, 40)
    labels[:5] = 255  # tiles without a labelled pixel
    logits = rng.normal(size=(40, 5))
    logits[np.arange(40), np.where(labels == 255, 0, labels)] += 1.0
    collected = PatchOutputs()
    collected.logits, collected.labels = [torch.tensor(logits)], [torch.tensor(labels)]
    got = present_class_scores(collected, "val", NAMES, multilabel=False)
    keep = labels != 255
    pred, ref = logits[keep].argmax(1), labels[keep]
    f1 = [2 * ((pred == c) & (ref == c)).sum() / ((pred == c).sum() + (ref == c).sum()) for c in range(3)]
    assert got["val/f1_macro_present"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert got["val/absent_classes"] == ["d", "e"] and "val/map_macro_present" not in got


def test_a_classification_run_reports_present_class_scores(tmp_path):
    dataset = make_learnable_dataset(tmp_path / "learnable")
    cfg = load_config(
        TrainConfig,
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.dataset={dataset}",
            "model.task=classification",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
        ],
    )
    result = train(cfg, tmp_path / "cls")
    assert result is not None
    metrics = result.metrics
    assert isinstance(metrics["val/map_macro_present"], float)
    assert metrics["val/classes_present"] == len(metrics["val/ap_present"]) >= 1
    assert metrics["val/classes_present"] + len(metrics["val/absent_classes"]) == len(
        [k for k in metrics if k.startswith("val/f1/")]
    )
