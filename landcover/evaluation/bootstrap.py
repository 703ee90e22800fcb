"""Confidence intervals of the map scores: a spatial block bootstrap over units (tiles, windows).

Neighbouring pixels are not independent, so pixels are never resampled: each unit (a tile) carries
additive per-class counts ``(true positives, reference pixels, predicted pixels)`` (:func:`class_counts`),
units are grouped in spatial blocks, and whole blocks are drawn with replacement. One replicate is
the sum of the counts of the drawn blocks (multinomial block weights ``(B, n_blocks) @`` block counts:
no loop over replicates), scored with the definitions of
:func:`landcover.evaluation.confusion.scores_from_confusion`:

- ``miou``: mean IoU over the classes present in the reference *or* the prediction (as everywhere);
- ``miou_reference``: mean IoU over the classes present in the reference;
- ``overall_accuracy`` and the IoU of each class.

Intervals are percentile intervals of the replicates. The Monte Carlo standard error of each bound
is estimated from the order statistics (binomial: the bound's rank varies by ``sqrt(B p (1 - p))``).
:func:`paired_difference` scores model b minus model a with the same draws for both. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landcover.errors import ConfigError, DatasetError
from landcover.nomenclature import IGNORE

MIN_BLOCKS = 5  # fewer blocks: the intervals are too optimistic (noted in the result)
CHUNK = 256  # replicates per matrix product (bounds memory for many blocks)
SCORES = ("miou", "miou_reference", "overall_accuracy")


def class_counts(ref: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (3, K): true positives, reference pixels, predicted pixels of each class over the pixels
    of one unit where both maps have a class (255 = ignore)."""
    ref, pred = np.asarray(ref), np.asarray(pred)
    if ref.shape != pred.shape:
        raise DatasetError(f"reference {ref.shape} and prediction {pred.shape} differ in shape; pass the same unit")
    valid = (ref != IGNORE) & (pred != IGNORE)
    r, p = ref[valid].astype(np.int64), pred[valid].astype(np.int64)
    if r.size and max(int(r.max()), int(p.max())) >= num_classes:
        raise DatasetError(f"class ids up to {max(int(r.max()), int(p.max()))} but num_classes is {num_classes}")
    k = num_classes
    return np.stack([np.bincount(r[r == p], minlength=k), np.bincount(r, minlength=k), np.bincount(p, minlength=k)])


