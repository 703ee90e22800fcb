"""Shards of scene lists, SLURM checks, and sharded ingest merged by --finalize (no SLURM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from typer.testing import CliRunner

from landcover.cli import app
from landcover.cluster import check_slurm_training, parse_shard, read_list, shard_items
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import finalize, ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ConfigError
from tests.conftest import write_raster
from tests.learnable import make_learnable_scene, write_unet_checkpoint


@pytest.mark.parametrize("n_items,count", [(1, 1), (3, 2), (7, 3), (10, 10), (2, 5)])
def test_every_item_is_in_exactly_one_shard(n_items, count):
    items = [f"scene_{i:02d}" for i in np.random.default_rng(n_items).permutation(n_items)]
    shards = [shard_items(items, (i, count)) for i in range(count)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the assignment depends on the names, not on the order of the list
    assert [shard_items(list(reversed(items)), (i, count)) for i in range(count)] == [list(reversed(s)) for s in shards]


def test_shard_from_text_and_from_the_slurm_array():
    assert parse_shard("2/4", env={}) == (2, 4)
    assert parse_shard(None, env={}) is None
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard(None, env=env) == (2, 4)
    assert parse_shard("0/1", env=env) == (0, 1)  # an explicit --shard wins
    for bad in ("4/4", "1-4", "a/b", "0/0"):
        with pytest.raises(ConfigError, match=r"I/N|between 0 and N-1"):
            parse_shard(bad, env={})
    with pytest.raises(ConfigError, match="contiguous"):
        parse_shard(None, env={**env, "SLURM_ARRAY_TASK_ID": "9"})


def test_read_list_resolves_relative_paths_and_skips_comments(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text("# scenes\na.SAFE\n\n/abs/b.SAFE  # the second\n")
    assert read_list(tmp_path / "sub" / "list.txt") == [tmp_path / "sub" / "a.SAFE", Path("/abs/b.SAFE")]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no input"):
        read_list(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="cannot read"):
        read_list(tmp_path / "missing.txt")


def test_slurm_job_shape_must_match_the_trainer():
    check_slurm_training(1, 1, env={})  # not under SLURM
    job = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "lc-train"}
    check_slurm_training(2, 2, env=job)
    with pytest.raises(ConfigError, match=r"trainer\.devices=4 but SLURM starts 2 tasks per node"):
        check_slurm_training(4, 2, env=job)
    with pytest.raises(ConfigError, match=r"trainer\.num_nodes=1"):
        check_slurm_training(2, 1, env=job)
    with pytest.raises(ConfigError, match="--devices 2"):
        check_slurm_training("auto", 2, env=job)
    with pytest.raises(ConfigError, match="--ntasks-per-node"):
        check_slurm_training(2, 1, env={"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "x"})
    check_slurm_training(1, 1, env={"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "interactive"})  # salloc shell


def make_scenes(root: Path, n: int = 3, size: int = 96) -> tuple[list[Path], Path]:
    """``n`` learnable 4-band scenes side by side (distinct names) and one CLC raster over all."""
    images, codes = [], []
    for i in range(n):
        image, labels = make_learnable_scene(root / "raw", size=size, seed=i, x0=500_000.0 + i * size * 10)
        images.append(image)
        with rasterio.open(labels) as src:
            codes.append(src.read(1))
    from rasterio.transform import from_origin

    clc = write_raster(
        root / "clc_all.tif", np.concatenate(codes, axis=1), "EPSG:32633", from_origin(500_000.0, 5_300_000, 10, 10)
    )
    return images, clc


def test_sharded_ingest_then_finalize_equals_one_run(tmp_path):
    images, clc = make_scenes(tmp_path)
    cfg = IngestConfig(nomenclature="level1", tile_size=16, split={"block_size_m": 640, "min_valid_fraction": 0})
    whole = ingest(images, tmp_path / "one", labels=clc, config=cfg)
    assert whole.to_json() == (tmp_path / "one" / "dataset.json").read_text()  # the result is what ingest wrote
    assert json.loads(whole.to_json()) == whole.to_dict() and whole.finalized
    parts = [ingest(images, tmp_path / "sharded", labels=clc, config=cfg, shard=(i, 2)) for i in (1, 0)]
    assert [p.finalized for p in parts] == [False, False]
    assert sorted(s for p in parts for s in p.scenes) == sorted(whole.scenes)
    assert not (tmp_path / "sharded" / "catalog.parquet").exists()  # left to --finalize
    again = ingest(images, tmp_path / "sharded", labels=clc, config=cfg, shard=(0, 2))  # a requeued task
    assert again.scenes == parts[1].scenes
    merged = finalize(tmp_path / "sharded")
    assert finalize(tmp_path / "sharded") == merged  # safe to run twice
    assert merged["normalization"] == whole.dataset["normalization"]
    a, b = read_catalog(tmp_path / "one"), read_catalog(tmp_path / "sharded")
    pd.testing.assert_frame_equal(
        a.drop(columns="geometry").reset_index(drop=True), b.drop(columns="geometry").reset_index(drop=True)
    )
    for scene in whole.dataset["scenes"]:
        for name in ("image", "labels"):
            assert (tmp_path / "one" / scene[name]).read_bytes() == (tmp_path / "sharded" / scene[name]).read_bytes()
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with --shard"):
        ingest(images, tmp_path / "sharded", labels=clc, config=cfg, shard=(0, 2), overwrite=True)


def test_cli_ingest_from_list_with_shards_and_finalize(tmp_path):
    images, clc = make_scenes(tmp_path, n=2, size=64)
    (tmp_path / "scenes.txt").write_text("\n".join(str(p.relative_to(tmp_path)) for p in images) + "\n")
    args = [
        "ingest",
        "--from-list",
        str(tmp_path / "scenes.txt"),
        "--labels",
        str(clc),
        "--out",
        str(tmp_path / "ds"),
        "--nomenclature",
        "level1",
        "--tile-size",
        "16",
        "--set",
        "split.min_valid_fraction=0",
    ]
    runner = CliRunner()
    for i in range(2):
        result = runner.invoke(app, [*args, "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
        assert f"shard {i}/2: 1 of 2 scene(s)" in result.output and "--finalize" in result.output
    result = runner.invoke(app, ["ingest", "--finalize", "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "ds" / "dataset.json").read_text())["scenes"]) == 2
    result = runner.invoke(app, [*args, "--shard", "2/2"])
    assert result.exit_code == 2 and "between 0 and N-1" in result.output


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    return write_unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


def test_cli_predict_shards_split_a_list_between_tasks(unet_checkpoint, tmp_path):
    images, _ = make_scenes(tmp_path, n=3, size=64)
    (tmp_path / "scenes.txt").write_text("\n".join(map(str, images)) + "\n")
    runner = CliRunner()
    done = []
    for i in range(2):
        result = runner.invoke(
            app,
            [
                "predict",
                str(unet_checkpoint),
                "--from-list",
                str(tmp_path / "scenes.txt"),
                "--out",
                str(tmp_path / "maps"),
                "--shard",
                f"{i}/2",
                "--no-quicklook",
            ],
        )
        assert result.exit_code == 0, result.output
        done.append(sorted(p.name for p in (tmp_path / "maps").glob("*.tif")))
    assert len(done[0]) == 2 and done[1] == ["scene_0.tif", "scene_1.tif", "scene_2.tif"]  # 2 + 1, none twice


def test_sigterm_removes_partial_outputs(unet_checkpoint, tmp_path):
    """What scancel / a SLURM requeue does to a running predict: no half-written file stays."""
    import os
    import signal
    import subprocess
    import sys
    import time

    image, _ = make_learnable_scene(tmp_path, size=1536, seed=3)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "landcover.cli",
            "predict",
            str(unet_checkpoint),
            str(image),
            "--out",
            str(tmp_path / "map.tif"),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.time() + 120
    while not list(tmp_path.glob(".map.tif.*partial*")) and time.time() < end and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in stderr and "partial ones were removed" in stderr, (
        stderr
    )
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name or p.name.startswith("map.")]
