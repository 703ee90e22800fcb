"""The command line: fast help, one-line errors with exit code 2, real runs in-process and as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from landcover.cli import app
from tests.conftest import write_raster

runner = CliRunner()


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, landcover.cli; print(sorted(m for m in ('torch', 'lightning', 'torchgeo', 'geopandas') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "labels" in result.output
    result = runner.invoke(app, ["labels", "--help"])
    assert result.exit_code == 0 and "--nomenclature" in result.output and "--all-touched" in result.output


def tiny_clc_raster(tmp_path, value=23):
    return write_raster(
        tmp_path / "clc.tif",
        np.full((30, 30), value, np.uint8),
        "EPSG:3035",
        from_origin(4_790_000, 2_810_000, 100, 100),
    )


def test_labels_command_writes_the_map(tmp_path):
    src = tiny_clc_raster(tmp_path)
    ref = write_raster(
        tmp_path / "ref.tif", np.zeros((50, 50), np.uint8), "EPSG:3035", from_origin(4_791_000, 2_809_000, 20, 20)
    )
    result = runner.invoke(
        app, ["labels", str(src), "--like", str(ref), "--out", str(tmp_path / "l.tif"), "--nomenclature", "level1"]
    )
    assert result.exit_code == 0, result.output
    assert "level1" in result.output
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert (ds.read(1) == 2).all()  # index 23 = 311 broad-leaved forest -> level 1 class 3 (id 2)


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    src = tiny_clc_raster(tmp_path, value=77)
    ref = write_raster(
        tmp_path / "ref.tif", np.zeros((50, 50), np.uint8), "EPSG:3035", from_origin(4_791_000, 2_809_000, 20, 20)
    )
    result = runner.invoke(app, ["labels", str(src), "--like", str(ref), "--out", str(tmp_path / "l.tif")])
    assert result.exit_code == 2
    assert "error:" in result.output and "77" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "l.tif").exists()


def test_subprocess_missing_reference_is_a_clear_error(tmp_path):
    src = tiny_clc_raster(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "landcover.cli",
            "labels",
            str(src),
            "--like",
            str(tmp_path / "nope.tif"),
            "--out",
            str(tmp_path / "o.tif"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "landcover.cli",
            "--debug",
            "labels",
            str(src),
            "--like",
            str(tmp_path / "nope.tif"),
            "--out",
            str(tmp_path / "o.tif"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr
