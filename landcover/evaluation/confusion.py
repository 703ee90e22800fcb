"""A streaming confusion matrix and the one definition of the scores computed from it.

Validation in training (:mod:`landcover.training.task`), the re-evaluation of checkpoints, ``landcover
evaluate`` and the demo all score with :func:`scores_from_confusion`, so a validation mIoU and an
evaluate mIoU mean the same thing: macro means over the classes present in the reference or the
prediction. The matrix has reference classes in rows and predicted classes in columns, accumulated in
int64 with ``np.bincount``. numpy only: no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from landcover.io.aoi import AOI, AOIMask, aoi_window, no_overlap, sub_grid
from landcover.io.grid import Grid
from landcover.nomenclature import IGNORE

WINDOW_SIZE = 1024
Reader = Callable[[Window], np.ndarray]


# --- streaming confusion ---------------------------------------------------------------------


@dataclass
class Confusion:
    """A (reference x prediction) confusion matrix, pixel counts and optional per-tile scores and
    counts (``tiles["counts"]``: true positives, reference and predicted pixels per class, row-major tiles)."""

    matrix: np.ndarray  # (K, K) int64
    pixels: dict[str, int]
    tiles: dict[str, np.ndarray] | None = None
    tile_size: int | None = None


def tile_scores(tp: np.ndarray, ref: np.ndarray, pred: np.ndarray, labelled: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of a row of tiles from additive per-tile, per-class counts (n_tiles, K)."""
    union = ref + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        n = ref.sum(1)
        present = union > 0
        miou = np.where(present.any(1), np.nansum(iou, 1) / np.maximum(present.sum(1), 1), np.nan)
        dom = ref.argmax(1)
        rows = np.arange(len(ref))
        return {
            "evaluated_pixels": n,
            "labelled_pixels": labelled,
            "accuracy": np.where(n > 0, tp.sum(1) / np.maximum(n, 1), np.nan),
            "miou": miou,
            "dominant_id": np.where(n > 0, dom, -1),
            "dominant_share": np.where(n > 0, ref[rows, dom] / np.maximum(n, 1), np.nan),
            "dominant_iou": np.where(n > 0, iou[rows, dom], np.nan),
            "predicted_id": np.where(n > 0, pred.argmax(1), -1),
            "iou": iou.astype(np.float32),
            "counts": np.stack([tp, ref, pred], axis=1),  # (n_tiles, 3, K) int64: the bootstrap's units
        }


def confusion_matrix_streaming(
    read_prediction: Reader,
    read_labels: Reader,
    grid: Grid,
    num_classes: int,
    *,
    window_size: int = WINDOW_SIZE,
    tile_size: int | None = None,
    progress=None,
) -> Confusion:
    """Confusion matrix of two class maps on ``grid``, window by window, each pixel once.

    The readers return uint8 class ids (< ``num_classes``, 255 = ignore) for a window. With
    ``tile_size``, per-tile scores are kept for tiles of that many pixels (rows of tiles are
    finished and summarised as the windows pass, so memory stays bounded).
    """
    k = num_classes
    cm = np.zeros(k * k, dtype=np.int64)
    no_pred = no_label = neither = 0
    ntc = -(-grid.width // tile_size) if tile_size else 0
    pending: dict[int, list[np.ndarray]] = {}
    done_rows: dict[int, dict[str, np.ndarray]] = {}
    windows = list(grid.windows(window_size))
    for done, window in enumerate(windows, 1):
        pred, ref = read_prediction(window), read_labels(window)
        miss_p, miss_r = pred == IGNORE, ref == IGNORE
        valid = ~(miss_p | miss_r)
        no_pred += int(miss_p.sum())
        no_label += int(miss_r.sum())
        neither += int((miss_p & miss_r).sum())
        flat = ref[valid].astype(np.int64) * k + pred[valid]
        cm += np.bincount(flat, minlength=k * k)
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        if tile_size:
            t_lo, t_hi = r0 // tile_size, (r0 + h - 1) // tile_size
            n_local = (t_hi - t_lo + 1) * ntc
            tid = (np.arange(r0, r0 + h) // tile_size - t_lo)[:, None] * ntc + (np.arange(c0, c0 + w) // tile_size)[
                None, :
            ]
            v_tid, v_ref, v_pred = tid[valid] * k, ref[valid], pred[valid]
            hit = v_ref == v_pred
            counts = [
                np.bincount(ids, minlength=n_local * k).reshape(-1, ntc, k)
                for ids in (v_tid[hit] + v_ref[hit], v_tid + v_ref, v_tid + v_pred)
            ]
            labelled = np.bincount(tid[~miss_r], minlength=n_local).reshape(-1, ntc)
            for i, tr in enumerate(range(t_lo, t_hi + 1)):
                acc = pending.setdefault(
                    tr, [np.zeros((ntc, k), np.int64) for _ in range(3)] + [np.zeros(ntc, np.int64)]
                )
                for a, c in zip(acc, [*(c[i] for c in counts), labelled[i]], strict=True):
                    a += c
            if c0 + w == grid.width:  # end of a band of windows: finish the tile rows it completes
                for tr in [tr for tr in pending if min((tr + 1) * tile_size, grid.height) <= r0 + h]:
                    done_rows[tr] = tile_scores(*pending.pop(tr))
        if progress:
            progress(done, len(windows))
    total = grid.width * grid.height
    pixels = {
        "total": total,
        "evaluated": int(cm.sum()),
        "no_prediction": no_pred,
        "no_label": no_label,
        "neither": neither,
    }
    tiles = None
    if tile_size:
        rows = [done_rows[tr] for tr in sorted(done_rows)]
        tiles = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]} if rows else {}
    return Confusion(cm.reshape(k, k), pixels, tiles, tile_size)


