"""Issue 13: obvious bad values of every command's options end in one line, exit code 2 and nothing written.

The cases run through typer's CliRunner in this process (fast); the commands that import torch must fail
before that, so a case takes a fraction of a second. The subprocess checks that torch is not imported are
in tests/test_failures.py."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from tests.conftest import write_raster

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Files the cases point at, outside the folder each case runs in."""
    import rasterio
    from rasterio.transform import from_origin

    d = tmp_path_factory.mktemp("inputs")
    ref = write_raster(
        d / "ref.tif", np.zeros((64, 64), np.uint16), "EPSG:32633", from_origin(600_000, 5_340_000, 10, 10)
    )
    with rasterio.open(d / "nocrs.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    gpd.GeoDataFrame(
        {"CODE_18": ["311"]}, geometry=[box(600_000, 5_339_500, 600_300, 5_340_000)], crs="EPSG:32633"
    ).to_file(d / "clc.gpkg")
    ds = d / "dataset"  # passes the cheap checks (a dataset.json and a catalog.parquet)
    ds.mkdir()
    (ds / "dataset.json").write_text("{}")
    (ds / "catalog.parquet").write_bytes(b"")
    (d / "file").write_text("a regular file\n")
    (d / "empty.yaml").write_text("")
    (d / "binary.yaml").write_bytes(bytes(range(256)))
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "text.ckpt").write_text("not a checkpoint\n")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "model_typo.yaml").write_text("model: {archh: unet}\n")
    (d / "trainer_typo.yaml").write_text("trainer: {max_epoch: 3}\n")
    (d / "bad_value.yaml").write_text("optim: {lr: -1}\n")
    sweep = {"base": str(TINY), "grid": {"optim.lr": [0.1, 0.01]}}
    (d / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    (d / "sweep_parallel.yaml").write_text(yaml.safe_dump({**sweep, "parallel": "abc"}))
    (d / "sweep_typo.yaml").write_text(yaml.safe_dump({**sweep, "set": {"trainer.max_epoch": 3}}))
    (d / "sweep_dataset.yaml").write_text(yaml.safe_dump({**sweep, "dataset": "no_such_dataset"}))
    return {
        "ref": ref,
        "nocrs": d / "nocrs.tif",
        "clc": d / "clc.gpkg",
        "ds": ds,
        "file": d / "file",
        **{p.stem: p for p in d.glob("*.yaml")},
        "text_ckpt": d / "text.ckpt",
        "empty_ckpt": d / "empty.ckpt",
        "tiny": TINY,
    }


TRAIN = ["train", "{tiny}", "--dataset", "{ds}", "--out", "out"]
PREDICT = ["predict", "{text_ckpt}", "{ref}", "--out", "out/map.tif"]
SWEEP = ["sweep", "{sweep}", "--out", "out", "--dataset", "{ds}"]

CASES = {
    # labels
    "labels: --like without a CRS": ["labels", "{clc}", "--like", "{nocrs}", "--out", "out/labels.tif"],
    "labels: --out below a file": ["labels", "{clc}", "--like", "{ref}", "--out", "{file}/labels.tif"],
    # train
    "train: typo in the model section": ["train", "{model_typo}", "--dataset", "{ds}", "--out", "out"],
    "train: typo in the trainer section": ["train", "{trainer_typo}", "--dataset", "{ds}", "--out", "out"],
    "train: a bad value in the config": ["train", "{bad_value}", "--dataset", "{ds}", "--out", "out"],
    "train: typo in a --set key": [*TRAIN, "--set", "model.archh=unet"],
    "train: --max-epochs 0": [*TRAIN, "--max-epochs", "0"],
    "train: --max-epochs abc": [*TRAIN, "--max-epochs", "abc"],
    "train: config is binary": ["train", "{binary}", "--dataset", "{ds}", "--out", "out"],
    "train: config is a list": ["train", "{list}", "--dataset", "{ds}", "--out", "out"],
    "train: config is a folder": ["train", "{ds}", "--dataset", "{ds}", "--out", "out"],
    "train: --dataset is a file": ["train", "{tiny}", "--dataset", "{file}", "--out", "out"],
    "train: --out below a file": ["train", "{tiny}", "--dataset", "{ds}", "--out", "{file}/run"],
    "train: --out is a file": ["train", "{tiny}", "--dataset", "{ds}", "--out", "{file}"],
    "train: --set value is not YAML": [*TRAIN, "--set", "optim.lr=[1"],
    # sweep
    "sweep: --leaderboard of a folder without a sweep": ["sweep", "{sweep}", "--out", "out", "--leaderboard"],
    "sweep: --parallel abc": [*SWEEP, "--parallel", "abc"],
    "sweep: --parallel 0": [*SWEEP, "--parallel", "0"],
    "sweep: parallel abc in the file": ["sweep", "{sweep_parallel}", "--out", "out", "--dataset", "{ds}"],
    "sweep: --dataset missing": ["sweep", "{sweep}", "--out", "out", "--dataset", "no_such_dataset"],
    "sweep: dataset missing in the file": ["sweep", "{sweep_dataset}", "--out", "out"],
    "sweep: typo in a set key": ["sweep", "{sweep_typo}", "--out", "out", "--dataset", "{ds}"],
    "sweep: --out below a file": ["sweep", "{sweep}", "--out", "{file}/sweep", "--dataset", "{ds}"],
    "sweep: sweep file is a folder": ["sweep", "{ds}", "--out", "out"],
    # demo
    "demo: --out below a file": ["demo", "--out", "{file}/demo"],
    "demo: --max-epochs -1": ["demo", "--out", "out", "--max-epochs", "-1"],
    "demo: --max-epochs 0": ["demo", "--out", "out", "--max-epochs", "0"],
    # predict
    "predict: checkpoint is a text file": PREDICT,
    "predict: checkpoint is empty": ["predict", "{empty_ckpt}", "{ref}", "--out", "out/map.tif"],
    "predict: checkpoint is a folder": ["predict", "{ds}", "{ref}", "--out", "out/map.tif"],
    "predict: --batch-size 0": [*PREDICT, "--batch-size", "0"],
    "predict: --tile -5": [*PREDICT, "--tile", "-5"],
    "predict: --overlap -1": [*PREDICT, "--overlap", "-1"],
    "predict: --device tpu": [*PREDICT, "--device", "tpu"],
    "predict: --out below a file": ["predict", "{text_ckpt}", "{ref}", "--out", "{file}/map.tif"],
    # explain
    "explain: checkpoint is a text file": ["explain", "{text_ckpt}", "{ref}", "--out", "out"],
    "explain: --device tpu": ["explain", "{text_ckpt}", "{ref}", "--out", "out", "--device", "tpu"],
    # ingest
    "ingest: missing input": ["ingest", "no_such_product", "--out", "out"],
    "ingest: --tile-size 0": ["ingest", "{ref}", "--out", "out", "--tile-size", "0"],
    "ingest: --shard 3/2": ["ingest", "{ref}", "--out", "out", "--shard", "3/2"],
    "ingest: --out is a file": ["ingest", "{ref}", "--out", "{file}"],
    "ingest: --config is binary": ["ingest", "{ref}", "--out", "out", "--config", "{binary}"],
    "ingest: --labels missing": ["ingest", "{ref}", "--bands", "B04", "--out", "out", "--labels", "no_labels.gpkg"],
    "ingest: --mapping missing": [
        "ingest",
        "{ref}",
        "--bands",
        "B04",
        "--out",
        "out",
        "--labels",
        "{clc}",
        "--mapping",
        "no_mapping.csv",
    ],
    # evaluate
    "evaluate: missing prediction": ["evaluate", "no_such_map.tif", "{ref}", "--out", "out"],
    "evaluate: --tile-size 0": ["evaluate", "{ref}", "{ref}", "--out", "out", "--tile-size", "0"],
    "evaluate: --out is a file": ["evaluate", "{ref}", "{ref}", "--out", "{file}"],
}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files_before = sorted(p.name for p in inputs["file"].parent.iterdir())
    result = CliRunner().invoke(app, [a.format(**inputs) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not list(tmp_path.iterdir()), "an output was created"
    assert sorted(p.name for p in inputs["file"].parent.iterdir()) == files_before
