"""``landcover sweep``: many ordinary training runs from one base config, and a leaderboard.

A sweep file names a base training config and the variations to try::

    base: tiny.yaml                 # relative to the sweep file (or configs/)
    dataset: ../runs/sample         # optional: data.dataset for every variant
    set: {trainer.max_epochs: 5}    # optional: overrides for every variant
    grid:                           # every combination (cartesian product) ...
      optim.lr: [0.1, 0.001, 0.00001]
      model.encoder: [resnet18, resnet34]
    variants:                       # ... and/or a list of named variants
      - {name: frozen, model.freeze_encoder_epochs: 2}
    keep: 3                         # optional: delete the checkpoints of all but the best 3
    baseline: true                  # default: a segmentation sweep also trains the LightGBM pixel baseline

Each variant is a ``landcover train`` run (a subprocess) in ``OUT/variants/<name>``, with its resolved
config in ``variant.yaml``. Variants run in a bounded process pool (``parallel``: at most one per
CPU core, or per GPU), or one SLURM array task each (``--shard``; an array shorter than the variant
count loops: task I runs variants I, I + N, ...). A variant with a ``metrics.json`` is finished and
skipped; one that stopped midway continues from its last checkpoint (``--resume auto``).

The leaderboard (:mod:`landcover.training.leaderboard`) ranks the finished variants by the same validation
metric (the task's monitor: val mIoU or val mAP) in ``leaderboard.csv``/``.md`` and a plot; the best is copied
to ``OUT/best`` (checkpoint + config) and scored once on the test split (``best/test_metrics.json``), only then.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from landcover.cluster import Shard, shard_items
from landcover.config import config_dir, load_config, read_yaml
from landcover.errors import ConfigError, LandcoverError, OutputExistsError, TrainingError
from landcover.io.outputs import write_text_atomic
from landcover.preflight import check_dataset_folder
from landcover.training.leaderboard import leaderboard

RESERVED = ("name",)
BASELINE_VARIANT = "lightgbm-baseline"


class SweepConfig(BaseModel):
    """One sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    base: str
    dataset: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    parallel: PositiveInt | Literal["auto"] = "auto"
    keep: int | None = Field(None, ge=1)
    baseline: bool = True
    """Add the per-pixel LightGBM baseline (``model.arch: lightgbm``, variant ``lightgbm-baseline``) to a
    segmentation sweep, so every leaderboard shows the CNNs next to it."""