def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of summed counts (..., 3, K): mIoU (either map), mIoU (reference), OA, IoU per class
    (NaN where undefined)."""
    c = np.asarray(counts, dtype=np.float64)
    tp, ref, pred = c[..., 0, :], c[..., 1, :], c[..., 2, :]
    union = ref + pred - tp
    present, in_ref = union > 0, ref > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
    n = ref.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "miou": np.where(present.any(-1), (iou * present).sum(-1) / present.sum(-1), np.nan),
            "miou_reference": np.where(in_ref.any(-1), (iou * in_ref).sum(-1) / in_ref.sum(-1), np.nan),
            "overall_accuracy": np.where(n > 0, tp.sum(-1) / n, np.nan),
            "iou": np.where(present, iou, np.nan),
        }


@dataclass(frozen=True)
class Interval:
    """A point estimate, its percentile interval and the Monte Carlo standard error of each bound."""

    estimate: float | None
    low: float | None
    high: float | None
    mc_se_low: float | None = None
    mc_se_high: float | None = None
    share_positive: float | None = None  # paired differences: share of replicates where b > a

    def to_dict(self) -> dict[str, Any]:
        d = {"estimate": self.estimate, "low": self.low, "high": self.high}
        d |= {"mc_se_low": self.mc_se_low, "mc_se_high": self.mc_se_high}
        if self.share_positive is not None:
            d["share_b_better"] = self.share_positive
        return d


@dataclass(frozen=True)
class Resampling:
    """How the intervals were made (shared by :class:`BootstrapScores` and :class:`PairedDifference`)."""

    level: float
    replicates: int
    seed: int
    unit: str  # "block" (whole blocks of units resampled) or "tile" (each unit its own block)
    n_units: int
    n_blocks: int
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "percentile interval, spatial block bootstrap (blocks drawn with replacement)",
            "level": self.level,
            "replicates": self.replicates,
            "seed": self.seed,
            "unit": self.unit,
            "n_units": self.n_units,
            "n_blocks": self.n_blocks,
            "note": self.note,
        }


@dataclass(frozen=True)
class BootstrapScores:
    resampling: Resampling
    miou: Interval
    miou_reference: Interval
    overall_accuracy: Interval
    iou: tuple[Interval, ...]  # per class
    class_names: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        names = self.class_names or tuple(str(i) for i in range(len(self.iou)))
        return self.resampling.to_dict() | {
            "miou": self.miou.to_dict(),
            "miou_reference": self.miou_reference.to_dict(),
            "overall_accuracy": self.overall_accuracy.to_dict(),
            "per_class_iou": [
                {"id": i, "name": name, **iv.to_dict()}
                for i, (name, iv) in enumerate(zip(names, self.iou, strict=True))
                if iv.estimate is not None
            ],
        }


@dataclass(frozen=True)
class PairedDifference:
    """Model b minus model a on the same units with the same draws."""

    resampling: Resampling
    miou: Interval
    miou_reference: Interval
    overall_accuracy: Interval
    same_reference: bool  # the reference counts of a and b agree in every unit

    def to_dict(self) -> dict[str, Any]:
        return self.resampling.to_dict() | {
            "difference": "b - a",
            "same_reference": self.same_reference,
            "miou": self.miou.to_dict(),
            "miou_reference": self.miou_reference.to_dict(),
            "overall_accuracy": self.overall_accuracy.to_dict(),
        }


# --- resampling ------------------------------------------------------------------------------


def _check(
    counts: np.ndarray, groups: np.ndarray | None, replicates: int, level: float
) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[1] != 3 or len(counts) == 0:
        raise DatasetError(
            f"counts must be (n_units >= 1, 3, n_classes), not {counts.shape}; use class_counts per unit"
        )
    if not isinstance(replicates, int | np.integer) or replicates < 10:
        raise ConfigError(f"replicates must be an integer >= 10, not {replicates!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be between 0 and 1 (e.g. 0.95), not {level!r}")
    if groups is None:
        return counts.astype(np.int64), np.arange(len(counts))
    groups = np.asarray(groups)
    if groups.shape != (len(counts),):
        raise DatasetError(f"groups must give one block per unit ({len(counts)}), not shape {groups.shape}")
    return counts.astype(np.int64), np.unique(groups, return_inverse=True)[1].reshape(-1)


def _block_sums(counts: np.ndarray, block: np.ndarray) -> np.ndarray:
    out = np.zeros((int(block.max()) + 1, *counts.shape[1:]), dtype=np.int64)
    np.add.at(out, block, counts)
    return out


def _replicates(blocks: list[np.ndarray], replicates: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Scores of ``replicates`` block-bootstrap resamples, the same draws for every array in ``blocks``."""
    rng = np.random.default_rng(seed)
    nb = len(blocks[0])
    flat = [b.reshape(nb, -1).astype(np.float64) for b in blocks]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in blocks]
    for start in range(0, replicates, CHUNK):
        w = rng.multinomial(nb, np.full(nb, 1 / nb), size=min(CHUNK, replicates - start)).astype(np.float64)
        for part, f, b in zip(parts, flat, blocks, strict=True):
            part.append(scores_from_counts((w @ f).reshape(-1, *b.shape[1:])))
    return [{k: np.concatenate([p[k] for p in part]) for k in part[0]} for part in parts]


def _interval(estimate: float, reps: np.ndarray, level: float, positive: bool = False) -> Interval:
    """Percentile interval of the finite replicates; MC standard error of the bounds from order statistics."""
    est = None if not np.isfinite(estimate) else float(estimate)
    x = np.sort(reps[np.isfinite(reps)])
    if est is None or len(x) == 0:
        return Interval(est, None, None)
    bounds, ses = [], []
    for p in ((1 - level) / 2, (1 + level) / 2):
        bounds.append(float(np.quantile(x, p)))
        spread = np.sqrt(len(x) * p * (1 - p))
        lo, hi = np.clip([p * len(x) - spread, p * len(x) + spread], 0, len(x) - 1).astype(int)
        ses.append(float((x[hi] - x[lo]) / 2))
    share = float((reps > 0).mean()) if positive else None
    return Interval(est, bounds[0], bounds[1], ses[0], ses[1], share)


