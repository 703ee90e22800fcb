"""Spatial block bootstrap of the map scores (landcover.evaluation.bootstrap)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landcover.errors import ConfigError, DatasetError
from landcover.evaluation.bootstrap import (
    bootstrap_scores,
    class_counts,
    compare_runs,
    paired_difference,
    save_counts,
    scores_from_counts,
)
from landcover.evaluation.confusion import scores_from_confusion

K = 5


def unit_maps(rng, n_units: int, size: int = 16, accuracy: float = 0.7, block_of=None):
    """(ref, pred) uint8 maps of ``n_units`` units; units of the same block share their class mix."""
    refs, preds = [], []
    for u in range(n_units):
        mix_seed = block_of[u] if block_of is not None else u
        mix = np.random.default_rng(1000 + int(mix_seed)).dirichlet(np.full(K, 0.3))
        ref = rng.choice(K, size=(size, size), p=mix).astype(np.uint8)
        wrong = rng.random(ref.shape) > accuracy
        pred = np.where(wrong, rng.integers(0, K, ref.shape), ref).astype(np.uint8)
        ref[rng.random(ref.shape) < 0.05] = 255
        pred[rng.random(ref.shape) < 0.02] = 255
        refs.append(ref)
        preds.append(pred)
    return refs, preds


def confusion_of(ref, pred):
    valid = (ref != 255) & (pred != 255)
    return np.bincount(ref[valid].astype(int) * K + pred[valid], minlength=K * K).reshape(K, K)


def test_class_counts_are_the_diagonal_and_margins_of_the_confusion():
    rng = np.random.default_rng(0)
    (ref,), (pred,) = unit_maps(rng, 1)
    cm = confusion_of(ref, pred)
    counts = class_counts(ref, pred, K)
    assert counts.dtype == np.int64 and counts.shape == (3, K)
    np.testing.assert_array_equal(counts, np.stack([np.diag(cm), cm.sum(1), cm.sum(0)]))


def test_estimates_equal_the_plain_scores():
    rng = np.random.default_rng(1)
    refs, preds = unit_maps(rng, 12)
    refs[3][:] = 255  # a unit without labels
    preds[0][preds[0] == 4] = 3  # class 4 predicted less, and absent from the reference of some units
    counts = np.stack([class_counts(r, p, K) for r, p in zip(refs, preds, strict=True)])
    plain = scores_from_confusion(sum(confusion_of(r, p) for r, p in zip(refs, preds, strict=True)))
    boot = bootstrap_scores(counts, np.arange(12) // 3, replicates=50).to_dict()
    assert boot["miou"]["estimate"] == pytest.approx(plain["miou"], abs=1e-12)
    assert boot["miou_reference"]["estimate"] == pytest.approx(plain["miou_reference"], abs=1e-12)
    assert boot["overall_accuracy"]["estimate"] == pytest.approx(plain["overall_accuracy"], abs=1e-12)
    ious = {c["id"]: c["estimate"] for c in boot["per_class_iou"]}
    assert ious == pytest.approx({c["id"]: c["iou"] for c in plain["per_class"] if c["iou"] is not None}, abs=1e-12)
    assert boot["unit"] == "block" and boot["n_units"] == 12 and boot["n_blocks"] == 4
    assert "understate" in boot["note"]  # 4 blocks < 5
    json.dumps(boot)


def test_miou_reference_averages_over_reference_classes_only():
    cm = np.array([[5, 5, 0], [0, 10, 0], [0, 0, 0]])
    cm[0, 2] = 2  # class 2 predicted but not in the reference: IoU 0 counts in miou, not in miou_reference
    s = scores_from_confusion(cm)
    iou0, iou1 = 5 / 12, 10 / 15
    assert s["miou"] == pytest.approx((iou0 + iou1 + 0) / 3)
    assert s["miou_reference"] == pytest.approx((iou0 + iou1) / 2)
    counts = np.stack([np.diag(cm), cm.sum(1), cm.sum(0)])
    assert float(scores_from_counts(counts)["miou_reference"]) == pytest.approx(s["miou_reference"], abs=1e-12)


def slow_reference(counts, groups, replicates, seed, level):
    """Loop over replicates: draw blocks with np.random.choice, sum the counts of their units, score."""
    rng = np.random.default_rng(seed + 12345)
    blocks = np.unique(groups)
    values = {"miou": [], "miou_reference": [], "overall_accuracy": []}
    for _ in range(replicates):
        drawn = rng.choice(blocks, size=len(blocks), replace=True)
        total = sum(counts[groups == b].sum(0) for b in drawn)
        cm_scores = scores_from_counts(total)
        for key in values:
            values[key].append(float(cm_scores[key]))
    q = [(1 - level) / 2, (1 + level) / 2]
    return {key: np.quantile(v, q) for key, v in values.items()}, {key: np.std(v) for key, v in values.items()}


def test_agrees_with_a_slow_reference_within_monte_carlo_error():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(15), 2)
    refs, preds = unit_maps(rng, 30, block_of=groups)
    counts = np.stack([class_counts(r, p, K) for r, p in zip(refs, preds, strict=True)])
    fast = bootstrap_scores(counts, groups, replicates=2000, seed=3).to_dict()
    slow, sd = slow_reference(counts, groups, 2000, 3, 0.95)
    for key in ("miou", "miou_reference", "overall_accuracy"):
        for bound, j in (("low", 0), ("high", 1)):
            # two independent Monte Carlo estimates of the same quantile: within a few MC standard errors
            tolerance = 4 * np.sqrt(2) * fast[key][f"mc_se_{bound}"] + 0.05 * sd[key]
            assert abs(fast[key][bound] - slow[key][j]) < tolerance, (key, bound, fast[key], slow[key])
        assert fast[key]["low"] < fast[key]["estimate"] < fast[key]["high"]


def test_resampling_blocks_widens_the_interval_when_units_of_a_block_are_correlated():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(8), 6)  # 8 blocks of 6 units sharing their class mix
    refs, preds = unit_maps(rng, 48, block_of=groups)
    counts = np.stack([class_counts(r, p, K) for r, p in zip(refs, preds, strict=True)])
    by_unit = bootstrap_scores(counts, None, replicates=1000).to_dict()
    by_block = bootstrap_scores(counts, groups, replicates=1000).to_dict()
    assert by_unit["unit"] == "tile" and by_unit["n_blocks"] == 48 and by_unit["note"] is None
    for key in ("miou", "miou_reference"):
        width_unit = by_unit[key]["high"] - by_unit[key]["low"]
        width_block = by_block[key]["high"] - by_block[key]["low"]
        assert width_block > 1.3 * width_unit, (key, width_unit, width_block)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(5)
    refs, preds = unit_maps(rng, 20)
    counts = np.stack([class_counts(r, p, K) for r, p in zip(refs, preds, strict=True)])
    diff = paired_difference(counts, counts, np.arange(20) // 2, replicates=200).to_dict()
    for key in ("miou", "miou_reference", "overall_accuracy"):
        assert diff[key]["estimate"] == diff[key]["low"] == diff[key]["high"] == 0.0
        assert diff[key]["share_b_better"] == 0.0
    assert diff["same_reference"] and diff["difference"] == "b - a"


def test_a_clearly_better_model_has_a_difference_interval_above_zero(tmp_path):
    rng = np.random.default_rng(6)
    groups = np.arange(24) // 3
    refs, worse = unit_maps(rng, 24, accuracy=0.5, block_of=groups)
    better = []
    for r, w in zip(refs, worse, strict=True):  # b: fixes 60 % of a's errors on the same pixels
        fix = (rng.random(r.shape) < 0.6) & (r != 255)
        better.append(np.where(fix, r, w).astype(np.uint8))
    a = np.stack([class_counts(r, p, K) for r, p in zip(refs, worse, strict=True)])
    b = np.stack([class_counts(r, p, K) for r, p in zip(refs, better, strict=True)])
    diff = paired_difference(a, b, groups, replicates=500)
    for iv in (diff.miou, diff.miou_reference, diff.overall_accuracy):
        assert iv.estimate > 0 and iv.low is not None and iv.low > 0 and iv.share_positive == 1.0
    reverse = paired_difference(b, a, groups, replicates=500)
    assert reverse.miou.estimate == pytest.approx(-diff.miou.estimate) and reverse.miou.high < 0
    # the same comparison from counts saved next to two runs' metrics.json
    ids = [f"t{i}" for i in range(24)]
    for name, counts in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_counts(tmp_path / name / "test_counts.npz", ids, groups, counts)
    again = compare_runs(tmp_path / "a", tmp_path / "b", replicates=500)
    assert again.to_dict() == diff.to_dict()
    save_counts(tmp_path / "b" / "test_counts.npz", ids[::-1], groups, b)
    with pytest.raises(DatasetError, match="different test tiles"):
        compare_runs(tmp_path / "a", tmp_path / "b")


def test_bad_input_is_refused_with_a_landcover_error():
    counts = np.zeros((4, 3, K), np.int64)
    with pytest.raises(DatasetError, match="counts must be"):
        bootstrap_scores(counts[0])
    with pytest.raises(DatasetError, match="one block per unit"):
        bootstrap_scores(counts, np.arange(3))
    with pytest.raises(ConfigError, match="level"):
        bootstrap_scores(counts, level=95)
    with pytest.raises(ConfigError, match="replicates"):
        bootstrap_scores(counts, replicates=1)
    with pytest.raises(DatasetError, match="different units"):
        paired_difference(counts, counts[:3])
    assert bootstrap_scores(counts, replicates=10).miou.estimate is None  # nothing evaluated: undefined, not 0
