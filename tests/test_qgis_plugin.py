"""The QGIS plugin's runner (qgis_plugin/landcover_processing/runner.py, plain Python): which ``landcover`` it
runs, the progress it reads from ``landcover``'s ``progress:`` lines, cancelling, the error it reports. No QGIS
needed; the plugin inside real QGIS is tested in tests/test_qgis.py (marker ``qgis``)."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from tests.learnable import make_learnable_scene

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qgis_plugin"))
from landcover_processing import runner

LANDCOVER = str(Path(sys.executable).with_name("landcover"))


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_landcover_prints_progress_lines_the_runner_turns_into_percentages(tmp_path):
    image, clc = make_learnable_scene(tmp_path / "raw", size=64)
    config = IngestConfig(nomenclature="level1", tile_size=32, overviews=False, split={"block_size_m": 1920})
    ingest([image], tmp_path / "dataset", labels=clc, config=config)
    labels = tmp_path / "dataset" / "scenes" / image.stem / "labels.tif"
    seen: list[tuple[float, str]] = []
    args = [LANDCOVER, "evaluate", str(labels), str(clc), "--out", str(tmp_path / "report"), "--tile-size", "16"]
    outcome = runner.run([*args, "--replicates", "10"], lambda p, s: seen.append((p, s)), lambda: False)
    assert outcome.returncode == 0, outcome.log
    assert seen and seen[-1] == (100.0, "evaluate") and [p for p, _ in seen] == sorted(p for p, _ in seen)
    assert not any(line.startswith("progress:") for line in outcome.log)
    assert (tmp_path / "report" / "tiles_iou.gpkg").exists()


def test_progress_over_several_scenes_never_goes_back():
    progress = runner.Progress()
    lines = ["progress: 0/2 scenes", "progress: 1/4 a: predict", "progress: 4/4 a: predict", "progress: 0/1 a: COG"]
    lines += ["progress: 1/2 scenes", "progress: 2/4 b: predict", "progress: 2/2 scenes"]
    percents = [progress.percent for line in lines if progress.update(line)]
    assert percents == [0.0, 12.5, 50.0, 50.0, 50.0, 75.0, 100.0]
    assert not progress.update("note: something else")


def test_a_failure_reports_landcover_s_one_line_error(tmp_path):
    outcome = runner.run(
        [LANDCOVER, "predict", str(tmp_path / "none.ckpt"), str(tmp_path / "x.tif"), "--out", str(tmp_path / "m.tif")],
        lambda p, s: None,
        lambda: False,
    )
    assert outcome.returncode == 2 and not outcome.canceled
    assert "none.ckpt" in outcome.error and "\n" not in outcome.error and "Traceback" not in outcome.error


def test_cancelling_terminates_the_command(tmp_path):
    flag = tmp_path / "terminated"
    slow = script(
        tmp_path / "slow",
        f"import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(flag)!r}, 'w').close(), sys.exit(143)))\n"
        "for i in range(600):\n    print(f'progress: {i}/600 predict', file=sys.stderr, flush=True)\n"
        "    time.sleep(0.1)\n",
    )
    seen: list[float] = []
    start = time.monotonic()
    outcome = runner.run([str(slow)], lambda p, s: seen.append(p), lambda: len(seen) >= 3)
    assert outcome.canceled and outcome.returncode == 143 and flag.exists()
    assert time.monotonic() - start < 10


def test_the_executable_comes_from_the_setting_then_the_environment_then_path(tmp_path, monkeypatch):
    mine = script(tmp_path / "my-landcover", "print('hi')\n")
    env = script(tmp_path / "env-landcover", "print('hi')\n")
    monkeypatch.setenv("LANDCOVER_EXECUTABLE", str(env))
    assert runner.find_executable(str(mine)) == str(mine)
    assert runner.find_executable("") == str(env)
    monkeypatch.delenv("LANDCOVER_EXECUTABLE")
    monkeypatch.setenv("PATH", str(Path(LANDCOVER).parent))
    assert runner.find_executable() == LANDCOVER
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(runner.LandcoverNotFound, match="LANDCOVER_EXECUTABLE"):
        runner.find_executable()
    with pytest.raises(runner.LandcoverNotFound, match="not an executable"):
        runner.find_executable(str(tmp_path / "missing"))
    assert os.access(mine, os.X_OK)


def test_the_plugin_has_the_metadata_qgis_needs_and_compiles(tmp_path):
    """QGIS's plugin manager and repository need these keys; qgis_process loads only plugins with a provider."""
    import configparser
    import py_compile

    folder = Path(runner.__file__).parent
    meta = configparser.ConfigParser()
    meta.read(folder / "metadata.txt")
    required = {"name", "qgisminimumversion", "description", "about", "version", "author", "email", "repository"}
    assert required <= set(meta["general"]) and meta["general"]["hasProcessingProvider"] == "yes"
    for source in folder.glob("*.py"):
        py_compile.compile(str(source), cfile=str(tmp_path / f"{source.stem}.pyc"), doraise=True)
    assert "def classFactory(iface)" in (folder / "__init__.py").read_text()