def _resampling(n_units: int, n_blocks: int, grouped: bool, replicates: int, seed: int, level: float) -> Resampling:
    note = None
    if n_blocks < MIN_BLOCKS:
        note = (
            f"only {n_blocks} block(s) resampled (< {MIN_BLOCKS}): the intervals understate the uncertainty; "
            "evaluate on more (or smaller) blocks"
        )
    return Resampling(level, int(replicates), int(seed), "block" if grouped else "tile", n_units, n_blocks, note)


def bootstrap_scores(
    counts: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    class_names: list[str] | None = None,
) -> BootstrapScores:
    """Percentile intervals of mIoU (both definitions), OA and per-class IoU from per-unit counts
    (n_units, 3, K); ``groups``: the block of each unit (None: each unit its own block)."""
    counts, block = _check(counts, groups, replicates, level)
    blocks = _block_sums(counts, block)
    point = scores_from_counts(counts.sum(0))
    (reps,) = _replicates([blocks], replicates, seed)
    names = tuple(class_names) if class_names is not None else ()
    if names and len(names) != counts.shape[2]:
        raise ConfigError(f"{len(names)} class names for {counts.shape[2]} classes")
    iv = {k: _interval(float(point[k]), reps[k], level) for k in SCORES}
    return BootstrapScores(
        _resampling(len(counts), len(blocks), groups is not None, replicates, seed, level),
        miou=iv["miou"],
        miou_reference=iv["miou_reference"],
        overall_accuracy=iv["overall_accuracy"],
        iou=tuple(_interval(float(point["iou"][i]), reps["iou"][:, i], level) for i in range(counts.shape[2])),
        class_names=names,
    )


def paired_difference(
    counts_a: np.ndarray,
    counts_b: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    replicates: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Model b minus model a on the same units (same draws for both): estimate, interval and the share
    of replicates where b is better, for mIoU, mIoU over reference classes and OA."""
    counts_a, block = _check(counts_a, groups, replicates, level)
    counts_b, _ = _check(counts_b, groups, replicates, level)
    if counts_a.shape != counts_b.shape:
        raise DatasetError(
            f"the two models were scored on different units or classes ({counts_a.shape} vs {counts_b.shape}); "
            "compare counts of the same tiles"
        )
    pa, pb = scores_from_counts(counts_a.sum(0)), scores_from_counts(counts_b.sum(0))
    blocks_a, blocks_b = _block_sums(counts_a, block), _block_sums(counts_b, block)
    ra, rb = _replicates([blocks_a, blocks_b], replicates, seed)
    iv = {k: _interval(float(pb[k] - pa[k]), rb[k] - ra[k], level, positive=True) for k in SCORES}
    return PairedDifference(
        _resampling(len(counts_a), len(blocks_a), groups is not None, replicates, seed, level),
        miou=iv["miou"],
        miou_reference=iv["miou_reference"],
        overall_accuracy=iv["overall_accuracy"],
        same_reference=bool(np.array_equal(counts_a[:, 1], counts_b[:, 1])),
    )


# --- saved counts of training runs -----------------------------------------------------------


def save_counts(path: str | Path, tile_ids: list[str], groups: np.ndarray, counts: np.ndarray) -> None:
    """``test_counts.npz``-like file: tile ids (dataset order), block of each tile, counts (n, 3, K)."""
    np.savez_compressed(
        path, tile_ids=np.asarray(tile_ids, dtype=str), groups=np.asarray(groups, np.int64), counts=counts
    )


def load_counts(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; train with this landcover version to save per-tile counts")
    with np.load(path, allow_pickle=False) as z:
        return z["tile_ids"], z["groups"], z["counts"]


def compare_runs(
    run_a: str | Path, run_b: str | Path, *, split: str = "test", replicates: int = 2000, seed: int = 0
) -> PairedDifference:
    """Paired bootstrap of run b minus run a on the ``{split}_counts.npz`` both runs saved."""
    ids_a, groups, counts_a = load_counts(Path(run_a) / f"{split}_counts.npz")
    ids_b, _, counts_b = load_counts(Path(run_b) / f"{split}_counts.npz")
    if not np.array_equal(ids_a, ids_b):
        raise DatasetError(
            f"{run_a} and {run_b} were scored on different {split} tiles; compare runs of the same dataset and split"
        )
    return paired_difference(counts_a, counts_b, groups, replicates=replicates, seed=seed)


__all__ = [
    "BootstrapScores",
    "Interval",
    "PairedDifference",
    "bootstrap_scores",
    "class_counts",
    "compare_runs",
    "load_counts",
    "paired_difference",
    "save_counts",
    "scores_from_counts",
]