def load_sweep(path: str | Path) -> tuple[SweepConfig, Path]:
    path = Path(path)
    data = read_yaml(path, "sweep file") or {}
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'sweep'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid sweep file {path}: {problems}") from exc
    if any(not values for values in cfg.grid.values()):
        empty = [k for k, v in cfg.grid.items() if not v]
        raise ConfigError(f"{path}: grid {', '.join(empty)} has no value; give each key a list of values")
    if not cfg.grid and not cfg.variants:
        raise ConfigError(f"{path} has neither a grid nor variants: nothing to sweep")
    return cfg, path


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def variant_overrides(cfg: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, {dotted key: value}) of every variant, in a stable order; names must be unique."""
    out: list[tuple[str, dict[str, Any]]] = []
    keys = list(cfg.grid)
    for combo in itertools.product(*(cfg.grid[k] for k in keys)) if keys else []:
        values = dict(zip(keys, combo, strict=True))
        out.append(("_".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in values.items()), values))
    for i, variant in enumerate(cfg.variants):
        values = {k: v for k, v in variant.items() if k not in RESERVED}
        name = str(
            variant.get("name")
            or "_".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in values.items())
            or f"variant{i}"
        )
        out.append((_slug(name), values))
    names = [n for n, _ in out]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(
            f"variants {', '.join(dup)} would write into the same folder; give them distinct values or names"
        )
    return out


def resolve_variants(cfg: SweepConfig, sweep_file: Path, dataset: str | Path | None = None) -> dict[str, dict]:
    """The full, validated training config of every variant (name -> config as a dict)."""
    from landcover.training.config import TrainConfig

    base = Path(cfg.base)
    for candidate in (sweep_file.parent / base, config_dir() / base, base):
        if candidate.is_file():
            base = candidate
            break
    else:
        raise ConfigError(f"base config {cfg.base} not found beside {sweep_file} nor in configs/")
    root = dataset or (str((sweep_file.parent / cfg.dataset).resolve()) if cfg.dataset else None)
    common = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in cfg.set.items()]
    resolved = {}
    for name, values in variant_overrides(cfg):
        overrides = common + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in values.items()]
        if root is not None:
            overrides.append(f"data.dataset={root}")
        try:
            resolved[name] = load_config(TrainConfig, base, overrides).model_dump(mode="json")
        except ConfigError as exc:
            raise ConfigError(f"variant {name}: {exc}") from None
    first = next(iter(resolved.values()), None)
    if cfg.baseline and first is not None and first["model"]["task"] == "segmentation":
        extra = ["model.arch=lightgbm", "data.normalization=none"] + ([f"data.dataset={root}"] if root else [])
        resolved[BASELINE_VARIANT] = load_config(TrainConfig, base, common + extra).model_dump(mode="json")
    return resolved


def _cpus() -> int:
    """The CPUs this process may use: the SLURM task's allocation, else the affinity mask."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run_variant(name: str, folder: Path, config: dict, threads: int, gpu: str | None) -> tuple[str, int, str]:
    """``landcover train`` in a subprocess; (name, exit code, last lines of its output)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "variant.yaml", yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    resume = ["--resume", "auto"] if (folder / "checkpoints").exists() else []
    with open(folder / "train.log", "w") as log:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "landcover.cli",
                "train",
                str(folder / "variant.yaml"),
                "--out",
                str(folder),
                *resume,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent(),
            start_new_session=True,
        )
    tail = (folder / "train.log").read_text().strip().splitlines()[-3:]
    return name, proc.returncode, "\n".join(tail)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the variant receive SIGTERM when the sweep dies, even of SIGKILL, which no
    handler sees (Linux ``prctl(PR_SET_PDEATHSIG)``); the variant then stops like on ``kill`` and resumes on
    the next run. None elsewhere. prctl is looked up here, so that the child, forked from a thread, only
    calls it. (The signal follows the death of the forking thread: a pool thread, alive while its variant runs.)"""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util
    import signal

    prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before prctl: nobody is left to send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def signal_variants(signum: int) -> None:
    """Send ``signum`` to this process's children, the running variants: a SIGTERM or SIGINT sent to the sweep
    (``kill PID``, Ctrl-C) stops them too, instead of the sweep waiting for them to finish (Linux /proc). The
    variants run in sessions of their own, so a Ctrl-C reaches them once, through the sweep."""
    import contextlib

    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:  # "pid (name) state ppid ..."
                os.kill(int(stat.parent.name), signum)


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    *,
    dataset: str | Path | None = None,
    parallel: int | str | None = None,
    shard: Shard | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the unfinished variants (of ``shard``), then (unsharded) write the leaderboard."""
    cfg, sweep_file = load_sweep(sweep_file)
    out = Path(out)
    configs = resolve_variants(cfg, sweep_file, dataset)
    for name, config in configs.items():  # before any variant starts
        try:
            check_dataset_folder(config["data"]["dataset"])
        except LandcoverError as exc:
            raise type(exc)(f"variant {name}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    plan = out / "sweep.json"
    record = {"sweep": yaml.safe_load(sweep_file.read_text()), "variants": configs}
    if plan.exists() and json.loads(plan.read_text())["variants"] != configs:
        raise OutputExistsError(f"{out} holds a sweep with other variants; choose another --out")
    if not plan.exists():
        write_text_atomic(plan, json.dumps(record, indent=2) + "\n")
    names = shard_items(list(configs), shard)
    todo = [n for n in names if not (out / "variants" / n / "metrics.json").exists()]
    for n in sorted(set(names) - set(todo)):
        say(f"{n}: finished before, skipped")
    gpus = _gpu_count(configs, todo)
    wanted = parallel or cfg.parallel
    size = max(1, min(len(todo) or 1, (gpus or _cpus()) if wanted == "auto" else int(wanted)))
    threads = max(1, _cpus() // size)
    free: queue.Queue[str] = queue.Queue()
    for gpu in _visible_gpus(gpus):
        free.put(gpu)

    def job(name: str) -> tuple[str, int, str]:
        gpu = free.get() if gpus else None  # a variant holds one GPU while it runs
        try:
            return _run_variant(name, out / "variants" / name, configs[name], threads, gpu)
        finally:
            if gpu is not None:
                free.put(gpu)

    failed = []
    with ThreadPoolExecutor(max_workers=size) as pool:
        for name, code, tail in pool.map(job, todo):
            say(f"{name}: {'done' if code == 0 else f'FAILED (exit {code})'}")
            if code != 0:
                failed.append(f"{name}: {tail}")
    if failed:
        raise TrainingError(
            "variants failed; the ends of their logs follow (whole logs: OUT/variants/<name>/"
            "train.log); fix the cause and run the sweep again to retry them:\n" + "\n".join(failed)
        )
    if shard is not None and shard[1] > 1:
        return {"shard": list(shard), "variants": names}
    return leaderboard(out, keep=cfg.keep, dataset=dataset)


def _visible_gpus(count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each of this process's ``count`` GPUs.

    GPU i of this process is the i-th entry of its own ``CUDA_VISIBLE_DEVICES`` (a job allocated
    GPUs 3,5 gives its variants 3 and 5), or i when that variable is unset.
    """
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return [str(i) for i in range(count)]
    return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()][:count]


def _gpu_count(configs: dict[str, dict], todo: list[str]) -> int:
    if not any(configs[n]["trainer"]["accelerator"] in ("gpu", "cuda", "auto") for n in todo):
        return 0
    import torch

    return torch.cuda.device_count()
