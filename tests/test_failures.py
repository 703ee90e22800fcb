"""Failures that tell the truth: interrupted commands exit non-zero with one line, failed runs leave nothing
that blocks the corrected one, and bad arguments are reported before the heavy imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ModelError, UnknownCodeError
from tests.conftest import write_raster
from tests.helpers import CLI, ONE_BATCH, ROOT, ingest_command, tiny_config, train_command
from tests.learnable import make_learnable_dataset, make_learnable_scene, write_unet_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_learnable_dataset(tmp_path_factory.mktemp("learnable"))


def train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [*CLI, *train_command(dataset, out, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"), *extra]


def interrupt_when(args: list[str], ready: Path, signum: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``args``, send ``signum`` once ``ready`` exists, return the finished process."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + timeout
    while not ready.exists() and proc.poll() is None and time.time() < end:
        time.sleep(0.1)
    assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def interrupted_training(dataset, run, signum: signal.Signals, code: int) -> str:
    """Interrupt a training once its first last.ckpt exists; check the exit code and the one stderr line."""
    proc = interrupt_when(train_args(dataset, run, "--max-epochs", "50"), run / "checkpoints" / "last.ckpt", signum)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({signum.name})"), proc.stderr[-2000:]
    return lines[0]


def test_sigterm_stops_training_with_143_and_resume_completes(dataset, tmp_path):
    run = tmp_path / "run"
    line = interrupted_training(dataset, run, signal.SIGTERM, 143)
    assert "--resume auto" in line
    assert not (run / "metrics.json").exists()
    again = subprocess.run(
        train_args(dataset, run, "--max-epochs", "2", "--resume", "auto"), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "metrics.json").exists()
    assert "Checkpoint directory" not in again.stderr  # resuming into its own folder is not worth a warning


def test_sigint_stops_training_with_130(dataset, tmp_path):
    interrupted_training(dataset, tmp_path / "run", signal.SIGINT, 130)


def test_ingest_that_failed_on_bad_labels_does_not_block_the_corrected_run(tmp_path):
    image, labels = make_learnable_scene(tmp_path / "raw", size=256)
    with rasterio.open(labels) as src:
        bad = write_raster(
            tmp_path / "bad_labels.tif", np.full((src.height, src.width), 999, np.uint16), "EPSG:32633", src.transform
        )
    config = IngestConfig(
        nomenclature="level1", tile_size=32, overviews=False, split={"block_size_m": 3200, "min_valid_fraction": 0.0}
    )
    with pytest.raises(UnknownCodeError):
        ingest([image], tmp_path / "ds", labels=bad, config=config)
    assert not list((tmp_path / "ds" / "scenes").glob("*/scene.json"))  # nothing was ingested
    dataset = ingest([image], tmp_path / "ds", labels=labels, config=config)  # the corrected run proceeds
    assert len(dataset.scenes) == 1 and dataset.dataset["scenes"][0]["labels"]
    assert json.loads((tmp_path / "ds" / "ingest_settings.json").read_text())["labels"] == labels.name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


def test_predict_list_with_a_missing_entry_creates_no_output_folder(checkpoint, tmp_path):
    image, _ = make_learnable_scene(tmp_path / "raw", size=64)
    scenes = tmp_path / "scenes.txt"
    scenes.write_text(f"{image}\nmissing/scene.tif\n")
    result = CliRunner().invoke(
        app,
        ["predict", str(checkpoint), "--from-list", str(scenes), "--out", str(tmp_path / "maps"), "--device", "cpu"],
    )
    assert result.exit_code == 2, result.output
    assert "missing/scene.tif" in result.output and "do not exist" in result.output
    assert not (tmp_path / "maps").exists()


def test_explain_with_a_missing_input_creates_no_output_folder(checkpoint, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(checkpoint),
            str(tmp_path / "nope.tif"),
            "--out",
            str(tmp_path / "explained"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output
    assert not (tmp_path / "explained").exists()


def test_failed_resume_writes_nothing(dataset, tmp_path):
    from landcover.training.train import TrainConfig, train

    def cfg(*overrides: str) -> TrainConfig:
        return tiny_config(dataset, *ONE_BATCH, *overrides)

    train(cfg(), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    with pytest.raises(ModelError, match="does not fit"):  # a ResNet-34 cannot continue a ResNet-18 run
        train(cfg("model.encoder=resnet34", "trainer.max_epochs=2"), tmp_path / "other", resume=last)
    assert not (tmp_path / "other").exists()
    with pytest.raises(ModelError, match="does not fit"):
        train(cfg("model.encoder=resnet34", "trainer.max_epochs=2"), tmp_path / "run", resume="auto")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before  # the run is untouched


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> Path:
    import yaml

    folder = tmp_path_factory.mktemp("configs")
    (folder / "model_typo.yaml").write_text("model: {archh: unet}\n")
    (folder / "file").write_text("a regular file where --out expects a folder\n")
    sweep = {"base": "tiny.yaml", "grid": {"optim.lr": [0.1, 0.01]}}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    (folder / "sweep_typo.yaml").write_text(yaml.safe_dump({**sweep, "set": {"trainer.max_epoch": 3}}))
    return folder


FAIL_FAST = """
import sys
from landcover.cli import main
sys.argv = ["landcover", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    heavy = sorted(m for m in ("torch", "lightning", "segmentation_models_pytorch", "timm") if m in sys.modules)
    print("heavy:", heavy, "exit:", exc.code)
"""


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "missing.ckpt", "scene.tif", "--out", "map.tif"], "missing.ckpt does not exist"),
        (["predict", "{ckpt}", "missing_scene.tif", "--out", "map.tif"], "missing_scene.tif does not exist"),
        (["explain", "missing.ckpt", "scene.tif", "--out", "explained"], "missing.ckpt does not exist"),
        (["train", "missing.yaml", "--dataset", "ds", "--out", "run"], "missing.yaml"),
        (["train", "{tiny}", "--dataset", "no_dataset", "--out", "run"], "no_dataset does not exist"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--set", "trainer.max_epochs"], "KEY=VALUE"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--set", "trainr.max_epochs=2"], "trainr"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--resume", "missing.ckpt"], "missing.ckpt"),
        (["demo", "--task", "segmentatoin", "--out", "demo"], "segmentatoin"),
        (["sweep", "missing_sweep.yaml", "--out", "sweep"], "missing_sweep.yaml"),
        # issue 13: typos inside a section, and the option faults that used to launch work first
        (["train", "{files}/model_typo.yaml", "--dataset", "{ds}", "--out", "run"], "archh"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--set", "trainer.max_epoch=3"], "max_epoch"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--set", "optim.lr=-1"], "optim.lr"),
        (["sweep", "{files}/sweep.yaml", "--out", "sweep", "--dataset", "no_dataset"], "no_dataset does not exist"),
        (["sweep", "{files}/sweep.yaml", "--out", "sweep", "--parallel", "abc"], "--parallel"),
        (["sweep", "{files}/sweep_typo.yaml", "--out", "sweep", "--dataset", "{ds}"], "max_epoch"),
        (["demo", "--out", "demo", "--max-epochs", "-1"], "--max-epochs"),
        (["demo", "--out", "{files}/file/demo"], "is a file"),
        (["predict", "{files}/file", "{files}/file", "--out", "map.tif"], "is not a checkpoint"),
        (["predict", "{ckpt}", "{files}/file", "--out", "map.tif", "--device", "tpu"], "--device"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "{files}/file/run"], "is a file"),
        (["train", "{tiny}", "--dataset", "{ds}", "--out", "run", "--accelerator", "gpuu"], "trainer.accelerator"),
    ],
)
def test_argument_errors_appear_before_torch_is_imported(args, message, checkpoint, dataset, config_files, tmp_path):
    values = {"ckpt": checkpoint, "tiny": ROOT / "configs" / "tiny.yaml", "ds": dataset, "files": config_files}
    args = [a.format(**values) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", FAIL_FAST, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.stdout.strip().splitlines()[-1] == "heavy: [] exit: 2", (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not [p.name for p in tmp_path.iterdir()]  # and nothing was written


def test_preflight_knows_every_section_of_the_training_config():
    from landcover.training.config import TRAIN_SECTIONS
    from landcover.training.train import TrainConfig

    assert set(TRAIN_SECTIONS) == set(TrainConfig.model_fields)


def test_sigterm_stops_the_demo_with_143(tmp_path):
    out = tmp_path / "demo"
    proc = interrupt_when(
        [*CLI, "demo", "--out", str(out), "--max-epochs", "1"],
        out / "segmentation" / "dataset" / "ingest_settings.json",
        signal.SIGTERM,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM)"), proc.stderr[-2000:]


def test_train_on_a_dataset_with_an_empty_split_creates_no_run_folder(tmp_path):
    from landcover.errors import DatasetError
    from landcover.training.train import train

    small = make_learnable_dataset(tmp_path / "small", size=256)  # too small for a val block
    cfg = tiny_config(small)
    with pytest.raises(DatasetError, match=r"split .* is empty"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sigterm_during_ingest_exits_143_and_the_rerun_completes(tmp_path):
    image, labels = make_learnable_scene(tmp_path / "raw", size=2048)
    out = tmp_path / "ds"
    args = [*CLI, *ingest_command(image, labels, out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while not list((out / "scenes").glob(".*partial*")) and proc.poll() is None and time.time() < end:
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM)"), stderr
    assert not list((out / "scenes").iterdir())  # the partial scene was removed
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "dataset.json").exists() and len(list((out / "scenes").glob("*/scene.json"))) == 1


def test_training_killed_while_writing_metrics_leaves_no_metrics_file(dataset, tmp_path, monkeypatch):
    """metrics.json marks a finished run (a sweep skips such variants): it must never exist half-written."""
    from landcover.training.train import train

    real = Path.write_text

    def killed_midway(self: Path, text: str, *args, **kwargs):
        if "metrics.json" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed_midway)
    cfg = tiny_config(dataset, *ONE_BATCH)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    assert not [p.name for p in (tmp_path / "run").iterdir() if "metrics.json" in p.name]


def test_sigterm_to_a_sweep_stops_its_running_variants_and_exits_143(dataset, tmp_path):
    """`kill PID` of a sweep reaches the variants it runs: the sweep does not wait for them to finish."""
    interrupted_sweep(dataset, tmp_path, signal.SIGTERM, 143)


def test_sigint_to_a_sweep_alone_stops_its_running_variants_and_exits_130(dataset, tmp_path):
    """`kill -INT PID` (or Ctrl-C) of a sweep stops its variants too, each once (they run in their own session)."""
    interrupted_sweep(dataset, tmp_path, signal.SIGINT, 130)


def interrupted_sweep(dataset: Path, tmp_path: Path, signum: signal.Signals, code: int) -> None:
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": "tiny.yaml",
                "parallel": 1,
                "grid": {"optim.lr": [0.003]},
                "set": {
                    "data.dataset": str(dataset),
                    "trainer.max_epochs": 200,
                    "trainer.patience": 200,
                    "trainer.limit_train_batches": 2,
                    "trainer.limit_val_batches": 1,
                },
            }
        )
    )
    out = tmp_path / "sweep"
    started = time.time()
    proc = subprocess.Popen(
        [*CLI, "sweep", str(sweep), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    end = started + 120
    while not list(out.glob("variants/*/checkpoints/last.ckpt")) and proc.poll() is None and time.time() < end:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.kill(proc.pid, signum)
    try:
        _, stderr = proc.communicate(timeout=60)  # 200 epochs would take minutes
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the sweep waited for its variants after {signum.name}") from None
    lines = stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith(f"interrupted ({signum.name})"), stderr
    log = next(out.glob("variants/*/train.log")).read_text()
    assert "interrupted (SIGTERM)" in log  # the variant was stopped too, and resumes on the next run


def test_resume_auto_starts_a_run_that_was_killed_before_its_first_checkpoint(dataset, tmp_path):
    """A kill between the first best.ckpt and last.ckpt (or while the first one was written) leaves
    checkpoints/ without last.ckpt: --resume auto must start the run, not refuse it."""
    from landcover.training.train import train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = tiny_config(dataset, *ONE_BATCH)
    metrics = train(cfg, run, resume="auto")
    assert metrics.stopped_epoch >= 0 and (run / "checkpoints" / "last.ckpt").exists()


def test_predict_into_a_new_folder_with_an_unusable_input_creates_no_folder(tmp_path):
    ckpt = write_unet_checkpoint(tmp_path / "b11.ckpt", bands=["B02", "B03", "B04", "B08", "B11"])
    image, _ = make_learnable_scene(tmp_path / "raw", size=64)  # B02 B03 B04 B08: no B11
    (tmp_path / "list.txt").write_text(f"{image}\n")
    for args in (
        ["--out", str(tmp_path / "maps" / "scene.tif"), str(image)],
        ["--out", str(tmp_path / "batch"), "--from-list", str(tmp_path / "list.txt")],
    ):
        result = CliRunner().invoke(app, ["predict", str(ckpt), *args, "--device", "cpu"])
        assert result.exit_code == 2 and "B11" in result.output, result.output
    assert not (tmp_path / "maps").exists() and not (tmp_path / "batch").exists()


def test_labels_like_a_raster_without_crs_is_one_line(tmp_path):
    """Issue 13: no CRSError traceback, and no NotGeoreferencedWarning printed above the message."""
    import geopandas as gpd
    from shapely.geometry import box

    with rasterio.open(tmp_path / "nocrs.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    gpd.GeoDataFrame({"CODE_18": ["311"]}, geometry=[box(0, 0, 8, 8)], crs="EPSG:32633").to_file(tmp_path / "clc.gpkg")
    proc = subprocess.run(
        [
            *CLI,
            "labels",
            str(tmp_path / "clc.gpkg"),
            "--like",
            str(tmp_path / "nocrs.tif"),
            "--out",
            str(tmp_path / "out" / "labels.tif"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "has no CRS" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its parent, init now, reaps it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_a_sweep_takes_its_variants_down(dataset, tmp_path):
    """`kill -9` of a sweep cannot be caught: its variants must not go on training as orphans."""
    import yaml

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": "tiny.yaml",
                "parallel": 2,
                "grid": {"optim.lr": [0.003, 0.001]},
                "set": {
                    "data.dataset": str(dataset),
                    "trainer.max_epochs": 200,
                    "trainer.patience": 200,
                    "trainer.limit_train_batches": 2,
                    "trainer.limit_val_batches": 1,
                },
            }
        )
    )
    proc = subprocess.Popen(
        [*CLI, "sweep", str(sweep), "--out", str(tmp_path / "sweep")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.time() + 120
    while len(_children(proc.pid)) < 2 and proc.poll() is None and time.time() < end:
        time.sleep(0.2)
    variants = _children(proc.pid)
    assert len(variants) == 2, "the variants did not start"
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.time() + 30
    while any(_alive(pid) for pid in variants) and time.time() < end:
        time.sleep(0.2)
    orphans = [pid for pid in variants if _alive(pid)]
    for pid in orphans:  # leave nothing running whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "variants kept running after their sweep was killed"
