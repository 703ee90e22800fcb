"""The SLURM scripts on a real (local, one-node) SLURM: array predict, DDP training, the pipeline.

Needs ``scripts/slurm/local_cluster.sh start`` (root; `.ci/run` does it) and runs with
``pytest -m slurm``. Jobs run the installed ``landcover`` of this interpreter's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.learnable import write_unet_checkpoint
from tests.test_cluster import make_scenes

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        shutil.which("sbatch") is None, reason="SLURM is not installed (apt-get install slurm-wlm munge)"
    ),
]
ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "scripts" / "slurm"
LANDCOVER = str(Path(sys.executable).with_name("landcover"))


@pytest.fixture(scope="module", autouse=True)
def cluster_up():
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode != 0 or not re.search(r"idle|mixed|allocated", proc.stdout):
        pytest.fail(
            f"no local SLURM answers ({proc.stderr.strip() or proc.stdout.strip()}): "
            "run scripts/slurm/local_cluster.sh start"
        )


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "LANDCOVER": LANDCOVER, "OMP_NUM_THREADS": "1", **extra}


def sbatch(*args: str, **extra: str) -> str:
    for arg in args:  # SLURM does not create the folder of --output: the job would fail at once
        if arg.startswith("--output="):
            Path(arg.split("=", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env(**extra))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def states(job: str) -> list[str]:
    proc = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return re.findall(r"JobState=(\w+)", proc.stdout)


def wait(job: str, timeout: float = 600) -> list[str]:
    """Wait until no task of ``job`` is pending or running; their final states."""
    end = time.time() + timeout
    while time.time() < end:
        now = states(job)
        if now and not any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") for s in now):
            return now
        time.sleep(2)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not finish in {timeout} s: {states(job)}")


def logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.out")))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    images, clc = make_scenes(root, n=3, size=256)
    (root / "scenes.txt").write_text("\n".join(map(str, images)) + "\n")
    return root / "scenes.txt", clc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt")


def test_array_predict_equals_one_sequential_run_and_survives_a_requeue(scenes, checkpoint, tmp_path):
    scene_list, _ = scenes
    sequential = subprocess.run(
        [
            LANDCOVER,
            "predict",
            str(checkpoint),
            "--from-list",
            str(scene_list),
            "--out",
            str(tmp_path / "seq"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert sequential.returncode == 0, sequential.stderr
    maps = sorted(p.name for p in (tmp_path / "seq").glob("*.tif"))
    assert len(maps) == 3

    job = sbatch(
        "--array=0-2",
        "--cpus-per-task=1",
        f"--output={tmp_path}/logs/%x-%A_%a.out",
        str(SLURM / "predict_array.sbatch"),
        str(checkpoint),
        str(scene_list),
        str(tmp_path / "array"),
    )
    assert wait(job) == ["COMPLETED"] * 3, logs(tmp_path / "logs")
    for name in maps:  # N scenes over M array tasks: the same maps, byte for byte
        assert (tmp_path / "array" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes(), name

    # kill one task midway (while its map is being written) and requeue it: the rerun completes it
    job = sbatch(
        "--array=0-2",
        "--cpus-per-task=1",
        f"--output={tmp_path}/logs2/%x-%A_%a.out",
        str(SLURM / "predict_array.sbatch"),
        str(checkpoint),
        str(scene_list),
        str(tmp_path / "again"),
        "--probabilities",
    )
    end = time.time() + 300
    while not list((tmp_path / "again").glob(".*partial*")) and time.time() < end:
        time.sleep(0.05)
    running = re.findall(
        r"^(\S+_\d+)\s+RUNNING",
        subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout,
        re.M,
    )
    assert running, f"no task of {job} was running while an output was being written"
    subprocess.run(["scontrol", "requeue", running[0]], check=True)  # SIGTERM now, the task runs again later
    for _ in range(60):  # SLURM holds a requeued job back for 2 minutes (BeginTime): let it start at once
        time.sleep(0.5)
        if (
            "Reason=BeginTime"
            in subprocess.run(["scontrol", "show", "job", running[0]], capture_output=True, text=True).stdout
        ):
            subprocess.run(["scontrol", "update", f"jobid={running[0]}", "StartTime=now"], capture_output=True)
            break
    assert wait(job) == ["COMPLETED"] * 3, logs(tmp_path / "logs2")
    assert "restart 1" in logs(tmp_path / "logs2")
    for name in maps:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes(), name
    assert len(list((tmp_path / "again").glob("*_probabilities.tif"))) == 3
    assert not [p for p in (tmp_path / "again").iterdir() if "partial" in p.name]  # no leftovers, no duplicates


@pytest.fixture(scope="module")
def dataset(scenes, tmp_path_factory):
    scene_list, clc = scenes
    out = tmp_path_factory.mktemp("ds") / "dataset"
    proc = subprocess.run(
        [
            LANDCOVER,
            "ingest",
            "--from-list",
            str(scene_list),
            "--labels",
            str(clc),
            "--out",
            str(out),
            "--nomenclature",
            "level1",
            "--tile-size",
            "32",
            "--block-size",
            "1920",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert proc.returncode == 0, proc.stderr
    return out


TRAIN_ARGS = [
    "--max-epochs",
    "1",
    "--set",
    "trainer.limit_train_batches=3",
    "--set",
    "trainer.limit_val_batches=2",
    "--set",
    "data.num_workers=0",
]


def test_ddp_training_with_two_tasks_under_srun(dataset, tmp_path):
    run = tmp_path / "run"
    job = sbatch(
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        f"--output={tmp_path}/%x-%j.out",
        str(SLURM / "train_ddp.sbatch"),
        str(ROOT / "configs" / "tiny.yaml"),
        str(dataset),
        str(run),
        *TRAIN_ARGS,
        ACCELERATOR="cpu",
    )
    assert wait(job) == ["COMPLETED"], logs(tmp_path)
    ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks), logs(tmp_path)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (run / "checkpoints" / "best.ckpt").exists() and json.loads((run / "metrics.json").read_text())[
        "best_epoch"
    ] == 0

    # a job whose shape does not match the trainer stops with a message instead of hanging
    bad = subprocess.run(
        [
            "srun",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            LANDCOVER,
            "train",
            str(ROOT / "configs" / "tiny.yaml"),
            "--dataset",
            str(dataset),
            "--out",
            str(tmp_path / "bad"),
            "--devices",
            "1",
            *TRAIN_ARGS,
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert bad.returncode != 0 and "trainer.devices=1 but SLURM starts 2 tasks per node" in bad.stderr


def test_pipeline_chains_ingest_finalize_train_predict(scenes, tmp_path):
    scene_list, clc = scenes
    work = tmp_path / "work"
    proc = subprocess.run(
        [str(SLURM / "submit_pipeline.sh"), str(scene_list), str(clc), str(work), str(ROOT / "configs" / "tiny.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env(
            INGEST_TASKS="2",
            PREDICT_TASKS="2",
            GPUS_PER_NODE="0",
            TASKS_PER_NODE="2",
            SBATCH_ARGS="--cpus-per-task=1",
            PREDICT_ARGS="--device cpu",
            INGEST_ARGS="--nomenclature level1 --tile-size 32 --block-size 1920 --seed 3",
            TRAIN_ARGS=" ".join(TRAIN_ARGS),
        ),
    )
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.split("\n") if line.strip())
    assert list(jobs) == ["ingest", "finalize", "train", "predict"]
    assert wait(jobs["predict"], timeout=900) == ["COMPLETED"] * 2, logs(work / "logs")
    for step in ("ingest", "finalize", "train"):
        assert set(states(jobs[step])) == {"COMPLETED"}, logs(work / "logs")
    info = json.loads((work / "dataset" / "dataset.json").read_text())
    assert len(info["scenes"]) == 3
    assert (work / "train" / "checkpoints" / "best.ckpt").exists()
    assert len(list((work / "maps").glob("*.tif"))) == 3
    import rasterio

    for scene in info["scenes"]:
        with rasterio.open(work / "maps" / f"{Path(scene['input']).stem}.tif") as src:
            assert (src.width, src.height) == (scene["grid"]["width"], scene["grid"]["height"])
            assert set(np.unique(src.read(1))) <= set(range(5))


def test_readme_cluster_example_runs_as_written(tmp_path):
    """The README's cluster section (its submit command; the cluster is already up), on the sample."""
    readme = (ROOT / "README.md").read_text()
    block = re.findall(r"```bash\n(.+?)\n```", readme[readme.index("## Cluster batch runs") :], re.S)[1]
    submit = re.search(r"^LANDCOVER=.+?submit_pipeline\.sh.+?(?<!\\)$", block, re.S | re.M).group(0)
    assert "runs/cluster" in submit
    proc = subprocess.run(
        ["bash", "-c", submit.replace("runs/cluster", str(tmp_path / "cluster"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.split("\n") if line.strip())
    assert wait(jobs["predict"], timeout=900) == ["COMPLETED"], logs(tmp_path / "cluster" / "logs")
    import rasterio

    with rasterio.open(tmp_path / "cluster" / "maps" / "T33UUU.tif") as src:
        assert (src.width, src.height) == (1536, 768) and src.colormap(1)[0][:3] == (230, 0, 77)


def test_sweep_as_an_array_gives_the_local_pools_leaderboard(tmp_path):
    from landcover.training.sweep import run_sweep
    from tests.learnable import make_learnable_dataset

    dataset = make_learnable_dataset(
        tmp_path,
        size=512,
        seed=1,  # small, with val and test tiles
        split={"block_size_m": 1920, "seed": 3, "fractions": (0.6, 0.2, 0.2)},
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        json.dumps(
            {
                "base": "tiny.yaml",
                "grid": {"optim.lr": [0.1, 0.001, 0.00001]},
                "set": {"trainer.max_epochs": 2, "optim.scheduler": "none"},
            }
        )
    )
    local = run_sweep(sweep, tmp_path / "local", dataset=dataset, parallel=2)
    job = sbatch(
        "--array=0-1",
        "--cpus-per-task=1",
        f"--output={tmp_path}/logs/%x-%A_%a.out",
        str(SLURM / "sweep_array.sbatch"),
        str(sweep),
        str(tmp_path / "array"),
        "--dataset",
        str(dataset),
    )
    assert wait(job) == ["COMPLETED"] * 2, logs(tmp_path / "logs")  # 2 tasks loop over 3 variants
    board = subprocess.run(
        [LANDCOVER, "sweep", str(sweep), "--out", str(tmp_path / "array"), "--dataset", str(dataset), "--leaderboard"],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert board.returncode == 0, board.stderr
    array = json.loads((tmp_path / "array" / "leaderboard.json").read_text())
    assert [(r["variant"], r["score"]) for r in array["leaderboard"]] == [
        (r["variant"], r["score"]) for r in local["leaderboard"]
    ]


def test_training_preempted_with_sigusr1_is_requeued_and_resumes(dataset, tmp_path):
    """SLURM's warning signal: Lightning saves an HPC checkpoint and requeues; --resume auto continues."""
    run = tmp_path / "run"
    job = sbatch(
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        f"--output={tmp_path}/%x-%j.out",
        str(SLURM / "train_ddp.sbatch"),
        str(ROOT / "configs" / "tiny.yaml"),
        str(dataset),
        str(run),
        "--max-epochs",
        "6",
        "--set",
        "trainer.patience=6",
        "--set",
        "trainer.limit_val_batches=2",
        "--set",
        "data.num_workers=0",
        ACCELERATOR="cpu",
    )
    end = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < end:  # an epoch is done
        time.sleep(0.5)
    assert (run / "checkpoints" / "last.ckpt").exists(), logs(tmp_path)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=SIGUSR1@120 sends
    for _ in range(120):  # the requeued job waits 2 minutes (BeginTime): start it now
        time.sleep(0.5)
        if (
            "Reason=BeginTime"
            in subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        ):
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
            break
    assert wait(job) == ["COMPLETED"], logs(tmp_path)
    text = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert "restart 1" in text and list(run.glob("hpc_ckpt_*.ckpt")), text[-3000:]
    assert (run / "logs" / "resumed-1" / "metrics.csv").exists() and (run / "logs" / "metrics.csv").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] >= 5  # the whole budget
    assert json.loads((run / "metrics.json").read_text())["stopped_epoch"] >= 5
