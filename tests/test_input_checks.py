"""Unusable input is refused or flagged, messages name options that exist, outputs keep no user paths (issue 13).

* A checkpoint records the processing level (L1C / L2A) of its training data; predict and explain refuse a
  scene of the other level (predict proceeds with --allow-level-mismatch, warns and tags the map).
* An all-no-data input: ingest stops with an error and leaves no dataset; predict writes the map but warns
  (stderr, tags, summary). The valid fraction is always in the map's tags.
* Every ``--option`` an error message names is an option of the command that printed it.
* Tags, JSON and YAML outputs hold no absolute path of the user's machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ConfigError
from landcover.inference.checkpoint import LoadedModel
from landcover.inference.predict import predict_scene
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from tests.s2_fixtures import make_safe
from tests.test_predict import BANDS, Conv1x1, K, meta, scene, write_stack

runner = CliRunner()


def lm_of(level: str | None, **kwargs) -> LoadedModel:
    m = meta(**kwargs)
    if level is not None:
        m["processing_level"] = level
    return LoadedModel.from_meta(Conv1x1(c=len(m["bands"])), m)


def save_checkpoint(path: Path, level: str | None) -> Path:
    model, _ = build_model(ModelConfig(), BANDS, K, load_weights=False)
    m = meta()
    if level is not None:
        m["processing_level"] = level
    torch.save({"landcover": m, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def l2a_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt", "L2A")


def command_options(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {opt for p in params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def assert_options_exist(command: str, message: str) -> None:
    """Every --option of ``message`` is an option of ``command``; one quoted `landcover OTHER ...` names OTHER's."""
    rest = message
    for other, text in re.findall(r"`landcover (\w+)([^`]*)`", message):
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
            assert opt in command_options(other), f"{opt} is not an option of `landcover {other}`: {message}"
        rest = rest.replace(text, "")
    for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
        assert opt in command_options(command), f"{opt} is not an option of `landcover {command}`: {message}"


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


# --- processing level ------------------------------------------------------------------------------


def test_predict_refuses_a_scene_of_another_level_and_writes_nothing(tmp_path):
    l1c = make_safe(tmp_path / "raw", level="L1C", size=32, bands=BANDS)
    out = tmp_path / "maps" / "map.tif"
    with pytest.raises(ConfigError, match=r"trained on L2A .* is L1C .*--allow-level-mismatch"):
        predict_scene(lm_of("L2A"), l1c, out)
    assert not out.parent.exists()
    l2a = make_safe(tmp_path / "raw2", level="L2A", size=32, bands=BANDS, with_scl=False)
    with pytest.raises(ConfigError, match=r"trained on L1C .* is L2A"):
        predict_scene(lm_of("L1C"), l2a, out)


def test_level_mismatch_allowed_is_warned_and_tagged(tmp_path):
    l1c = make_safe(tmp_path / "raw", level="L1C", size=32, bands=BANDS)
    summary = predict_scene(lm_of("L2A"), l1c, tmp_path / "map.tif", allow_level_mismatch=True, quicklook=False)
    assert summary.processing_level == {"checkpoint": "L2A", "scene": "L1C"}
    assert any("L2A" in w and "L1C" in w for w in summary.warnings)
    with rasterio.open(tmp_path / "map.tif") as ds:
        tags = ds.tags()
    assert tags["PROCESSING_LEVEL"] == "L1C" and tags["CHECKPOINT_PROCESSING_LEVEL"] == "L2A"
    assert "L1C" in tags["WARNINGS"] and "L2A" in tags["WARNINGS"]


def test_unknown_levels_are_not_refused_and_say_unknown(tmp_path):
    stack = write_stack(tmp_path / "in" / "s.tif", scene(32, 32))  # a plain GeoTIFF: level unknown
    predict_scene(lm_of("L2A"), stack, tmp_path / "a.tif", quicklook=False)
    l1c = make_safe(tmp_path / "raw", level="L1C", size=32, bands=BANDS)
    summary = predict_scene(lm_of(None), l1c, tmp_path / "b.tif", quicklook=False)  # an older checkpoint
    assert summary.warnings == []
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.tags()["PROCESSING_LEVEL"] == "unknown" and a.tags()["CHECKPOINT_PROCESSING_LEVEL"] == "L2A"
        assert b.tags()["PROCESSING_LEVEL"] == "L1C" and b.tags()["CHECKPOINT_PROCESSING_LEVEL"] == "unknown"


