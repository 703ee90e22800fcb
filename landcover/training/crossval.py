"""Spatial k-fold cross-validation: one ordinary training run per fold, scored on that fold's test blocks.

For a small dataset one test block is too few to judge a model on. :func:`cross_validate` makes, for each
fold k of K, a dataset folder ``OUT/fold-k/dataset`` that shares the ingested scenes (a symbolic link:
nothing is copied or re-read) and is re-split with ``split.folds = K, split.fold = k`` (every block is
tested in exactly one fold; see :mod:`landcover.dataset.splits`), trains the config into
``OUT/fold-k/run`` (a finished fold is kept; an interrupted one continues, as ``--resume auto``), scores its
best checkpoint once on the fold's test split (``test_metrics.json``, with intervals and
``test_counts.npz``) and writes ``OUT/crossval.json``: every fold's scores and their mean and standard
deviation across folds.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from landcover.dataset.ingest import finalize
from landcover.dataset.settings import IngestConfig, read_settings
from landcover.errors import ConfigError
from landcover.io.outputs import write_text_atomic
from landcover.training.config import TrainConfig

SUMMARISED = ("test/miou", "test/miou_reference", "test/accuracy", "test/map_macro_present", "test/f1_macro_present")


def fold_dataset(dataset: Path, folder: Path, folds: int, fold: int) -> Path:
    """``folder``: the dataset's scenes (linked) re-split for fold ``fold`` of ``folds``."""
    settings = IngestConfig.model_validate(read_settings(dataset)["config"])
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "scenes"
    if not link.exists():
        link.symlink_to((dataset / "scenes").resolve(), target_is_directory=True)
    shutil.copy2(dataset / "ingest_settings.json", folder / "ingest_settings.json")
    finalize(folder, split=settings.split.model_copy(update={"folds": folds, "fold": fold}))
    return folder


def cross_validate(cfg: TrainConfig, out: str | Path, folds: int) -> dict[str, Any]:
    """Train ``cfg`` on each of ``folds`` spatial folds of its dataset; return (and write) the summary."""
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.scoring import evaluate_checkpoint
    from landcover.training.train import train

    if folds < 3:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 3 folds (test, val and train blocks)")
    if cfg.data.dataset is None:
        raise ConfigError("no dataset: pass --dataset DIR (a folder made by landcover ingest) or set data.dataset")
    out, rows = Path(out), []
    for k in range(folds):
        dataset = fold_dataset(Path(cfg.data.dataset), out / f"fold-{k}" / "dataset", folds, k)
        fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})
        run = out / f"fold-{k}" / "run"
        if not (run / "metrics.json").exists():
            train(fold_cfg, run, resume="auto")
        done = run / "test_metrics.json"
        if not done.exists():
            data = LandcoverDataModule(fold_cfg.data, task=fold_cfg.model.task, seed=fold_cfg.trainer.seed)
            scores = evaluate_checkpoint(
                run / "checkpoints" / "best.ckpt", data, split="test", counts_path=run / "test_counts.npz"
            )
            write_text_atomic(done, json.dumps(scores, indent=2, default=str) + "\n")
        scores = json.loads(done.read_text())
        rows.append({"fold": k, **{key: scores[key] for key in SUMMARISED if key in scores}})
    summary = {
        "folds": folds,
        "per_fold": rows,
        "mean": {key: _stat(rows, key, statistics.mean) for key in SUMMARISED if key in rows[0]},
        "sd": {key: _stat(rows, key, statistics.stdev) for key in SUMMARISED if key in rows[0]},
    }
    write_text_atomic(out / "crossval.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _stat(rows: list[dict[str, Any]], key: str, fn: Any) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
    return float(fn(values)) if len(values) > 1 else None


__all__ = ["cross_validate", "fold_dataset"]
