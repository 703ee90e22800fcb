"""Accuracy of a land-cover map against CORINE (or any class map): ``landcover evaluate``.

Scores are computed on the *stitched* map, each pixel once, streaming over windows so any scene
fits in memory (overlapping patches would double-count pixels, torchgeo #1245). Pixels that are
255 (no data) in either map are ignored. The confusion matrix has reference classes in rows and
predicted classes in columns; it is accumulated in int64 with ``np.bincount``. numpy only: no torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from landcover import __version__
from landcover.errors import ConfigError, DatasetError, NoOverlapError
from landcover.io import GDAL_ENV, Grid, open_raster
from landcover.labels import RASTER_SUFFIXES, open_label_source
from landcover.report import (
    check_report_dir,
    plot_confusion,
    plot_iou,
    report_dir,
    write_markdown,
    write_tiles,
)
from landcover.tables import IGNORE, Nomenclature, nomenclature

WINDOW_SIZE = 1024
Reader = Callable[[Window], np.ndarray]


# --- reading class maps ----------------------------------------------------------------------


def _recode_lut(src: Nomenclature, dst: Nomenclature, path: Path) -> np.ndarray | None:
    """uint8 lookup table class id of ``src`` -> class id of ``dst`` (None when they are the same)."""
    if src.name == dst.name:
        return None
    if src.name != "level3":
        raise DatasetError(
            f"{path} is a {src.name} class map but the evaluation is in {dst.name}; only level3 maps can be "
            f"recoded to other nomenclatures: pass --nomenclature {src.name}, or the CORINE source as labels"
        )
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[: src.num_classes] = dst.encode(np.array([int(c) for c in src.codes], dtype=np.uint16))
    return lut


class ClassMapReader:
    """Window reader of a one-band class map (tags of io.style_class_map), returning class ids of
    the evaluation's nomenclature (255 = no data); a level3 map is recoded to coarser ones."""

    def __init__(self, path: str | Path, nom: Nomenclature | None, role: str) -> None:
        self.path, self.role = Path(path), role
        self.src = open_raster(self.path)
        self.grid = Grid(self.src.crs, self.src.transform, self.src.width, self.src.height)
        tags = self.src.tags()
        self.tagged = tags.get("NOMENCLATURE")
        try:
            if self.src.count != 1 or np.dtype(self.src.dtypes[0]).kind not in "ui":
                raise DatasetError(
                    f"{self.path} is not a class map ({self.src.count} band(s) of {self.src.dtypes[0]}); the "
                    f"{role} must be one band of integer class ids (255 = no data)"
                )
            names = json.loads(tags["CLASS_NAMES"]) if "CLASS_NAMES" in tags else None
            if self.tagged and names is not None and names != list(nomenclature(self.tagged).class_names):
                raise DatasetError(
                    f"{self.path}: CLASS_NAMES do not match the {self.tagged} nomenclature of this landcover "
                    "version; write the map again with this version (landcover labels / predict)"
                )
            if nom is not None:
                self.set_nomenclature(nom)
        except Exception:
            self.close()
            raise

    def set_nomenclature(self, nom: Nomenclature) -> None:
        self.nom, self.source_nom = nom, nomenclature(self.tagged) if self.tagged else nom
        self.lut = _recode_lut(self.source_nom, nom, self.path)

    def read(self, window: Window) -> np.ndarray:
        ids = self.src.read(1, window=window)
        if self.src.nodata is not None and self.src.nodata != IGNORE:
            ids = np.where(ids == self.src.nodata, IGNORE, ids)
        k = self.source_nom.num_classes
        bad = (ids != IGNORE) & ((ids < 0) | (ids >= k))
        if bad.any():
            values = ", ".join(map(str, np.unique(ids[bad])[:20].tolist()))
            raise DatasetError(
                f"{self.role} {self.path} holds class id(s) {values} but the {self.source_nom.name} "
                f"nomenclature has {k} classes (0..{k - 1}, 255 = no data); the map was made with another "
                "class list: pass the matching --nomenclature, or fix its NOMENCLATURE tag"
            )
        ids = ids.astype(np.uint8)
        return self.lut[ids] if self.lut is not None else ids

    def close(self) -> None:
        self.src.close()


