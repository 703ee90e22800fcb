"""landcover evaluate: metrics against an independent numpy computation, streaming, labels, report."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import DatasetError, NoOverlapError, OutputExistsError
from landcover.evaluation.confusion import confusion_matrix_streaming
from landcover.evaluation.evaluate import ClassMapReader, evaluate_maps
from landcover.io.grid import Grid
from landcover.io.style import class_map_profile, style_class_map
from landcover.nomenclature import IGNORE, corine_classes, nomenclature
from landcover.sources.labels import labels_like

UTM = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(600_000, 5_340_000, 10, 10), 300, 200)
FILES = {"metrics.json", "report.md", "confusion_matrix.png", "iou_per_class.png", "tiles_iou.gpkg"}


def write_class_map(path, ids, nom_name="level2", grid=UTM):
    with rasterio.open(path, "w", **class_map_profile(grid)) as dst:
        dst.write(ids.astype(np.uint8), 1)
        style_class_map(dst, nomenclature(nom_name))
    return path


@pytest.fixture
def maps(tmp_path, rng):
    """Reference and a 60 %-correct prediction (level2, 15 classes, two unused) with 255 holes."""
    k = nomenclature("level2").num_classes
    ref = rng.integers(0, k - 2, (UTM.height, UTM.width))
    pred = np.where(rng.random(ref.shape) < 0.6, ref, rng.integers(0, k, ref.shape))
    ref[rng.random(ref.shape) < 0.1] = IGNORE
    pred[rng.random(ref.shape) < 0.1] = IGNORE
    ref[:50, :50] = IGNORE  # a block without labels
    return (write_class_map(tmp_path / "pred.tif", pred), write_class_map(tmp_path / "ref.tif", ref), pred, ref)


def numpy_scores(pred, ref, k):
    """Reference values from whole arrays with per-class tp/fp/fn loops (no shared code)."""
    valid = (pred != IGNORE) & (ref != IGNORE)
    p, r = pred[valid], ref[valid]
    n = valid.sum()
    out = {"iou": {}, "precision": {}, "recall": {}, "f1": {}}
    weighted = 0.0
    for c in range(k):
        tp = np.sum((p == c) & (r == c))
        fp = np.sum((p == c) & (r != c))
        fn = np.sum((p != c) & (r == c))
        if tp + fp + fn:
            out["iou"][c] = tp / (tp + fp + fn)
            out["f1"][c] = 2 * tp / (2 * tp + fp + fn)
            weighted += (tp + fn) / n * out["iou"][c]
        if tp + fp:
            out["precision"][c] = tp / (tp + fp)
        if tp + fn:
            out["recall"][c] = tp / (tp + fn)
    po = np.mean(p == r)
    pe = sum(np.mean(r == c) * np.mean(p == c) for c in range(k))
    out.update(miou=np.mean(list(out["iou"].values())), oa=po, kappa=(po - pe) / (1 - pe), fwiou=weighted, n=n)
    return out


def test_metrics_equal_an_independent_numpy_computation(tmp_path, maps):
    pred_path, ref_path, pred, ref = maps
    m = evaluate_maps(pred_path, ref_path, tmp_path / "report", tile_size=64)
    s, k = m.scores, nomenclature("level2").num_classes
    want = numpy_scores(pred, ref, k)
    assert s["pixels_evaluated"] == m.evaluated_pixels == want["n"]
    for key, ours in [("miou", "miou"), ("oa", "overall_accuracy"), ("kappa", "kappa"), ("fwiou", "fwiou")]:
        assert s[ours] == pytest.approx(want[key], abs=1e-9), key
    assert s["classes_present"] == len(want["iou"]) == k  # the two unused reference classes are predicted
    for c in s["per_class"]:
        for key in ("iou", "precision", "recall", "f1"):
            expected = want[key].get(c["id"])
            assert (c[key] is None) == (expected is None)
            if expected is not None:
                assert c[key] == pytest.approx(expected, abs=1e-9)
        assert c["reference_area_ha"] == pytest.approx(c["reference_pixels"] * 0.01)  # 10 m pixels
    assert s["per_class"][k - 1]["recall"] is None  # never in the reference
    cm = np.array(s["confusion_matrix"])
    valid = (pred != IGNORE) & (ref != IGNORE)
    assert cm[3, 5] == np.sum((ref == 3) & (pred == 5) & valid)  # rows = reference, columns = prediction
    assert m.metrics["pixels"]["no_label"] == np.sum(ref == IGNORE)
    assert m.metrics["pixels"]["no_prediction"] == np.sum(pred == IGNORE)


def test_each_pixel_counted_once_whatever_the_window_size(maps):
    pred_path, ref_path, pred, ref = maps
    nom = nomenclature("level2")
    results = []
    for window in (7, 64, 1024):
        p, r = ClassMapReader(pred_path, nom, "prediction"), ClassMapReader(ref_path, nom, "labels")
        results.append(
            confusion_matrix_streaming(p.read, r.read, p.grid, nom.num_classes, window_size=window, tile_size=50)
        )
        p.close(), r.close()
    for other in results[1:]:
        assert np.array_equal(results[0].matrix, other.matrix)
        assert results[0].pixels == other.pixels
        for key, values in results[0].tiles.items():
            np.testing.assert_array_equal(values, other.tiles[key], err_msg=key)
    assert results[0].matrix.sum() == np.sum((pred != IGNORE) & (ref != IGNORE))
    assert len(results[0].tiles["miou"]) == 6 * 4  # 300 x 200 px in tiles of 50
    tile = (slice(50, 100), slice(100, 150))  # tile row 1, column 2
    assert results[0].tiles["miou"][1 * 6 + 2] == pytest.approx(
        numpy_scores(pred[tile], ref[tile], nom.num_classes)["miou"]
    )


def test_255_in_either_map_is_ignored(tmp_path, maps):
    pred_path, ref_path, pred, ref = maps
    nom = nomenclature("level2")
    scrambled = np.where(ref == IGNORE, (pred + 7) % nom.num_classes, pred)  # differs only under label holes
    scrambled[pred == IGNORE] = IGNORE
    other = write_class_map(tmp_path / "other.tif", scrambled)
    cms = []
    for path in (pred_path, other):
        p, r = ClassMapReader(path, nom, "prediction"), ClassMapReader(ref_path, nom, "labels")
        cms.append(confusion_matrix_streaming(p.read, r.read, p.grid, nom.num_classes).matrix)
    assert np.array_equal(*cms)
    assert cms[0].shape == (15, 15) and cms[0].sum() == np.sum((pred != IGNORE) & (ref != IGNORE))


@pytest.fixture
def laea_vector(tmp_path):
    """12 CORINE polygons (text codes, off-grid edges) in EPSG:3035 over the UTM grid."""
    left, bottom, right, top = UTM.bounds
    to_laea = Transformer.from_crs(UTM.crs, "EPSG:3035", always_xy=True)
    codes = [c.code for c in corine_classes()][::3][:12]
    cells, w, h = [], (right - left) / 4, (top - bottom) / 3
    for i in range(12):
        x0, y0 = left + (i % 4) * w + 7.3, bottom + (i // 4) * h + 3.1
        ring = [(x0, y0), (x0 + w * 0.93, y0), (x0 + w * 0.93, y0 + h * 0.9), (x0, y0 + h * 0.9)]
        cells.append(shapely.Polygon([to_laea.transform(x, y) for x, y in ring]))
    path = tmp_path / "clc.gpkg"
    gpd.GeoDataFrame({"CODE_18": [str(c) for c in codes]}, geometry=cells, crs="EPSG:3035").to_file(path)
    return path


def test_corine_vector_labels_equal_labels_burnt_first(tmp_path, rng, laea_vector):
    pred = rng.integers(0, 44, (UTM.height, UTM.width))
    pred_path = write_class_map(tmp_path / "pred.tif", pred, "level3")
    burnt = tmp_path / "burnt.tif"
    labels_like(laea_vector, pred_path, burnt)
    a = evaluate_maps(pred_path, laea_vector, tmp_path / "a", window_size=64)
    b = evaluate_maps(pred_path, burnt, tmp_path / "b")
    assert a.scores["confusion_matrix"] == b.scores["confusion_matrix"]
    assert a.metrics["pixels"] == b.metrics["pixels"] and a.metrics["pixels"]["no_label"] > 0
    assert "clc.gpkg (vector" in a.metrics["inputs"]["labels_description"]
    # a level3 map can be scored in level1: both maps are recoded through their CORINE codes
    c = evaluate_maps(pred_path, laea_vector, tmp_path / "c", nomenclature_name="level1")
    labels_like(laea_vector, pred_path, tmp_path / "l1.tif", nomenclature_name="level1")
    codes = np.array([c.code for c in corine_classes()], np.uint16)[pred]
    pred_l1 = write_class_map(tmp_path / "pred_l1.tif", nomenclature("level1").encode(codes), "level1")
    p, r = (
        ClassMapReader(pred_l1, nomenclature("level1"), "p"),
        ClassMapReader(tmp_path / "l1.tif", nomenclature("level1"), "r"),
    )
    d = confusion_matrix_streaming(p.read, r.read, p.grid, 5).matrix
    p.close(), r.close()
    assert c.scores["confusion_matrix"] == d.tolist() and d.shape == (5, 5)


def test_prediction_with_classes_the_nomenclature_lacks_is_an_error(tmp_path, maps):
    _, ref_path, pred, _ = maps
    bad = pred.copy()
    bad[5, 5], bad[9, 9] = 15, 200
    bad_path = write_class_map(tmp_path / "bad.tif", bad)
    with pytest.raises(
        DatasetError, match=r"class id\(s\) 15, 200 .* level2 nomenclature has 15 classes.*--nomenclature"
    ):
        evaluate_maps(bad_path, ref_path, tmp_path / "report")
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob(".report*"))


def test_labels_elsewhere_and_class_maps_on_other_grids_are_errors(tmp_path, maps):
    pred_path, _, _, ref = maps
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame({"CODE_18": ["311"]}, geometry=[shapely.box(2e6, 1e6, 2.01e6, 1.01e6)], crs="EPSG:3035").to_file(
        far
    )
    with pytest.raises(NoOverlapError, match="grid covers"):
        evaluate_maps(pred_path, far, tmp_path / "r1")
    empty = write_class_map(tmp_path / "empty.tif", np.full_like(ref, IGNORE))
    with pytest.raises(NoOverlapError, match="both a prediction and a label"):
        evaluate_maps(pred_path, empty, tmp_path / "r2")
    shifted = Grid(UTM.crs, from_origin(600_010, 5_340_000, 10, 10), 300, 200)
    moved = write_class_map(tmp_path / "moved.tif", ref, grid=shifted)
    with pytest.raises(DatasetError, match=r"another grid.*600010.*600000.*CORINE source"):
        evaluate_maps(pred_path, moved, tmp_path / "r3")
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))


def test_report_folder_holds_every_output(tmp_path, maps):
    pred_path, ref_path, _, _ = maps
    out = tmp_path / "report"
    m = evaluate_maps(pred_path, ref_path, out, tile_size=50)
    assert {p.name for p in out.iterdir()} == FILES
    assert json.loads((out / "metrics.json").read_text()) == m.metrics
    assert (out / "metrics.json").read_text() == m.to_json() and json.loads(m.to_json()) == m.to_dict()
    assert m.metrics["options"]["tile_size"] == 50 and m.nomenclature == "level2" and m.metrics["software"]["landcover"]
    for png in ("confusion_matrix.png", "iou_per_class.png"):
        with Image.open(out / png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300
    report = (out / "report.md").read_text()
    assert "| mIoU" in report and "Discontinuous urban fabric" not in report and "Urban fabric" in report
    assert "without a label" in report
    assert [name for name, _ in pyogrio.list_layers(out / "tiles_iou.gpkg")] == ["tiles"]
    tiles = gpd.read_file(out / "tiles_iou.gpkg", layer="tiles")
    assert len(tiles) == m.metrics["tiles"]["count"] == 6 * 4  # 300 x 200 px in tiles of 50
    assert tiles.crs.to_epsg() == 32633
    assert tuple(tiles.total_bounds) == pytest.approx(UTM.bounds)
    assert {"miou", "accuracy", "labelled_pixels", "dominant_class", "dominant_iou", "iou_11"} <= set(tiles.columns)
    assert tiles["evaluated_pixels"].sum() == m.metrics["pixels"]["evaluated"]
    assert tiles.loc[0, "labelled_pixels"] == 0 and np.isnan(tiles.loc[0, "miou"])  # the unlabelled corner


def test_overwrite(tmp_path, maps):
    pred_path, ref_path, _, _ = maps
    out = tmp_path / "report"
    out.mkdir()  # an empty folder may be used
    evaluate_maps(pred_path, ref_path, out)
    before = (out / "metrics.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        evaluate_maps(pred_path, ref_path, out, tile_size=100)
    assert (out / "metrics.json").read_text() == before
    m = evaluate_maps(pred_path, ref_path, out, tile_size=100, overwrite=True)
    assert (
        m.metrics["tiles"]["count"] == 6
        and json.loads((out / "metrics.json").read_text())["options"]["tile_size"] == 100
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.docx").write_text("keep")
    with pytest.raises(OutputExistsError, match="not a landcover report"):
        evaluate_maps(pred_path, ref_path, other, overwrite=True)
    assert (other / "thesis.docx").read_text() == "keep"


def test_cli_in_process_and_subprocess(tmp_path, maps):
    pred_path, ref_path, pred, _ = maps
    result = CliRunner().invoke(
        app, ["evaluate", str(pred_path), str(ref_path), "--out", str(tmp_path / "r"), "--tile-size", "128"]
    )
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "report.md" in result.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["tiles"]["count"] == 6
    # the Python result is what the command prints and writes (but for the time it was created)
    m = evaluate_maps(pred_path, ref_path, tmp_path / "py", tile_size=128)
    flat = " ".join(result.output.split())
    assert f"mIoU {m.miou:.3f} (" in flat and f"overall accuracy {m.overall_accuracy:.3f} (" in flat
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {**json.loads(m.to_json()), "created": None} == {**written, "created": None}
    result = CliRunner().invoke(app, ["evaluate", str(pred_path), str(ref_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    bad = pred.copy()
    bad[0, 0] = 99
    write_class_map(tmp_path / "bad.tif", bad)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "landcover.cli",
            "evaluate",
            str(tmp_path / "bad.tif"),
            str(ref_path),
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "99" in proc.stderr and "Traceback" not in proc.stderr and not (tmp_path / "s").exists()