# --- scores ----------------------------------------------------------------------------------


def ratio_or_none(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def scores_from_confusion(
    cm: np.ndarray, pixel_area_m2: float | None = None, class_names=None, *, class_codes=None
) -> dict:
    """IoU, mIoU, micro IoU, frequency-weighted IoU, overall accuracy, Cohen's kappa,
    precision/recall/F1, areas (ha) from a (reference x prediction) confusion matrix.

    Macro means are over the classes present in the reference or the prediction; an undefined
    precision (class never predicted) or recall counts as 0 in them. ``miou_reference`` is the mean
    IoU over the classes present in the reference only. Undefined values are None.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    ref, pred = cm.sum(1), cm.sum(0)
    fp, fn = pred - tp, ref - tp
    union = tp + fp + fn
    n = int(cm.sum())
    present = union > 0
    iou = np.divide(tp, union, out=np.zeros(len(tp)), where=present)
    prec = np.divide(tp, pred, out=np.zeros(len(tp)), where=pred > 0)
    rec = np.divide(tp, ref, out=np.zeros(len(tp)), where=ref > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(tp)), where=present)
    po = tp.sum() / n if n else None
    pe = float((ref.astype(np.float64) * pred.astype(np.float64)).sum() / (float(n) * n)) if n else None
    kappa = (po - pe) / (1 - pe) if po is not None and pe is not None and pe < 1 else None
    ha = pixel_area_m2 / 10_000 if pixel_area_m2 else None
    codes = list(class_codes) if class_codes is not None else [None] * len(tp)
    class_names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    per_class = [
        {
            "id": i,
            "code": codes[i],
            "name": class_names[i],
            "iou": float(iou[i]) if present[i] else None,
            "precision": ratio_or_none(tp[i], pred[i]),
            "recall": ratio_or_none(tp[i], ref[i]),
            "f1": float(f1[i]) if present[i] else None,
            "tp": int(tp[i]),
            "fp": int(fp[i]),
            "fn": int(fn[i]),
            "reference_pixels": int(ref[i]),
            "predicted_pixels": int(pred[i]),
            "reference_area_ha": float(ref[i] * ha) if ha else None,
            "predicted_area_ha": float(pred[i] * ha) if ha else None,
        }
        for i in range(len(tp))
    ]

    def macro(values: np.ndarray) -> float | None:
        return float(values[present].mean()) if present.any() else None

    return {
        "pixels_evaluated": n,
        "area_evaluated_ha": n * ha if ha else None,
        "overall_accuracy": float(po) if po is not None else None,
        "kappa": kappa,
        "miou": macro(iou),
        "miou_reference": float(iou[ref > 0].mean()) if (ref > 0).any() else None,
        "iou_micro": ratio_or_none(tp.sum(), union.sum()),
        "fwiou": float((ref / n * iou).sum()) if n else None,
        "macro_precision": macro(prec),
        "macro_recall": macro(rec),
        "macro_f1": macro(f1),
        "classes_present": int(present.sum()),
        "classes_in_reference": int((ref > 0).sum()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def pixel_area_m2(grid: Grid) -> float | None:
    """Area of one pixel in m² from the transform (None for geographic CRSs)."""
    if grid.crs is None or grid.crs.is_geographic:
        return None
    try:
        factor = float(grid.crs.linear_units_factor[1])
    except Exception:  # CRS without linear units
        return None
    t = grid.transform
    return abs(t.a * t.e - t.b * t.d) * factor**2


def clip_to_aoi(
    grid: Grid, read_pred: Reader, read_ref: Reader, aoi: AOI | None, name: str
) -> tuple[Grid, Reader, Reader]:
    """The grid to score (the map's, or its window over ``aoi``) and the readers of both maps on it (255 outside
    the AOI's polygons)."""
    if aoi is None:
        return grid, read_pred, read_ref
    window = aoi_window(grid, aoi)
    if window is None:
        raise no_overlap(aoi, [(name, grid)])
    sub = sub_grid(grid, window)
    mask = AOIMask(aoi, sub)
    c0, r0 = int(window.col_off), int(window.row_off)

    def clipped(read: Reader) -> Reader:
        def read_window(w: Window) -> np.ndarray:
            ids = read(Window(w.col_off + c0, w.row_off + r0, w.width, w.height))
            ids[~mask.inside(w)] = IGNORE
            return ids

        return read_window

    return sub, clipped(read_pred), clipped(read_ref)