def open_reference(labels: Path, grid: Grid, nom: Nomenclature, **source_options) -> tuple[Reader, str, Callable]:
    """(reader, description, close) for the labels: a tagged class map on ``grid``, or a CORINE source."""
    if labels.suffix.lower() in RASTER_SUFFIXES and labels.exists():
        reader = ClassMapReader(labels, None, "labels")
        if reader.tagged is None:  # a CORINE raster: codes or indices
            reader.close()
        elif not same_grid(reader.grid, grid):
            reader.close()
            raise DatasetError(
                f"the labels class map {labels} is on another grid than the prediction "
                f"(labels {reader.grid.to_dict()}, prediction {grid.to_dict()}); pass the CORINE source "
                "instead (it is warped onto the prediction's grid), or make labels on the prediction's "
                "grid with `landcover labels SOURCE --like PREDICTION`"
            )
        else:
            try:
                reader.set_nomenclature(nom)
            except Exception:
                reader.close()
                raise
            return reader.read, f"{labels.name} (class map, {reader.source_nom.name})", reader.close
    source = open_label_source(labels, grid, **source_options)

    def read(window: Window) -> np.ndarray:
        return nom.encode(source.codes(grid, window), where=source.description)

    return read, source.description, lambda: None


def same_grid(a: Grid, b: Grid) -> bool:
    return (a.crs == b.crs and (a.width, a.height) == (b.width, b.height)
            and a.transform.almost_equals(b.transform))


# --- streaming confusion ---------------------------------------------------------------------


@dataclass
class Confusion:
    """A (reference x prediction) confusion matrix, pixel counts and optional per-tile scores."""

    matrix: np.ndarray  # (K, K) int64
    pixels: dict[str, int]
    tiles: dict[str, np.ndarray] | None = None
    tile_size: int | None = None


def _tile_scores(tp: np.ndarray, ref: np.ndarray, pred: np.ndarray, labelled: np.ndarray) -> dict[str, np.ndarray]:
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
            "evaluated_pixels": n, "labelled_pixels": labelled,
            "accuracy": np.where(n > 0, tp.sum(1) / np.maximum(n, 1), np.nan), "miou": miou,
            "dominant_id": np.where(n > 0, dom, -1), "dominant_share": np.where(n > 0, ref[rows, dom] / np.maximum(n, 1), np.nan),
            "dominant_iou": np.where(n > 0, iou[rows, dom], np.nan),
            "predicted_id": np.where(n > 0, pred.argmax(1), -1), "iou": iou.astype(np.float32),
        }


