"""landcover sweep: variants from a grid, a bounded process pool, the leaderboard, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from landcover.errors import ConfigError
from landcover.training.sweep import load_sweep, resolve_variants, run_sweep, variant_overrides
from tests.learnable import make_learnable_dataset


def write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_grid_and_named_variants_resolve_to_full_configs(tmp_path):
    path = write(
        tmp_path / "s.yaml",
        {
            "base": "tiny.yaml",
            "set": {"trainer.max_epochs": 2},
            "grid": {"optim.lr": [0.1, 0.001], "model.encoder": ["resnet18", "resnet34"]},
            "variants": [{"name": "reg", "model.dropout": 0.2, "loss.label_smoothing": 0.1}],
        },
    )
    cfg, _ = load_sweep(path)
    names = [n for n, _ in variant_overrides(cfg)]
    assert names == [
        "lr-0.1_encoder-resnet18",
        "lr-0.1_encoder-resnet34",
        "lr-0.001_encoder-resnet18",
        "lr-0.001_encoder-resnet34",
        "reg",
    ]
    configs = resolve_variants(cfg, path, dataset=tmp_path / "ds")
    assert configs["lr-0.001_encoder-resnet34"]["optim"]["lr"] == 0.001
    assert configs["lr-0.001_encoder-resnet34"]["model"]["encoder"] == "resnet34"
    assert configs["reg"]["model"]["dropout"] == 0.2 and configs["reg"]["optim"]["lr"] == 0.003  # tiny.yaml's
    assert all(
        c["trainer"]["max_epochs"] == 2 and c["data"]["dataset"] == str(tmp_path / "ds") for c in configs.values()
    )
    # a segmentation sweep always trains the per-pixel baseline too, on the same data, unless told not to
    assert list(configs)[-1] == "lightgbm-baseline" and configs["lightgbm-baseline"]["model"]["arch"] == "lightgbm"
    assert all(c["model"]["arch"] == "cnn" for n, c in configs.items() if n != "lightgbm-baseline")
    write(path, {**yaml.safe_load(path.read_text()), "baseline": False})
    assert "lightgbm-baseline" not in resolve_variants(load_sweep(path)[0], path, dataset=tmp_path / "ds")


@pytest.mark.parametrize(
    "sweep,message",
    [
        ({"base": "tiny.yaml", "grid": {"optim.lr": [0.1]}, "colour": 1}, "colour"),
        ({"base": "tiny.yaml", "grid": {"optim.lr": []}}, "has no value"),
        ({"base": "tiny.yaml"}, "neither a grid nor variants"),
        (
            {"base": "tiny.yaml", "variants": [{"name": "a", "optim.lr": 0.1}, {"name": "a", "optim.lr": 0.2}]},
            "same folder",
        ),
        ({"base": "tiny.yaml", "grid": {"optim.lrr": [0.1]}}, "variant lrr-0.1"),
        ({"base": "missing.yaml", "grid": {"optim.lr": [0.1]}}, "not found"),
    ],
)
def test_bad_sweep_files_fail_clearly(tmp_path, sweep, message):
    path = write(tmp_path / "s.yaml", sweep)
    with pytest.raises(ConfigError, match=message):
        cfg, _ = load_sweep(path)
        resolve_variants(cfg, path)


SWEEP = {
    "base": "tiny.yaml",
    "grid": {"optim.lr": [0.1, 0.001, 0.00001], "model.encoder": ["resnet18", "resnet34"]},
    "set": {
        "trainer.max_epochs": 4,
        "trainer.patience": 4,
        "optim.scheduler": "none",
        "data.augment": {"hflip": False, "vflip": False, "rot90": False},
    },
    "parallel": 2,
    "keep": 2,
}


@pytest.mark.slow
def test_sweep_ranks_learning_rates_sensibly_and_resumes(tmp_path):
    """3 learning rates x 2 encoders on a learnable dataset: 1e-3 wins, 1e-5 has not converged."""
    dataset = make_learnable_dataset(tmp_path)
    path = write(tmp_path / "sweep.yaml", SWEEP)
    result = run_sweep(path, tmp_path / "sweep", dataset=dataset)
    table = pd.read_csv(tmp_path / "sweep" / "leaderboard.csv")
    assert len(table) == 7 and list(table["rank"]) == list(range(1, 8))
    assert (table["encoder"] == "lightgbm (per pixel)").sum() == 1  # the baseline is a row of every leaderboard
    cnn = table[table["encoder"] != "lightgbm (per pixel)"].reset_index(drop=True)
    by_lr = cnn.groupby("lr")["score"].max()
    assert cnn["lr"][0] == 0.001 and by_lr[0.001] > by_lr[1e-5] + 0.1, table
    for row in table.itertuples():  # the leaderboard is each run's own metrics.json
        metrics = json.loads((tmp_path / "sweep" / "variants" / row.variant / "metrics.json").read_text())
        assert metrics[row.metric] == pytest.approx(row.score)
    best = tmp_path / "sweep" / "best"
    assert json.loads((best / "variant.json").read_text())["variant"] == result["best"] == table["variant"][0]
    assert (best / "best.ckpt").exists() and "test/miou" in json.loads((best / "test_metrics.json").read_text())
    kept = [v for v in table["variant"] if (tmp_path / "sweep" / "variants" / v / "checkpoints").exists()]
    assert kept == list(table["variant"][:2])  # keep: 2
    said = []
    again = run_sweep(path, tmp_path / "sweep", dataset=dataset, say=said.append)
    assert sum("finished before, skipped" in line for line in said) == 7
    assert [r["score"] for r in again["leaderboard"]] == list(table["score"])


def test_cli_sweep_reports_bad_files_and_unfinished_sweeps(tmp_path):
    from typer.testing import CliRunner

    from landcover.cli import app

    runner = CliRunner()
    bad = write(tmp_path / "bad.yaml", {"base": "tiny.yaml", "grid": {"optim.lr": []}})
    result = runner.invoke(app, ["sweep", str(bad), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "has no value" in result.output
    good = write(tmp_path / "good.yaml", {"base": "tiny.yaml", "grid": {"optim.lr": [0.1, 0.01]}})
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"variants": {"lr-0.1": {}, "lr-0.01": {}}}))
    result = runner.invoke(app, ["sweep", str(good), "--out", str(tmp_path / "s"), "--leaderboard"])
    assert result.exit_code == 2 and "2 variant(s) not finished" in result.output


def fake_dataset(folder: Path) -> Path:
    """A folder that looks like a dataset to the cheap checks (dataset.json, catalog.parquet) and is not one."""
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text("{}")
    (folder / "catalog.parquet").write_bytes(b"")
    return folder


def test_a_failing_variant_is_reported_with_its_log(tmp_path):
    from landcover.errors import TrainingError

    path = write(tmp_path / "s.yaml", {"base": "tiny.yaml", "variants": [{"name": "only", "optim.lr": 0.01}]})
    broken = fake_dataset(tmp_path / "broken-dataset")  # passes the sweep's checks, fails in the variant
    with pytest.raises(TrainingError, match=r"only: .*catalog") as info:
        run_sweep(path, tmp_path / "out", dataset=broken, say=lambda line: None)
    assert "train.log" in str(info.value)
    assert (tmp_path / "out" / "variants" / "only" / "train.log").exists()
    assert not (tmp_path / "out" / "variants" / "only" / "metrics.json").exists()  # retried by the next run


def test_variants_get_the_parents_gpus_not_the_first_n(tmp_path, monkeypatch):
    """A job allocated GPUs 3,5 (CUDA_VISIBLE_DEVICES=3,5): its variants must run on 3 and 5, not 0 and 1."""
    import subprocess

    import torch

    import landcover.training.sweep as sweep

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what torch reports for "3,5"
    monkeypatch.setattr(sweep, "leaderboard", lambda *args, **kwargs: {})
    given: list[str] = []
    real_run = subprocess.run

    def fake_run(cmd, *args, **kwargs):  # a variant process: record its GPU, then finish
        if "landcover.cli" not in cmd:
            return real_run(cmd, *args, **kwargs)
        given.append(kwargs["env"]["CUDA_VISIBLE_DEVICES"])
        folder = Path(cmd[cmd.index("--out") + 1])
        (folder / "metrics.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    path = write(
        tmp_path / "s.yaml",
        {
            "base": "tiny.yaml",
            "set": {"trainer.accelerator": "gpu"},
            "grid": {"optim.lr": [0.1, 0.01, 0.001, 0.0001]},
            "baseline": False,
        },
    )
    run_sweep(path, tmp_path / "out", dataset=fake_dataset(tmp_path / "ds"), parallel=2, say=lambda line: None)
    assert len(given) == 4 and set(given) == {"3", "5"}, given
