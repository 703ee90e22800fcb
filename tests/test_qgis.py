"""landcover's outputs in real QGIS, headless, and the QGIS plugin through ``qgis_process`` (marker ``qgis``).

Needs Debian's ``qgis`` and ``python3-qgis`` (the system ``/usr/bin/python3``, not this venv; `.ci/run` installs
them as root) and runs with ``pytest -m qgis``; skipped when QGIS is absent. The data are made here: a learnable
scene ingested (labels.tif, splits.gpkg), predicted by ``landcover predict`` with a tiny random U-Net
(--probabilities --confidence) and evaluated (tiles_iou.gpkg); tests/qgis_checks.py then loads them in QGIS
and reports what QGIS sees. ``LANDCOVER_QGIS_MAP=/path/map.tif`` adds that map (its .qml next to it) to the
map checks, against the nomenclature of its ``NOMENCLATURE`` tag.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.nomenclature import Nomenclature, nomenclature
from tests.learnable import make_learnable_scene, write_unet_checkpoint

pytestmark = pytest.mark.qgis
ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
LANDCOVER = str(Path(sys.executable).with_name("landcover"))
# Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 refuses: call the binary
SIZE = 128  # px: one window of predict
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process") or "qgis_process"


@pytest.fixture(scope="module")
def qgis_env(tmp_path_factory) -> dict[str, str]:
    """The environment of QGIS subprocesses: offscreen, a fresh profile, the plugin folder, this landcover."""
    found = Path(SYSTEM_PYTHON).exists() and shutil.which(QGIS_PROCESS) is not None
    if not found or subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode:
        pytest.skip("QGIS is not installed (as root: apt-get install qgis python3-qgis qgis-providers)")
    root = tmp_path_factory.mktemp("qgis")
    (root / "runtime").mkdir(mode=0o700)
    return {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_RUNTIME_DIR": str(root / "runtime"),
        "QGIS_CUSTOM_CONFIG_PATH": str(root / "profile"),
        "QGIS_PLUGINPATH": str(ROOT / "qgis_plugin"),
        "LANDCOVER_EXECUTABLE": LANDCOVER,
    }


def landcover(*args: str) -> None:
    proc = subprocess.run([LANDCOVER, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def outputs(qgis_env, tmp_path_factory) -> dict[str, Path]:
    """What landcover writes for an analyst: ingest, predict (map, probabilities, confidence), evaluate."""
    root = tmp_path_factory.mktemp("outputs")
    image, clc = make_learnable_scene(root / "raw", size=SIZE)
    with rasterio.open(image, "r+") as ds:  # a no-data corner: 255 in the map, transparent in QGIS
        ds.write(np.zeros((ds.count, 24, 40), np.uint16), window=((0, 24), (0, 40)))
    config = IngestConfig(nomenclature="level1", tile_size=32, overviews=False, split={"block_size_m": 1920})
    ingest([image], root / "dataset", labels=clc, config=config)
    checkpoint = write_unet_checkpoint(root / "best.ckpt", tile=64)
    landcover(
        "predict",
        str(checkpoint),
        str(image),
        "--out",
        str(root / "map" / "map.tif"),
        "--probabilities",
        "--confidence",
        "--no-quicklook",
    )
    labels = root / "dataset" / "scenes" / image.stem / "labels.tif"
    landcover(
        "evaluate",
        str(root / "map" / "map.tif"),
        str(labels),
        "--out",
        str(root / "report"),
        "--tile-size",
        "32",
        "--replicates",
        "10",
    )
    return {
        "image": image,
        "checkpoint": checkpoint,
        "map": root / "map" / "map.tif",
        "probabilities": root / "map" / "map_probabilities.tif",
        "confidence": root / "map" / "map_confidence.tif",
        "labels": labels,
        "splits": root / "dataset" / "splits.gpkg",
        "tiles_iou": root / "report" / "tiles_iou.gpkg",
    }


def held_out_map() -> Path | None:
    path = os.environ.get("LANDCOVER_QGIS_MAP")
    return Path(path) if path else None


def qgis_check(spec: dict, env: dict[str, str], folder: Path) -> dict:
    """tests/qgis_checks.py's JSON answer to ``spec``, run by the system Python that has QGIS."""
    (folder / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [SYSTEM_PYTHON, str(ROOT / "tests" / "qgis_checks.py"), str(folder / "spec.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def qgis_sees(outputs, qgis_env, tmp_path_factory) -> dict[str, dict]:
    """tests/qgis_checks.py's report on every output, by name; class maps rendered to ``<name>.png``."""
    root = tmp_path_factory.mktemp("seen")
    layers = {name: outputs[name] for name in ("map", "labels", "probabilities", "confidence", "splits", "tiles_iou")}
    if held_out_map() is not None:
        layers["held_out"] = held_out_map()
    spec = {
        "layers": [
            {
                "path": str(path),
                "kind": "vector" if path.suffix == ".gpkg" else "raster",
                "render": str(root / f"{name}.png") if name in ("map", "labels", "held_out") else None,
            }
            for name, path in layers.items()
        ]
    }
    seen = qgis_check(spec, qgis_env, root)["layers"]
    return {name: {**facts, "png": root / f"{name}.png"} for name, facts in zip(layers, seen, strict=True)}


def palette(nom: Nomenclature) -> list[dict]:
    return [
        {"value": i, "color": f"#{r:02x}{g:02x}{b:02x}", "alpha": 255, "label": f"{code} {name}"}
        for i, (code, name, (r, g, b)) in enumerate(zip(nom.codes, nom.class_names, nom.colors, strict=True))
    ]


def assert_grid(facts: dict, path: Path) -> None:
    """Valid, with the raster's CRS, extent and size."""
    with rasterio.open(path) as ds:
        crs, bounds, shape = ds.crs, ds.bounds, (ds.width, ds.height)
    assert facts["valid"], facts
    assert facts["crs"] == f"EPSG:{crs.to_epsg()}"
    assert facts["extent"] == pytest.approx(list(bounds), abs=1e-6)
    assert (facts["width"], facts["height"]) == shape


def assert_rendered_with_palette(png: Path, path: Path, nom: Nomenclature) -> None:
    """QGIS's rendering (one pixel per raster pixel) has each class's colour where the raster has that class,
    and is transparent where it has no data (255)."""
    with rasterio.open(path) as ds:
        classes = ds.read(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(png) as img:
            rgba = img.read()
    assert rgba.shape == (4, *classes.shape)
    valid = classes != 255
    lut = np.asarray(nom.colors, np.uint8)
    assert np.array_equal(rgba[:3, valid].T, lut[classes[valid]])
    assert (rgba[3, valid] == 255).all() and (rgba[3, ~valid] == 0).all()


@pytest.mark.parametrize("name", ["map", "labels"])
def test_class_maps_load_with_their_qml_palette_and_render_in_its_colours(qgis_sees, outputs, name):
    facts, nom = qgis_sees[name], nomenclature("level1")
    assert_grid(facts, outputs[name])
    assert facts["renderer"] == "paletted" and facts["band"] == 1 and facts["nodata"] == 255
    assert facts["classes"] == palette(nom)
    with rasterio.open(outputs[name]) as ds:
        classes = ds.read(1)
    assert len(np.unique(classes)) >= 3 and (classes == 255).any()  # colours and no data to tell apart
    assert_rendered_with_palette(facts["png"], outputs[name], nom)


@pytest.mark.skipif(held_out_map() is None, reason="set LANDCOVER_QGIS_MAP=/path/map.tif to check a map of yours")
def test_a_given_map_loads_with_its_palette_and_renders_in_its_colours(qgis_sees):
    facts, path = qgis_sees["held_out"], held_out_map()
    assert path is not None
    with rasterio.open(path) as ds:
        nom = nomenclature(ds.tags()["NOMENCLATURE"])
    assert_grid(facts, path)
    assert facts["renderer"] == "paletted" and facts["classes"] == palette(nom)
    assert_rendered_with_palette(facts["png"], path, nom)


def test_probability_and_confidence_cogs_load_with_qgis_default_styles(qgis_sees, outputs):
    """No .qml: QGIS's defaults are sensible. Confidence: grey stretch of band 1; probabilities: bands 1-3 (the
    first three classes) as RGB, every band named after its class; both transparent where masked (GDAL's mask
    is QGIS's alpha band)."""
    nom = nomenclature("level1")
    confidence, probabilities = qgis_sees["confidence"], qgis_sees["probabilities"]
    assert_grid(confidence, outputs["confidence"])
    assert confidence["renderer"] == "singlebandgray" and confidence["bands"] == [1]
    assert confidence["band_count"] == 2 and confidence["alpha_band"] == 2
    assert_grid(probabilities, outputs["probabilities"])
    k = nom.num_classes
    assert probabilities["renderer"] == "multibandcolor" and probabilities["bands"] == [1, 2, 3]
    assert probabilities["band_count"] == k + 1 and probabilities["alpha_band"] == k + 1
    names = [
        f"Band {i}: {code} {name}" for i, (code, name) in enumerate(zip(nom.codes, nom.class_names, strict=True), 1)
    ]
    assert probabilities["band_names"][:k] == names


def test_splits_and_tile_scores_load_as_polygon_layers(qgis_sees, outputs):
    splits, tiles = qgis_sees["splits"], qgis_sees["tiles_iou"]
    assert splits["valid"] and splits["crs"] == "EPSG:4326" and splits["sublayers"] == ["splits", "tiles"]
    assert splits["geometry"] == "MultiPolygon" and "split" in splits["fields"] and splits["feature_count"] >= 1
    assert tiles["valid"] and tiles["crs"] == "EPSG:32633" and tiles["geometry"] == "Polygon"
    assert tiles["feature_count"] == (SIZE // 32) ** 2 and {"miou", "accuracy", "dominant_class"} <= set(
        tiles["fields"]
    )
    with rasterio.open(outputs["map"]) as ds:
        assert tiles["extent"] == pytest.approx(list(ds.bounds), abs=1e-6)


def qgis_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def plugin(qgis_env) -> dict[str, str]:
    """qgis_env with the plugin enabled in its fresh profile (qgis_process loads enabled plugins only)."""
    proc = qgis_process(qgis_env, "plugins", "enable", "landcover_processing")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = qgis_process(qgis_env, "list")
    assert "landcover:predict" in listing.stdout and "landcover:evaluate" in listing.stdout, listing.stderr
    return qgis_env


def test_plugin_predict_equals_landcover_predict(plugin, outputs, tmp_path):
    out = tmp_path / "qgis" / "map.tif"
    params = [f"CHECKPOINT={outputs['checkpoint']}", f"INPUT={outputs['image']}", f"OUTPUT={out}"]
    proc = qgis_process(plugin, "run", "landcover:predict", "--", *params, "CONFIDENCE=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OUTPUT:\t{out}" in proc.stdout and "map: predict" in proc.stdout  # progress text from landcover
    for suffix in (".tif", "_confidence.tif"):
        with (
            rasterio.open(out.with_name(f"map{suffix}")) as a,
            rasterio.open(outputs["map"].with_name(f"map{suffix}")) as b,
        ):
            assert np.array_equal(a.read(), b.read()) and a.profile == b.profile and a.colorinterp == b.colorinterp
    assert out.with_suffix(".qml").read_text() == outputs["map"].with_suffix(".qml").read_text()


def test_plugin_reports_landcover_s_error_in_one_line(plugin, outputs, tmp_path):
    params = [f"CHECKPOINT={outputs['labels']}", f"INPUT={outputs['image']}", f"OUTPUT={tmp_path / 'map.tif'}"]
    proc = qgis_process(plugin, "run", "landcover:predict", "--", *params)
    assert proc.returncode != 0 and not (tmp_path / "map.tif").exists()
    assert f"landcover predict failed: checkpoint {outputs['labels']} is not a checkpoint" in proc.stdout + proc.stderr


def test_toolbox_runs_add_the_map_with_its_style_and_the_tile_scores_coloured_by_miou(qgis_env, outputs, tmp_path):
    """As the Processing Toolbox runs them (processing.runAndLoadResults): the results are added to the project,
    the map with the classes' names of its .qml, the confidence in grey, tiles_iou.gpkg graduated by miou; the
    evaluation's outputs are landcover evaluate's scores."""
    out = tmp_path / "map.tif"
    predict = {"CHECKPOINT": str(outputs["checkpoint"]), "INPUT": str(outputs["image"]), "OUTPUT": str(out)}
    evaluate = {"PREDICTION": str(out), "LABELS": str(outputs["labels"]), "OUTPUT": str(tmp_path / "report")}
    runs = [
        {"algorithm": "landcover:predict", "parameters": {**predict, "CONFIDENCE": True}},
        {"algorithm": "landcover:evaluate", "parameters": {**evaluate, "TILE_SIZE": 32, "REPLICATES": 10}},
    ]
    answer = qgis_check({"run": runs, "plugin_path": str(ROOT / "qgis_plugin")}, qgis_env, tmp_path)
    layers = {layer["name"]: layer for layer in answer["project"]}
    assert sorted(layers) == ["IoU per tile", "Land-cover map", "map confidence"]
    nom = nomenclature("level1")
    assert layers["Land-cover map"]["source"] == str(out) and layers["Land-cover map"]["renderer"] == "paletted"
    assert layers["Land-cover map"]["labels"] == [f"{c} {n}" for c, n in zip(nom.codes, nom.class_names, strict=True)]
    assert layers["map confidence"]["renderer"] == "singlebandgray"
    tiles = layers["IoU per tile"]
    assert tiles["source"].startswith(str(tmp_path / "report" / "tiles_iou.gpkg"))
    assert tiles["renderer"] == "graduatedSymbol" and tiles["attribute"] == "miou" and tiles["ranges"] == 5
    # the same map as landcover predict's, so the same scores as landcover evaluate's
    scores = json.loads((outputs["tiles_iou"].parent / "metrics.json").read_text())["scores"]
    evaluated = answer["results"][1]
    assert evaluated["MIOU"] == pytest.approx(scores["miou"])
    assert evaluated["OVERALL_ACCURACY"] == pytest.approx(scores["overall_accuracy"])
    assert evaluated["REPORT"] == str(tmp_path / "report" / "report.md")