def confusion_matrix_streaming(
    read_prediction: Reader, read_labels: Reader, grid: Grid, num_classes: int, *,
    window_size: int = WINDOW_SIZE, tile_size: int | None = None, progress=None,
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
            tid = ((np.arange(r0, r0 + h) // tile_size - t_lo)[:, None] * ntc
                   + (np.arange(c0, c0 + w) // tile_size)[None, :])
            v_tid, v_ref, v_pred = tid[valid] * k, ref[valid], pred[valid]
            hit = v_ref == v_pred
            counts = [np.bincount(ids, minlength=n_local * k).reshape(-1, ntc, k)
                      for ids in (v_tid[hit] + v_ref[hit], v_tid + v_ref, v_tid + v_pred)]
            labelled = np.bincount(tid[~miss_r], minlength=n_local).reshape(-1, ntc)
            for i, tr in enumerate(range(t_lo, t_hi + 1)):
                acc = pending.setdefault(tr, [np.zeros((ntc, k), np.int64) for _ in range(3)] + [np.zeros(ntc, np.int64)])
                for a, c in zip(acc, [*(c[i] for c in counts), labelled[i]], strict=True):
                    a += c
            if c0 + w == grid.width:  # end of a band of windows: finish the tile rows it completes
                for tr in [tr for tr in pending if min((tr + 1) * tile_size, grid.height) <= r0 + h]:
                    done_rows[tr] = _tile_scores(*pending.pop(tr))
        if progress:
            progress(done, len(windows))
    total = grid.width * grid.height
    pixels = {"total": total, "evaluated": int(cm.sum()), "no_prediction": no_pred, "no_label": no_label,
              "neither": neither}
    tiles = None
    if tile_size:
        rows = [done_rows[tr] for tr in sorted(done_rows)]
        tiles = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]} if rows else {}
    return Confusion(cm.reshape(k, k), pixels, tiles, tile_size)


# --- scores ----------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def scores_from_confusion(cm: np.ndarray, pixel_area_m2: float | None, class_names, *,
                          class_codes=None) -> dict:
    """IoU, mIoU, frequency-weighted IoU, overall accuracy, Cohen's kappa, precision/recall/F1,
    areas (ha) from a (reference x prediction) confusion matrix.

    Macro means are over the classes present in the reference or the prediction; an undefined
    precision (class never predicted) or recall counts as 0 in them. Undefined values are None.
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
    per_class = [
        {"id": i, "code": codes[i], "name": class_names[i],
         "iou": float(iou[i]) if present[i] else None, "precision": _ratio(tp[i], pred[i]),
         "recall": _ratio(tp[i], ref[i]), "f1": float(f1[i]) if present[i] else None,
         "tp": int(tp[i]), "fp": int(fp[i]), "fn": int(fn[i]),
         "reference_pixels": int(ref[i]), "predicted_pixels": int(pred[i]),
         "reference_area_ha": float(ref[i] * ha) if ha else None,
         "predicted_area_ha": float(pred[i] * ha) if ha else None}
        for i in range(len(tp))
    ]

    def macro(values: np.ndarray) -> float | None:
        return float(values[present].mean()) if present.any() else None

    return {
        "pixels_evaluated": n, "area_evaluated_ha": n * ha if ha else None,
        "overall_accuracy": float(po) if po is not None else None, "kappa": kappa,
        "miou": macro(iou), "fwiou": float((ref / n * iou).sum()) if n else None,
        "macro_precision": macro(prec), "macro_recall": macro(rec), "macro_f1": macro(f1),
        "classes_present": int(present.sum()), "per_class": per_class, "confusion_matrix": cm.tolist(),
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


# --- the evaluate command --------------------------------------------------------------------


def evaluate_maps(
    prediction: str | Path, labels: str | Path, out_dir: str | Path, *,
    nomenclature_name: str | None = None, code_column: str | None = None, tile_size: int = 256,
    overwrite: bool = False, progress=None, raster_values: str = "auto", all_touched: bool = False,
    window_size: int = WINDOW_SIZE,
) -> dict:
    """Score a class map against CORINE labels (or a class map on the same grid); write a report.

    ``REPORT_DIR`` gets metrics.json, report.md, confusion_matrix.png, iou_per_class.png and
    tiles_iou.gpkg. Returns the content of metrics.json. ``progress``: optional ``(done, total)``.
    """
    prediction, labels, out_dir = Path(prediction), Path(labels), Path(out_dir)
    if not isinstance(tile_size, int) or tile_size < 1 or window_size < 1:
        raise ConfigError(f"--tile-size must be a positive number of pixels, not {tile_size!r}")
    check_report_dir(out_dir, overwrite, (prediction, labels))
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(**GDAL_ENV))
        pred = ClassMapReader(prediction, None, "prediction")
        stack.callback(pred.close)
        name = nomenclature_name or pred.tagged
        if name is None:
            raise DatasetError(f"{prediction} has no NOMENCLATURE tag; pass --nomenclature (level3, level2, level1, ben19)")
        nom = nomenclature(name)
        pred.set_nomenclature(nom)
        read_ref, description, close = open_reference(
            labels, pred.grid, nom, code_column=code_column, all_touched=all_touched, raster_values=raster_values)
        stack.callback(close)
        conf = confusion_matrix_streaming(pred.read, read_ref, pred.grid, nom.num_classes,
                                          window_size=window_size, tile_size=tile_size, progress=progress)
    grid = pred.grid
    if conf.pixels["evaluated"] == 0:
        raise NoOverlapError(
            f"no pixel of {prediction} has both a prediction and a label from {labels} "
            f"({conf.pixels['no_prediction']:,} px without prediction, {conf.pixels['no_label']:,} without label); "
            "use labels that cover the map"
        )
    area = pixel_area_m2(grid)
    scores = scores_from_confusion(conf.matrix, area, nom.class_names, class_codes=nom.codes)
    metrics: dict[str, Any] = {
        "software": {"landcover": __version__, "numpy": np.__version__, "rasterio": rasterio.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": {"prediction": prediction.name, "labels": labels.name,  # names: no path of the user's machine
                   "labels_description": description, "prediction_nomenclature": pred.source_nom.name,
                   "grid": grid.to_dict()},
        "options": {"nomenclature": nom.name, "code_column": code_column, "tile_size": tile_size,
                    "window_size": window_size, "raster_values": raster_values, "all_touched": all_touched,
                    "overwrite": overwrite},
        "nomenclature": nom.to_dict(), "pixel_area_m2": area, "pixels": conf.pixels, "scores": scores,
        "tiles": {"file": "tiles_iou.gpkg", "layer": "tiles", "tile_size": tile_size, "count": 0},
        "files": ["metrics.json", "report.md", "confusion_matrix.png", "iou_per_class.png", "tiles_iou.gpkg"],
    }
    with report_dir(out_dir, overwrite) as tmp:
        metrics["tiles"]["count"] = write_tiles(conf, grid, nom, tmp / "tiles_iou.gpkg")
        plot_confusion(conf.matrix, nom, tmp / "confusion_matrix.png")
        plot_iou(scores, nom, tmp / "iou_per_class.png")
        write_markdown(metrics, tmp / "report.md")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


__all__ = ["ClassMapReader", "Confusion", "confusion_matrix_streaming", "evaluate_maps", "scores_from_confusion"]
