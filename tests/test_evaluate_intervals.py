"""landcover evaluate: block-bootstrap intervals of the scores and the paired comparison of two maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ConfigError, DatasetError
from landcover.evaluation.bootstrap import bootstrap_scores, class_counts, paired_difference
from landcover.evaluation.evaluate import evaluate_maps
from landcover.io.grid import Grid
from landcover.io.style import class_map_profile, style_class_map
from landcover.nomenclature import IGNORE, nomenclature

UTM = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(600_000, 5_340_000, 10, 10), 300, 200)
K = nomenclature("level2").num_classes
BLOCK_10 = ("--block-size", "10")


def write_class_map(path, ids, grid=UTM):
    with rasterio.open(path, "w", **class_map_profile(grid)) as dst:
        dst.write(ids.astype(np.uint8), 1)
        style_class_map(dst, nomenclature("level2"))
    return path


@pytest.fixture
def maps(tmp_path, rng):
    """Reference with spatially varying classes, a 60 %- and an 80 %-correct prediction, 255 holes."""
    ref = (np.arange(UTM.width)[None, :] // 40 + np.arange(UTM.height)[:, None] // 70) % (K - 2)
    ref = np.where(rng.random(ref.shape) < 0.3, rng.integers(0, K - 2, ref.shape), ref)
    noise = rng.random(ref.shape)
    pred = np.where(noise < 0.6, ref, rng.integers(0, K, ref.shape))
    better = np.where(noise < 0.8, ref, pred)
    ref[rng.random(ref.shape) < 0.1] = IGNORE
    pred[rng.random(ref.shape) < 0.1] = IGNORE
    ref[:50, :50] = IGNORE  # a tile without labels: not a unit
    paths = [write_class_map(tmp_path / f"{n}.tif", a) for n, a in (("pred", pred), ("ref", ref), ("better", better))]
    return (*paths, pred, ref, better)


def tile_units(pred, ref, tile, block):
    """Independent per-tile counts and block ids (row-major tiles, blocks of ``block`` px)."""
    counts, groups = [], []
    nbc = -(-UTM.width // block)
    for r0 in range(0, UTM.height, tile):
        for c0 in range(0, UTM.width, tile):
            cnt = class_counts(ref[r0 : r0 + tile, c0 : c0 + tile], pred[r0 : r0 + tile, c0 : c0 + tile], K)
            if cnt[1].sum():
                counts.append(cnt)
                groups.append((r0 // block) * nbc + c0 // block)
    return np.stack(counts), np.array(groups)


def test_intervals_are_a_block_bootstrap_of_the_tiles(tmp_path, maps):
    pred_path, ref_path, _, pred, ref, _ = maps
    m = evaluate_maps(pred_path, ref_path, tmp_path / "r", tile_size=50, block_size=100, replicates=300)
    s, iv = m.metrics["scores"], m.metrics["scores"]["intervals"]
    assert iv["unit"] == "block" and iv["n_units"] == 23 and iv["n_blocks"] == 6  # 24 tiles, one unlabelled
    assert iv["block_size"] == 100 and iv["tile_size"] == 50 and m.metrics["options"]["block_size"] == 100
    counts, groups = tile_units(pred, ref, 50, 100)
    want = bootstrap_scores(
        counts, groups, replicates=300, seed=0, class_names=list(nomenclature("level2").class_names)
    )
    assert {k: v for k, v in iv.items() if k not in ("block_size", "tile_size")} == want.to_dict()
    for key in ("miou", "miou_reference", "overall_accuracy"):
        assert iv[key]["estimate"] == pytest.approx(s[key], abs=1e-12)
        assert iv[key]["low"] <= s[key] <= iv[key]["high"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "mIoU over classes in the reference" in report and "mIoU over classes in either map" in report
    assert f"{iv['miou']['low']:.3f}–{iv['miou']['high']:.3f}" in report
    assert "6 blocks of 100 px" in report
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["scores"]["intervals"] == iv


def test_compare_is_a_paired_bootstrap_on_the_same_tiles(tmp_path, maps):
    pred_path, ref_path, better_path, pred, ref, better = maps
    m = evaluate_maps(
        better_path, ref_path, tmp_path / "r", tile_size=50, block_size=100, replicates=300, compare=pred_path
    )
    alone = evaluate_maps(pred_path, ref_path, tmp_path / "a", tile_size=50, replicates=10)
    cmp = m.metrics["scores"]["comparison"]
    assert cmp["a"] == "pred.tif" and cmp["b"] == "better.tif" and cmp["difference"] == "b - a"
    assert cmp["miou"]["estimate"] == pytest.approx(m.miou - alone.miou, abs=1e-12)
    assert cmp["a_scores"]["miou"] == pytest.approx(alone.miou, abs=1e-12)
    assert cmp["miou"]["low"] > 0 and cmp["overall_accuracy"]["share_b_better"] == 1.0
    # the paired bootstrap of independent per-tile counts: units where either map is evaluated
    ca, ga = tile_units(pred, ref, 50, 100)
    cb, gb = tile_units(better, ref, 50, 100)
    np.testing.assert_array_equal(ga, gb)
    want = paired_difference(ca, cb, ga, replicates=300).to_dict()
    assert {k: v for k, v in cmp.items() if k in want} == want
    assert "Comparison" in (tmp_path / "r" / "report.md").read_text()
    args = ["evaluate", str(better_path), str(ref_path), "--out", str(tmp_path / "c"), "--compare", str(pred_path)]
    result = CliRunner().invoke(app, [*args, "--tile-size", "50", "--block-size", "100", "--replicates", "100"])
    assert result.exit_code == 0, result.output
    assert f"mIoU minus pred.tif: {cmp['miou']['estimate']:+.3f} (95 % CI" in " ".join(result.output.split())


def test_bad_block_size_and_compare_maps_are_refused(tmp_path, maps, rng):
    pred_path, ref_path, *_ = maps
    with pytest.raises(ConfigError, match="--block-size"):
        evaluate_maps(pred_path, ref_path, tmp_path / "r", tile_size=64, block_size=32)
    with pytest.raises(ConfigError, match="--replicates"):
        evaluate_maps(pred_path, ref_path, tmp_path / "r", replicates=5)
    other = Grid(UTM.crs, from_origin(600_000, 5_340_000, 10, 10), 200, 200)
    small = write_class_map(tmp_path / "small.tif", rng.integers(0, K, (200, 200)), grid=other)
    with pytest.raises(DatasetError, match="--compare"):
        evaluate_maps(pred_path, ref_path, tmp_path / "r", compare=small)
    result = CliRunner().invoke(
        app, ["evaluate", str(pred_path), str(ref_path), "--out", str(tmp_path / "c"), "--tile-size", "64", *BLOCK_10]
    )
    assert result.exit_code == 2 and "--block-size" in result.output and not (tmp_path / "c").exists()
    result = CliRunner().invoke(
        app, ["evaluate", str(pred_path), str(ref_path), "--out", str(tmp_path / "d"), "--tile-size", "128"]
    )
    assert result.exit_code == 0, result.output
    assert "95 % CI" in result.output
    intervals = json.loads((tmp_path / "d" / "metrics.json").read_text())["scores"]["intervals"]
    assert intervals["block_size"] == 512 and intervals["n_blocks"] == 1 and "understate" in intervals["note"]
