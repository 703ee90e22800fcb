"""The sweep leaderboard marks the variants that cannot be told apart from the best (paired block bootstrap)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from landcover.evaluation.bootstrap import compare_runs, save_counts, scores_from_counts
from landcover.training.leaderboard import best_test_line, leaderboard, sweep_summary

K = 4


def counts_of(rng, ref, accuracy):
    """Per-tile counts (n, 3, K) of a prediction that is right on a share ``accuracy`` of the pixels."""
    pred = np.where(rng.random(ref.shape) < accuracy, ref, rng.integers(0, K, ref.shape))
    out = []
    for r, p in zip(ref, pred, strict=True):
        out.append(
            np.stack([np.bincount(r[r == p], minlength=K), np.bincount(r, minlength=K), np.bincount(p, minlength=K)])
        )
    return np.stack(out)


@pytest.fixture
def sweep(tmp_path, rng):
    out = tmp_path / "sweep"
    config = {"optim": {"lr": 0.001}, "model": {"encoder": "resnet18", "encoder_weights": "none"}}
    ref = rng.integers(0, K, (40, 256))  # 40 tiles of 256 labelled pixels, in 10 blocks
    groups = np.arange(40) // 4
    variants = {"good": counts_of(rng, ref, 0.8), "bad": counts_of(rng, ref, 0.5)}
    # about as good on average, better in some blocks and worse in others: cannot be told apart
    variants["twin"] = np.concatenate([counts_of(rng, ref[b * 4 : b * 4 + 4], 0.85 - 0.1 * (b % 2)) for b in range(10)])
    for name, counts in variants.items():
        folder = out / "variants" / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "best.ckpt").write_bytes(b"not used")
        miou = float(scores_from_counts(counts.sum(0))["miou"])
        (folder / "metrics.json").write_text(json.dumps({"monitor": "val/miou", "val/miou": miou}))
        save_counts(folder / "val_counts.npz", [f"t{i}" for i in range(40)], groups, counts)
    (out / "variants" / "old").mkdir()  # a run without counts (older version)
    (out / "variants" / "old" / "checkpoints").mkdir()
    (out / "variants" / "old" / "metrics.json").write_text(json.dumps({"monitor": "val/miou", "val/miou": 0.1}))
    plan = {"variants": {name: config for name in ("good", "bad", "twin", "old")}}
    (out / "sweep.json").write_text(json.dumps(plan))
    return out


def test_variants_tied_with_the_best_are_marked(sweep):
    result = leaderboard(sweep, test=False)
    table = pd.read_csv(sweep / "leaderboard.csv").set_index("variant")
    assert result["best"] == "good" and table.loc["good", "vs_best"] == "best"
    twin = compare_runs(sweep / "variants" / "good", sweep / "variants" / "twin", split="val").miou
    assert table.loc["twin", "delta_miou"] == pytest.approx(twin.estimate)
    assert table.loc["twin", "delta_low"] == pytest.approx(twin.low) and twin.low < 0 < twin.high
    assert bool(table.loc["twin", "tied"]) and table.loc["twin", "vs_best"].endswith("≈")
    assert not bool(table.loc["bad", "tied"]) and table.loc["bad", "delta_high"] < 0
    assert table.loc["old", "vs_best"] == "–" and pd.isna(table.loc["old", "tied"])
    markdown = (sweep / "leaderboard.md").read_text()
    assert "vs_best" in markdown and "cannot be told apart" in markdown


def testbest_test_line_gives_the_best_test_scores_with_intervals():
    iv = {"estimate": 0.5, "low": 0.4, "high": 0.6}
    test = {"test/intervals": {"miou": iv, "miou_reference": iv, "overall_accuracy": iv, "n_blocks": 3}}
    test["test/intervals"] |= {"n_units": 12, "note": "only 3 block(s) resampled"}
    line = best_test_line("good", test)
    assert "mIoU 0.500 (0.400–0.600)" in line and "3 blocks of 12 tiles" in line and "Caution" in line
    assert best_test_line("good", {"test/map_macro": 0.3}) == ""
    summary = sweep_summary({"best": "good", "leaderboard": [{"metric": "val/miou", "score": 0.7}], "test": test}, "o")
    assert "test mIoU 95 % CI 0.400-0.600" in summary