def test_an_ingested_stack_keeps_its_level_and_the_dataset_records_it(tmp_path):
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig
    from landcover.sources.s2meta import dataset_level

    l1c = make_safe(tmp_path / "raw", level="L1C", size=64, bands=BANDS)
    dataset = ingest([l1c], tmp_path / "ds", config=IngestConfig(bands=BANDS, tile_size=32)).dataset
    assert dataset["processing_level"] == "L1C" == dataset_level(dataset["scenes"])
    (stack,) = (tmp_path / "ds" / "scenes").glob("*/image.tif")
    with pytest.raises(ConfigError, match="L1C"):
        predict_scene(lm_of("L2A"), stack, tmp_path / "map.tif")


def test_dataset_level_of_scenes():
    from landcover.sources.s2meta import dataset_level

    def scenes(*levels):
        return [{"provenance": {"level": v}} for v in levels]

    assert dataset_level(scenes("L2A", "L2A")) == "L2A"
    assert dataset_level(scenes("L2A", "L1C")) == "mixed"
    assert dataset_level(scenes("L2A", "unknown")) == "unknown"
    assert dataset_level([]) == "unknown"


def test_cli_level_mismatch_is_one_line_and_the_flag_warns_once(l2a_checkpoint, tmp_path):
    l1c = make_safe(tmp_path / "raw", level="L1C", size=32, bands=BANDS)
    args = ["predict", str(l2a_checkpoint), str(l1c), "--out", str(tmp_path / "maps" / "m.tif"), "--no-quicklook"]
    line = error_line(runner.invoke(app, args))
    assert "L2A" in line and "L1C" in line
    assert_options_exist("predict", line)
    assert not (tmp_path / "maps").exists()
    result = runner.invoke(app, [*args, "--allow-level-mismatch"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning:") == 1 and "L1C" in result.output


def test_explain_refuses_a_scene_of_another_level(l2a_checkpoint, tmp_path):
    l1c = make_safe(tmp_path / "raw", level="L1C", size=32, bands=BANDS)
    result = runner.invoke(app, ["explain", str(l2a_checkpoint), str(l1c), "--out", str(tmp_path / "x")])
    line = error_line(result)
    assert "L2A" in line and "L1C" in line
    assert_options_exist("explain", line)
    assert not (tmp_path / "x").exists()
    result = runner.invoke(
        app, ["explain", str(l2a_checkpoint), str(l1c), "--out", str(tmp_path / "x"), "--allow-level-mismatch"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("warning:") == 1 and "L1C" in result.output
    record = json.loads((tmp_path / "x" / "explain.json").read_text())
    assert len(record["warnings"]) == 1 and "--allow-level-mismatch" in record["warnings"][0]


# --- no data -----------------------------------------------------------------------------------------


def test_predict_of_an_all_no_data_scene_writes_the_map_but_warns(tmp_path):
    stack = write_stack(tmp_path / "in" / "s.tif", np.zeros((len(BANDS), 40, 40), np.uint16))
    summary = predict_scene(lm_of(None), stack, tmp_path / "map.tif", quicklook=False)
    assert summary.valid_fraction == 0.0 and any("no data" in w for w in summary.warnings)
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert (ds.read(1) == 255).all()
        tags = ds.tags()
    assert float(tags["VALID_FRACTION"]) == 0.0 and "no data" in tags["WARNINGS"]


def test_the_valid_fraction_is_always_tagged(tmp_path):
    image = scene(40, 40)
    image[:, :10] = 0  # a quarter of the scene has no data
    summary = predict_scene(lm_of(None), write_stack(tmp_path / "s.tif", image), tmp_path / "map.tif", quicklook=False)
    assert summary.valid_fraction == pytest.approx(0.75) and summary.warnings == []
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert float(ds.tags()["VALID_FRACTION"]) == pytest.approx(0.75) and ds.tags()["WARNINGS"] == "none"


def test_cli_predict_of_an_all_no_data_scene_warns_on_stderr(l2a_checkpoint, tmp_path):
    stack = write_stack(tmp_path / "in" / "s.tif", np.zeros((len(BANDS), 40, 40), np.uint16))
    result = runner.invoke(app, ["predict", str(l2a_checkpoint), str(stack), "--out", str(tmp_path / "m.tif")])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning:") == 1 and "no data" in result.output


def nodata_geotiff(path: Path, fill: int = 0, size: int = 64) -> Path:
    return write_stack(path, np.full((len(BANDS), size, size), fill, np.uint16), product_id="x")


def test_ingest_of_nothing_usable_is_an_error_that_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    args = ["ingest", str(nodata_geotiff(tmp_path / "empty.tif")), "--out", str(out), "--tile-size", "32"]
    line = error_line(runner.invoke(app, args))
    assert "no data" in line and "empty" in line
    assert_options_exist("ingest", line)
    assert not out.exists()
    good = write_stack(tmp_path / "good.tif", scene(64, 64), product_id="good")
    result = runner.invoke(app, ["ingest", str(good), "--out", str(out), "--tile-size", "32"])
    assert result.exit_code == 0, result.output  # the failed run does not block the next one
    assert json.loads((out / "dataset.json").read_text())["scenes"][0]["tiles"] == 4


def test_ingest_where_no_tile_has_enough_valid_pixels_names_the_threshold(tmp_path):
    image = scene(64, 64)
    image[:, :, 8:] = 0  # every 32-px tile is at most a quarter valid
    stack = write_stack(tmp_path / "sparse.tif", image, product_id="sparse")
    (tmp_path / "ds").mkdir()  # an existing empty folder stays, empty
    line = error_line(runner.invoke(app, ["ingest", str(stack), "--out", str(tmp_path / "ds"), "--tile-size", "32"]))
    assert "split.min_valid_fraction" in line and "0.5" in line
    assert_options_exist("ingest", line)
    assert list((tmp_path / "ds").iterdir()) == []
    result = runner.invoke(
        app,
        [
            "ingest",
            str(stack),
            "--out",
            str(tmp_path / "ds"),
            "--tile-size",
            "32",
            "--set",
            "split.min_valid_fraction=0.2",
        ],
    )
    assert result.exit_code == 0, result.output


def test_finalize_of_shards_without_a_tile_is_an_error(tmp_path):
    inputs = [str(nodata_geotiff(tmp_path / f"{n}.tif")) for n in ("a", "b")]
    for i in range(2):
        result = runner.invoke(
            app, ["ingest", *inputs, "--out", str(tmp_path / "ds"), "--tile-size", "32", "--shard", f"{i}/2"]
        )
        assert result.exit_code == 0, result.output  # a shard does not know about the others
    line = error_line(runner.invoke(app, ["ingest", "--finalize", "--out", str(tmp_path / "ds")]))
    assert "no data" in line and "a, b" in line
    assert not (tmp_path / "ds" / "dataset.json").exists()


# --- messages name options of the command that prints them -------------------------------------------


def _predict_missing_band_product(tmp_path, ckpt):
    safe = make_safe(tmp_path, size=32, bands=BANDS[:3], with_scl=False)  # no B08
    return ["predict", str(ckpt), str(safe), "--out", str(tmp_path / "m.tif")], "B08"


def _predict_missing_band_stack(tmp_path, ckpt):
    stack = write_stack(tmp_path / "s.tif", scene(32, 32, c=3), bands=BANDS[:3])
    return ["predict", str(ckpt), str(stack), "--out", str(tmp_path / "m.tif")], "B08"


def _predict_unnamed_bands(tmp_path, ckpt):
    from tests.s2_fixtures import make_multiband

    tif = make_multiband(tmp_path / "unnamed.tif", descriptions=False, size=32)
    return ["predict", str(ckpt), str(tif), "--out", str(tmp_path / "m.tif")], "without"


def _explain_missing_band_product(tmp_path, ckpt):
    safe = make_safe(tmp_path, size=32, bands=BANDS[:3], with_scl=False)
    return ["explain", str(ckpt), str(safe), "--out", str(tmp_path / "x")], "B08"


def _ingest_missing_band(tmp_path, ckpt):
    safe = make_safe(tmp_path, size=32, bands=BANDS, with_scl=False)
    return ["ingest", str(safe), "--bands", "B02,B05", "--out", str(tmp_path / "ds")], "B05"


def _evaluate_class_map_on_another_grid(tmp_path, ckpt):
    stack = write_stack(tmp_path / "s.tif", scene(32, 32))
    assert runner.invoke(app, ["predict", str(ckpt), str(stack), "--out", str(tmp_path / "a.tif")]).exit_code == 0
    other = write_stack(tmp_path / "o.tif", scene(40, 40))
    assert runner.invoke(app, ["predict", str(ckpt), str(other), "--out", str(tmp_path / "b.tif")]).exit_code == 0
    return ["evaluate", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out", str(tmp_path / "r")], "grid"


def _evaluate_untagged_map(tmp_path, ckpt):
    from rasterio.transform import from_origin

    from tests.conftest import write_raster

    tif = write_raster(
        tmp_path / "c.tif", np.zeros((32, 32), np.uint8), "EPSG:32633", from_origin(500_000, 5_300_000, 10, 10)
    )
    return ["evaluate", str(tif), str(tif), "--out", str(tmp_path / "r")], "NOMENCLATURE"


def _ingest_ambiguous_clc_raster(tmp_path, ckpt):
    from tests.learnable import make_learnable_scene

    image, labels = make_learnable_scene(tmp_path / "raw", size=64)
    with rasterio.open(labels, "r+") as ds:
        codes = ds.read(1)
        codes[:8] = 5  # 5 is a raster index, 111.. codes: the values cannot be told apart
        ds.write(codes, 1)
    return [
        "ingest",
        str(image),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "ds"),
        "--tile-size",
        "32",
    ], "indices"


@pytest.mark.parametrize(
    "case",
    [
        _predict_missing_band_product,
        _predict_missing_band_stack,
        _predict_unnamed_bands,
        _explain_missing_band_product,
        _ingest_missing_band,
        _evaluate_class_map_on_another_grid,
        _evaluate_untagged_map,
        _ingest_ambiguous_clc_raster,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_error_messages_name_only_options_of_their_command(case, l2a_checkpoint, tmp_path):
    args, expected = case(tmp_path, l2a_checkpoint)
    line = error_line(runner.invoke(app, args))
    assert expected in line
    assert_options_exist(args[0], line)


# --- provenance without the user's paths --------------------------------------------------------------


def test_outputs_hold_no_absolute_path_of_the_users_machine(l2a_checkpoint, tmp_path):
    from tests.learnable import make_learnable_scene

    image, labels = make_learnable_scene(tmp_path / "raw", size=64)
    safe = make_safe(tmp_path / "raw", size=64, bands=BANDS, with_scl=False)
    ds, maps = tmp_path / "ds", tmp_path / "maps"
    runs = [
        [
            "ingest",
            str(image),
            "--labels",
            str(labels),
            "--out",
            str(ds),
            "--tile-size",
            "32",
            "--nomenclature",
            "level1",
        ],
        [
            "predict",
            str(l2a_checkpoint),
            str(safe),
            str(ds / "scenes" / "scene_0" / "image.tif"),
            "--out",
            str(maps),
            "--probabilities",
            "--confidence",
        ],
        ["explain", str(l2a_checkpoint), str(ds / "scenes" / "scene_0" / "image.tif"), "--out", str(tmp_path / "why")],
        [
            "evaluate",
            str(maps / "scene_0.tif"),
            str(ds / "scenes" / "scene_0" / "labels.tif"),
            "--out",
            str(tmp_path / "report"),
        ],
    ]
    for args in runs:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    forbidden = [str(tmp_path), str(l2a_checkpoint.parent)] + [str(Path.home())] * (len(Path.home().parts) > 1)
    written = [
        p for folder in (ds, maps, tmp_path / "why", tmp_path / "report") for p in folder.rglob("*") if p.is_file()
    ]
    assert len(written) > 20
    for path in written:  # tags live as text in the TIFF; JSON, YAML, Markdown, GPKG and Parquet as bytes
        data = path.read_bytes()
        for text in forbidden:
            assert text.encode() not in data, f"{path.relative_to(tmp_path)} holds {text}"
    for path in (p for p in written if p.suffix == ".tif"):  # and no tag says None
        with rasterio.open(path) as raster:
            for tags in (raster.tags(), *(raster.tags(i) for i in raster.indexes)):
                assert "None" not in tags.values(), (path.name, tags)
    with rasterio.open(maps / "scene_0.tif") as m:
        assert m.tags()["INPUT"] == "image.tif" and m.tags()["CHECKPOINT"] == "best.ckpt"
    scenes = json.loads((ds / "dataset.json").read_text())["scenes"]
    assert scenes[0]["input"] == image.name


class OutOfMemory(nn.Module):
    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")


def test_explain_out_of_gpu_memory_names_options_explain_has(tmp_path):
    from landcover.inference.explain import explain

    lm = LoadedModel.from_meta(OutOfMemory(), meta())  # segmentation: explain runs predict's windows
    stack = write_stack(tmp_path / "s.tif", scene(32, 32))
    with pytest.raises(ConfigError, match="out of memory") as info:
        explain(lm, stack, tmp_path / "x")
    assert_options_exist("explain", str(info.value))
    assert list((tmp_path / "x").iterdir()) == []
