"""Outputs that cannot be written (read-only folder, full disk) and paths that are not UTF-8 end in one line
on stderr and exit code 2, leave nothing under a final name, and do not block a rerun elsewhere."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from landcover.cli import app
from tests.helpers import CLI, ONE_BATCH, ingest_command, train_command
from tests.learnable import make_learnable_dataset, make_learnable_scene, write_unet_checkpoint

# root ignores permission bits unless it gives up the capabilities that bypass them
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    return make_learnable_scene(tmp_path_factory.mktemp("raw"), size=256)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_learnable_dataset(tmp_path_factory.mktemp("learnable"))


def read_only_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder this process's commands cannot write, and the prefix that runs a command without root's override."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    prefix = NO_DAC if os.geteuid() == 0 and shutil.which("setpriv") else []
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    probe = subprocess.run([*prefix, "touch", str(folder / "probe")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("cannot make a folder this user cannot write (root without setpriv?)")
    return folder, prefix


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 128 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(folder)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), proc.stderr[-3000:]
    return lines[0]


def commands(scene: tuple[Path, Path], checkpoint: Path, out: Path) -> dict[str, list[str]]:
    image, labels = scene
    return {
        "labels": ["labels", str(labels), "--like", str(image), "--out", str(out / "labels.tif")],
        "ingest": ingest_command(image, labels, out / "ds"),
        "predict": ["predict", str(checkpoint), str(image), "--out", str(out / "map.tif"), "--device", "cpu"],
        "predict-probabilities": [
            "predict",
            str(checkpoint),
            str(image),
            "--out",
            str(out / "map.tif"),
            "--device",
            "cpu",
            "--probabilities",
            "--no-quicklook",
        ],
        "explain": ["explain", str(checkpoint), str(image), "--out", str(out / "explained"), "--device", "cpu"],
        "evaluate": [
            "evaluate",
            str(image.parent / "map.tif"),
            str(labels),
            "--out",
            str(out / "report"),
            "--nomenclature",
            "level1",
        ],
    }


@pytest.mark.parametrize("command", ["labels", "ingest", "predict", "explain", "evaluate"])
def test_read_only_output_folder_is_one_line_and_exit_2(command, scene, checkpoint, tmp_path):
    folder, prefix = read_only_folder(tmp_path)
    if command == "evaluate":  # a map to score
        subprocess.run(
            [
                *CLI,
                *commands(scene, checkpoint, tmp_path)["predict"][:-4],
                "--out",
                str(scene[0].parent / "map.tif"),
                "--device",
                "cpu",
                "--overwrite",
            ],
            check=True,
            capture_output=True,
        )
    proc = subprocess.run(
        [*prefix, *CLI, *commands(scene, checkpoint, folder)[command]], capture_output=True, text=True, timeout=300
    )
    line = one_error_line(proc)
    assert str(folder) in line and "permission denied" in line, line
    assert not list(folder.iterdir())  # nothing, not even a hidden temporary
    again = subprocess.run(
        [*CLI, *commands(scene, checkpoint, tmp_path / "writable")[command]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]


def train_args(dataset: Path, out: Path) -> list[str]:
    return train_command(dataset, out, *ONE_BATCH)


def test_read_only_run_folder_of_train_is_one_line_and_exit_2(dataset, tmp_path):
    folder, prefix = read_only_folder(tmp_path)
    proc = subprocess.run(
        [*prefix, *CLI, *train_args(dataset, folder / "run")], capture_output=True, text=True, timeout=300
    )
    line = one_error_line(proc)
    assert str(folder / "run") in line and "permission denied" in line, line
    assert not list(folder.iterdir())


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("command", ["labels", "predict-probabilities", "explain"])
def test_full_disk_is_one_line_exit_2_and_leaves_no_file(command, scene, checkpoint, tmp_path, small_disk):
    """A real full file system: GDAL's own messages (libtiff prints straight to stderr) do not reach the user,
    and the labels GeoTIFF, whose write fails only when GDAL closes it, never takes its final name."""
    if command == "labels":  # 1024 x 1024 labels do not fit in 128 KiB; 256 x 256 do
        scene = make_learnable_scene(tmp_path / "raw", size=1024)
    proc = subprocess.run(
        [*CLI, *commands(scene, checkpoint, small_disk)[command]], capture_output=True, text=True, timeout=300
    )
    line = one_error_line(proc)
    assert str(small_disk) in line and "no space left" in line and "MB free" in line and "needed" in line, line
    assert not files_in(small_disk)
    again = subprocess.run(
        [*CLI, *commands(scene, checkpoint, tmp_path / "roomy")[command]], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]


def test_full_disk_while_training_leaves_no_truncated_checkpoint_and_the_rerun_completes(dataset, small_disk):
    """Lightning stages a checkpoint in /tmp and copies it over: on a full disk that left a truncated best.ckpt."""
    proc = subprocess.run([*CLI, *train_args(dataset, small_disk / "run")], capture_output=True, text=True, timeout=300)
    line = one_error_line(proc)
    assert "best.ckpt" in line and "no space left" in line and "MB needed" in line, line
    assert not [f for f in files_in(small_disk) if f.endswith(".ckpt") or "partial" in f]  # config.yaml is whole
    # space again (a bigger tmpfs, the failed run's files still there): the same command completes
    subprocess.run(["mount", "-o", "remount,size=1g", str(small_disk)], check=True)
    again = subprocess.run(
        [*CLI, *train_args(dataset, small_disk / "run")], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]


def no_space(*names: str):
    """A write_text that fails like a full disk for files whose name contains one of ``names``."""
    real = Path.write_text

    def write_text(self: Path, *args, **kwargs):
        if any(n in self.name for n in names):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    return write_text


def test_full_disk_while_ingest_writes_a_scene_is_one_line_and_the_rerun_completes(scene, tmp_path, monkeypatch):
    image, labels = scene
    args = ingest_command(image, labels, tmp_path / "ds")
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", no_space("scene.json"))
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot write" in result.output and "no space left" in result.output and "MB free" in result.output
    assert "about" in result.output and "needed" in result.output, result.output
    assert not list((tmp_path / "ds" / "scenes").iterdir())  # the partial scene was removed
    assert CliRunner().invoke(app, args).exit_code == 0


def test_full_disk_while_evaluate_writes_its_report_leaves_no_report(scene, checkpoint, tmp_path, monkeypatch):
    labels = scene[1]
    assert CliRunner().invoke(app, commands(scene, checkpoint, tmp_path)["predict"]).exit_code == 0
    args = [
        "evaluate",
        str(tmp_path / "map.tif"),
        str(labels),
        "--out",
        str(tmp_path / "report"),
        "--nomenclature",
        "level1",
    ]
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", no_space("metrics.json"))
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no space left" in result.output, result.output
    assert f"cannot write {tmp_path / 'report'}: no space left" in result.output  # the folder, not its temporary
    assert not [p.name for p in tmp_path.iterdir() if "report" in p.name]
    assert CliRunner().invoke(app, args).exit_code == 0


def test_output_error_names_the_reason():
    from landcover.errors import OutputError
    from landcover.io.failures import output_error

    denied = output_error(PermissionError(errno.EACCES, "Permission denied", "/data/out/map.tif"))
    assert isinstance(denied, OutputError) and "cannot write /data/out/map.tif: permission denied" in str(denied)
    read_only = output_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))
    assert "read-only file system" in str(read_only)
    full = output_error(OSError(errno.ENOSPC, "No space left on device", "/tmp/x.tif"), needed=50_000_000)
    assert "no space left" in str(full) and "MB free" in str(full) and "about 50 MB needed" in str(full)
    assert output_error(OSError(errno.ENOENT, "No such file", "/x")) is None  # not a write failure
    assert "\n" not in str(full)


def test_non_utf8_paths_are_refused_in_one_line(scene, checkpoint, tmp_path):
    image, labels = scene
    odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/scene_\xff.tif"))
    shutil.copy(image, odd)
    listed = tmp_path / "scenes.txt"
    listed.write_bytes(os.fsencode(str(odd)) + b"\n")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    for args in (
        ["labels", str(labels), "--like", str(odd), "--out", str(tmp_path / "labels.tif")],
        ["labels", str(labels), "--like", str(image), "--out", str(odd.with_name("labels_\udcff.tif"))],
        ["predict", str(checkpoint), "--from-list", str(listed), "--out", str(tmp_path / "maps"), "--device", "cpu"],
    ):
        proc = subprocess.run([*CLI, *args], capture_output=True, env=env, timeout=120)
        stderr = proc.stderr.decode("utf-8", "replace")
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, stderr[-3000:]
        assert len(lines) == 1 and "UTF-8" in lines[0] and "\\xff" in lines[0], stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([odd.name, listed.name])  # nothing written


def test_a_gdal_error_that_gives_no_reason_on_a_full_disk_is_no_space(tmp_path, monkeypatch):
    """pyogrio says only "Failed to commit transaction" when a GeoPackage (splits.gpkg) hits a full disk."""
    import pyogrio.errors

    from landcover.errors import OutputError
    from landcover.io import failures as outputs

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with (
        pytest.raises(OutputError, match=r"cannot write .*splits.gpkg: no space left on .* \(0.0 MB free"),
        outputs.writing(tmp_path / "splits.gpkg"),
    ):
        raise pyogrio.errors.DataSourceError("Failed to commit transaction")
    with pytest.raises(pyogrio.errors.DataSourceError):  # with room left it is not a full disk: the error as it is
        monkeypatch.undo()
        with outputs.writing(tmp_path / "splits.gpkg"):
            raise pyogrio.errors.DataSourceError("Failed to commit transaction")
