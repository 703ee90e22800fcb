"""A checkpoint whose unpickling would run code is refused everywhere, and nothing in it runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ModelError
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.training.train import train
from tests.helpers import CLI, ONE_BATCH, tiny_config, train_command
from tests.learnable import make_learnable_dataset

runner = CliRunner()


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: the marker file appears if the pickle runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def poison(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A file that looks like a landcover checkpoint, with the payload among its hyper-parameters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "epoch": 0,
        "state_dict": {"model.w": torch.zeros(2)},
        "landcover": {"task": "segmentation"},
        "hyper_parameters": {"meta": Payload(marker)},
    }
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)  # legacy: the pre-1.6 pickle format
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_the_payload_runs_when_unpickled_unsafely(tmp_path, legacy):
    """The test payload is live: an unsafe load creates the marker (so the tests below can fail)."""
    marker = tmp_path / "pwned"
    path = poison(tmp_path / "evil.ckpt", marker, legacy=legacy)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def assert_refused(message: str, marker: Path) -> None:
    """Nothing ran, and the error is one line that says the file was refused because it would run code."""
    assert not marker.exists(), "the checkpoint's code ran"
    assert "Traceback" not in message, message
    lines = [line for line in message.splitlines() if "refused" in line]
    assert len(lines) == 1 and "run code" in lines[0], message


def test_train_resume_from_a_poisoned_checkpoint_is_refused_before_any_run_folder(tmp_path):
    marker = tmp_path / "pwned"
    evil = poison(tmp_path / "evil.ckpt", marker)
    out = tmp_path / "run"
    dataset = make_learnable_dataset(tmp_path / "ds")  # a real one: a missing dataset is reported first
    result = runner.invoke(app, [*train_command(dataset, out), "--resume", str(evil)])
    assert result.exit_code == 2, result.output
    assert_refused(result.output, marker)
    assert not out.exists()


def test_train_resume_auto_with_a_poisoned_last_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    poison(out / "checkpoints" / "last.ckpt", marker)
    cfg = tiny_config(tmp_path / "ds")
    with pytest.raises(ModelError) as err:
        train(cfg, out, resume="auto")
    assert_refused(str(err.value), marker)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing written into the run


def test_train_resume_auto_never_runs_a_poisoned_best_checkpoint(tmp_path):
    """A finished run whose best.ckpt was swapped for a pickle: resuming must not evaluate it unsafely."""
    dataset = make_learnable_dataset(tmp_path / "ds")
    cfg = tiny_config(dataset, *ONE_BATCH)
    out = tmp_path / "run"
    train(cfg, out)
    marker = tmp_path / "pwned"
    poison(out / "checkpoints" / "best.ckpt", marker)
    with pytest.raises(ModelError) as err:
        train(cfg, out, resume="auto")
    assert_refused(str(err.value), marker)


def test_predict_and_explain_refuse_a_poisoned_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    evil = poison(tmp_path / "evil.ckpt", marker)
    image = tmp_path / "image.tif"
    image.write_bytes(b"")  # never read: the checkpoint is checked first
    for args in (
        ["predict", str(evil), str(image), "--out", str(tmp_path / "map.tif")],
        ["explain", str(evil), str(image), "--out", str(tmp_path / "explain")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert_refused(result.output, marker)


@pytest.mark.parametrize("legacy", [False, True])
def test_encoder_weights_refuse_a_poisoned_ckpt(tmp_path, legacy):
    marker = tmp_path / "pwned"
    evil = poison(tmp_path / "encoder.ckpt", marker, legacy=legacy)
    cfg = ModelConfig(task="segmentation", encoder="resnet18", encoder_weights=str(evil))
    with pytest.raises(ModelError) as err:
        build_model(cfg, ["B02", "B03", "B04", "B08"], 5)
    assert_refused(str(err.value), marker)


def test_torch_override_variable_does_not_unlock_unsafe_loading(tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD flips torch's default: every load must say weights_only=True itself."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    poison(out / "checkpoints" / "last.ckpt", marker)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    dataset = make_learnable_dataset(tmp_path / "ds")  # a real one: a missing dataset is reported first
    proc = subprocess.run(
        [*CLI, *train_command(dataset, out), "--resume", "auto"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_refused(proc.stderr, marker)


def test_no_run_folder_is_created_for_a_dataset_that_does_not_exist(tmp_path):
    from landcover.errors import DatasetError

    cfg = tiny_config(tmp_path / "nothing")
    with pytest.raises(DatasetError):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
