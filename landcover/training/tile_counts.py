"""Per-tile class counts of a checkpoint's evaluation, for block-bootstrap intervals of its scores.

:class:`TileCounts` is a Lightning callback for the re-evaluation of a checkpoint
(:func:`landcover.training.train.evaluate_checkpoint`): a forward hook on the task keeps the logits
of each evaluation step, and at the end of the batch the callback turns them and the batch's masks
into per-tile ``(true positives, reference pixels, predicted pixels)`` counts (pixels labelled 255
are ignored, as in the task's confusion matrix); :class:`PatchOutputs` keeps a classification task's
logits and targets for :func:`present_class_scores` (macro AP/F1 over the classes present in the split).
The task's step methods are not touched.
:func:`split_intervals` bootstraps them over the split blocks of the dataset
(:func:`landcover.dataset.splits.split_blocks`) and saves them (``{split}_counts.npz``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from landcover.dataset.splits import split_blocks
from landcover.evaluation.bootstrap import bootstrap_scores, save_counts
from landcover.nomenclature import IGNORE


def batch_counts(logits: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (N, 3, K) counts of each sample of a batch: argmax of the logits vs. the mask."""
    n, k = len(mask), num_classes
    pred = logits.argmax(1)
    valid = mask != IGNORE
    sample = torch.arange(n, device=mask.device).view(n, *([1] * (mask.dim() - 1))).expand_as(mask)
    ref_ids = (sample * k + mask.long())[valid]
    pred_ids = (sample * k + pred)[valid]
    hit = (pred == mask)[valid]
    rows = [torch.bincount(ids, minlength=n * k) for ids in (ref_ids[hit], ref_ids, pred_ids)]
    return torch.stack(rows).view(3, n, k).permute(1, 0, 2).cpu()


class _Collect(pl.Callback):
    """Keeps the logits of each evaluation step (a forward hook on the task) for :meth:`_batch`."""

    def __init__(self) -> None:
        self._logits: torch.Tensor | None = None
        self._hook: Any = None

    def _start(self, pl_module: pl.LightningModule) -> None:
        def keep(module: Any, args: Any, output: torch.Tensor) -> None:
            self._logits = output.detach()

        self._hook = pl_module.register_forward_hook(keep)

    def _batch(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        raise NotImplementedError

    def _end_batch(self, batch: dict[str, Any]) -> None:
        if self._logits is not None:
            self._batch(batch, self._logits)
            self._logits = None

    def _end(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self._end_batch(batch)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
        self._end_batch(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end()


class TileCounts(_Collect):
    """Collects the tile ids and per-tile counts of the validation or test loop it is attached to."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.tile_ids: list[str] = []
        self.counts: list[torch.Tensor] = []

    def _batch(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        self.counts.append(batch_counts(logits, batch["mask"], self.num_classes))
        self.tile_ids.extend(str(t) for t in batch["tile_id"])

    def array(self) -> np.ndarray:
        return torch.cat(self.counts).numpy() if self.counts else np.zeros((0, 3, self.num_classes), np.int64)


class PatchOutputs(_Collect):
    """Collects the logits and targets of a classification task's evaluation (one row per tile)."""

    def __init__(self) -> None:
        super().__init__()
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def _batch(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        self.logits.append(logits.float().cpu())
        self.labels.append(batch["label"].cpu())


def present_class_scores(
    collected: PatchOutputs, split: str, class_names: list[str], multilabel: bool, threshold: float = 0.5
) -> dict[str, Any]:
    """Macro AP (multi-label) and F1 over the classes with at least one positive in the split; the
    classes without one are listed as absent (not averaged in as 0)."""
    from torchmetrics.functional.classification import (
        multiclass_f1_score,
        multilabel_average_precision,
        multilabel_f1_score,
    )

    if not collected.logits:
        return {}
    logits, labels = torch.cat(collected.logits), torch.cat(collected.labels).long()
    k = len(class_names)
    out: dict[str, Any] = {}
    if multilabel:
        present = labels.sum(0) > 0
        probs = torch.sigmoid(logits)
        ap = multilabel_average_precision(probs, labels, k, average="none", thresholds=None)
        f1 = multilabel_f1_score(probs, labels, k, threshold=threshold, average="none")
        out[f"{split}/map_macro_present"] = float(ap[present].mean()) if present.any() else None
        out[f"{split}/ap_present"] = {n: float(v) for n, v, p in zip(class_names, ap, present, strict=True) if p}
    else:
        kept = labels != IGNORE
        present = torch.bincount(labels[kept], minlength=k) > 0
        f1 = multiclass_f1_score(logits, labels, k, average="none", ignore_index=IGNORE)
    out[f"{split}/f1_macro_present"] = float(f1[present].mean()) if present.any() else None
    out[f"{split}/classes_present"] = int(present.sum())
    out[f"{split}/absent_classes"] = [n for n, p in zip(class_names, present.tolist(), strict=True) if not p]
    return out


def split_intervals(
    collected: TileCounts,
    tiles: Any,
    scheme: dict[str, Any],
    class_names: list[str],
    counts_path: str | Path | None = None,
) -> dict[str, Any]:
    """Block-bootstrap intervals of the collected tiles (``tiles``: the split's catalog rows); the
    counts, tile ids (evaluation order) and blocks are saved to ``counts_path`` when given."""
    return counts_intervals(collected.tile_ids, collected.array(), tiles, scheme, class_names, counts_path)


def counts_intervals(
    tile_ids: list[str],
    counts: np.ndarray,
    tiles: Any,
    scheme: dict[str, Any],
    class_names: list[str],
    counts_path: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`split_intervals` of per-tile (3, K) counts of the tiles ``tile_ids`` (any model: CNN or baseline)."""
    rows = tiles.set_index("tile_id").loc[tile_ids].reset_index()
    groups = split_blocks(rows, scheme)
    if counts_path is not None:
        save_counts(counts_path, tile_ids, groups, counts)
    used = counts[:, 1].sum(1) > 0
    if not used.any():
        return {}
    boot = bootstrap_scores(counts[used], groups[used], class_names=class_names)
    return boot.to_dict() | {"blocks": (scheme or {}).get("method", "tile")}
