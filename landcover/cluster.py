"""Cluster batch runs: scene lists, shards of them, and the SLURM checks training needs.

A batch of scenes is split into ``N`` shards by position: shard ``I`` (0-based) takes the scenes at
positions ``I, I + N, I + 2N, ...`` of the list sorted by name, so every scene belongs to exactly
one shard whatever order the list was written in. Inside a SLURM job array the shard defaults to
the array task: ``I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``, ``N = SLURM_ARRAY_TASK_COUNT``.

Outputs of ``ingest`` and ``predict`` are written to temporary names and renamed when complete, and
finished scenes are skipped, so a re-submitted or requeued array task completes the remaining work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from landcover.errors import ConfigError

T = TypeVar("T")
Shard = tuple[int, int]


def read_list(path: str | Path) -> list[Path]:
    """The inputs of a list file: one path per line, ``#`` comments, paths relative to the file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()  # paths as the OS gives them
    except OSError as exc:
        raise ConfigError(f"cannot read --from-list {path} ({exc}); check the path") from exc
    items = []
    for line in (raw.split("#", 1)[0].strip() for raw in lines):
        if line:
            item = Path(line).expanduser()
            items.append(item if item.is_absolute() else path.parent / item)
    if not items:
        raise ConfigError(f"--from-list {path} names no input; write one path per line")
    return items


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``; without ``text``, the SLURM array task, else None."""
    env = os.environ if env is None else env
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
            return None
        try:
            task, first = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
        except ValueError as exc:
            raise ConfigError(
                f"cannot read the SLURM array task from the environment ({exc}); pass --shard I/N"
            ) from exc
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
        index = (task - first) // step
        if not 0 <= index < count:
            raise ConfigError(
                f"SLURM array task {task} (min {first}, step {step}) is not one of {count} tasks; "
                "submit a contiguous --array=0-(N-1), or pass --shard I/N"
            )
        return index, count
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: write I/N, e.g. 0/4 for the first of 4 shards (I from 0 to N-1)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: I must be between 0 and N-1 and N at least 1, e.g. 0/4 ... 3/4")
    return index, count


def shard_items(items: Sequence[T], shard: Shard | None, key: Callable[[T], str] = str) -> list[T]:
    """The items of ``shard`` (all of them without one), in their original order."""
    if shard is None or shard[1] == 1:
        return list(items)
    index, count = shard
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    mine = {i for position, i in enumerate(order) if position % count == index}
    return [item for i, item in enumerate(items) if i in mine]


def slurm_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank under ``srun`` (SLURM_PROCID), 0 outside SLURM."""
    env = os.environ if env is None else env
    try:
        return int(env.get("SLURM_PROCID", "0"))
    except ValueError:
        return 0


def check_slurm_training(devices: int | str, num_nodes: int, env: Mapping[str, str] | None = None) -> None:
    """Stop with a clear message where Lightning would hang or fail under ``srun``.

    Lightning starts one process per device itself unless SLURM started them: under ``srun`` the
    tasks per node must equal the devices per node and the job's nodes ``trainer.num_nodes``.
    """
    env = os.environ if env is None else env
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not launched by srun/sbatch as a batch job (Lightning then launches processes itself)
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    per_node_text = env.get("SLURM_NTASKS_PER_NODE")
    if ntasks > 1 and per_node_text is None:
        raise ConfigError(
            f"the job has --ntasks={ntasks} without --ntasks-per-node: set "
            "#SBATCH --ntasks-per-node=<GPUs per node> (and --nodes) instead of --ntasks"
        )
    if per_node_text is not None:
        per_node = int(re.match(r"\d+", per_node_text).group(0))  # type: ignore[union-attr]  # "2(x3)" forms
        if isinstance(devices, int) and devices != per_node:
            raise ConfigError(
                f"trainer.devices={devices} but SLURM starts {per_node} tasks per node "
                f"(--ntasks-per-node): they must be equal; pass --devices {per_node} or change "
                "the job's --ntasks-per-node"
            )
        if devices == "auto" and per_node > 1:
            raise ConfigError(
                f"SLURM starts {per_node} tasks per node but trainer.devices is 'auto': pass "
                f"--devices {per_node} so that each task takes one device"
            )
    nodes = int(env.get("SLURM_NNODES", "1"))
    if nodes != num_nodes:
        raise ConfigError(
            f"the job runs on {nodes} node(s) but trainer.num_nodes={num_nodes}: pass --set trainer.num_nodes={nodes}"
        )
