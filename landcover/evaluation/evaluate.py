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

from landcover.errors import ConfigError, DatasetError, NoOverlapError
from landcover.evaluation.bootstrap import bootstrap_scores, paired_difference
from landcover.evaluation.confusion import (
    WINDOW_SIZE,
    Confusion,
    Reader,
    clip_to_aoi,
    confusion_matrix_streaming,
    pixel_area_m2,
    scores_from_confusion,
)
from landcover.evaluation.report import (
    check_report_dir,
    plot_confusion,
    plot_iou,
    report_dir,
    write_markdown,
    write_tiles,
)
from landcover.io.aoi import AOI
from landcover.io.grid import GDAL_ENV, Grid, open_raster
from landcover.nomenclature import IGNORE, Nomenclature, nomenclature
from landcover.sources.labels import RASTER_SUFFIXES, open_label_source
from landcover.version import __version__

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
    return a.crs == b.crs and (a.width, a.height) == (b.width, b.height) and a.transform.almost_equals(b.transform)


def _confusion(
    prediction: Path,
    labels: Path,
    nomenclature_name: str | None,
    code_column: str | None,
    tile_size: int,
    progress: Any,
    raster_values: str,
    all_touched: bool,
    window_size: int,
    aoi: AOI | None = None,
) -> tuple[ClassMapReader, Nomenclature, str, Confusion, Grid]:
    """Open the class map and the reference on its grid (its window over ``aoi``, pixels outside the polygons
    ignored); stream the confusion matrix (and per-tile counts). Also returns the grid scored."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(**GDAL_ENV))
        pred = ClassMapReader(prediction, None, "prediction")
        stack.callback(pred.close)
        name = nomenclature_name or pred.tagged
        if name is None:
            raise DatasetError(
                f"{prediction} has no NOMENCLATURE tag; pass --nomenclature (level3, level2, level1, ben19)"
            )
        nom = nomenclature(name)
        pred.set_nomenclature(nom)
        read_ref, description, close = open_reference(
            labels, pred.grid, nom, code_column=code_column, all_touched=all_touched, raster_values=raster_values
        )
        stack.callback(close)
        grid, read_pred, read_ref = clip_to_aoi(pred.grid, pred.read, read_ref, aoi, prediction.name)
        conf = confusion_matrix_streaming(
            read_pred, read_ref, grid, nom.num_classes, window_size=window_size, tile_size=tile_size, progress=progress
        )
    return pred, nom, description, conf, grid


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_maps` returns: the headline scores as fields, and ``metrics``, the content of
    metrics.json (every score, per class and per tile, the inputs and options)."""

    miou: float
    overall_accuracy: float
    kappa: float | None
    evaluated_pixels: int
    total_pixels: int
    nomenclature: str
    metrics: dict[str, Any]

    @classmethod
    def of(cls, record: dict[str, Any]) -> EvaluationResult:
        s, px = record["scores"], record["pixels"]
        return cls(
            miou=s["miou"],
            overall_accuracy=s["overall_accuracy"],
            kappa=s["kappa"],
            evaluated_pixels=px["evaluated"],
            total_pixels=px["total"],
            nomenclature=record["nomenclature"]["name"],
            metrics=record,
        )

    @property
    def scores(self) -> dict[str, Any]:
        """metrics.json's ``scores``: mIoU, accuracy, kappa, per-class rows..."""
        return self.metrics["scores"]

    def to_dict(self) -> dict[str, Any]:
        """The content of metrics.json."""
        return self.metrics

    def to_json(self) -> str:
        """The text of metrics.json."""
        return json.dumps(self.metrics, indent=2)


# --- the evaluate command --------------------------------------------------------------------


def evaluate_maps(
    prediction: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    *,
    nomenclature_name: str | None = None,
    code_column: str | None = None,
    tile_size: int = 256,
    overwrite: bool = False,
    progress=None,
    raster_values: str = "auto",
    all_touched: bool = False,
    window_size: int = WINDOW_SIZE,
    block_size: int | None = None,
    replicates: int = 2000,
    compare: str | Path | None = None,
    aoi: AOI | None = None,
) -> EvaluationResult:
    """Score a class map against CORINE labels (or a class map on the same grid); write a report.

    ``REPORT_DIR`` gets metrics.json, report.md, confusion_matrix.png, iou_per_class.png and
    tiles_iou.gpkg. Returns the scores, with the content of metrics.json as ``metrics``. ``progress``: optional
    ``(done, total)``. Scores get 95 % block-bootstrap intervals over the tiles (blocks of ``block_size`` px,
    default 4 tiles); ``compare``: another class map on the same grid, scored against the same reference
    with a paired bootstrap (this map minus that one). ``aoi``: score only the map's window over it, pixels
    inside its polygons.
    """
    prediction, labels, out_dir = Path(prediction), Path(labels), Path(out_dir)
    if not isinstance(tile_size, int) or tile_size < 1 or window_size < 1:
        raise ConfigError(f"--tile-size must be a positive number of pixels, not {tile_size!r}")
    block_size = 4 * tile_size if block_size is None else block_size
    _check_bootstrap_options(tile_size, block_size, replicates)
    check_report_dir(out_dir, overwrite, (prediction, labels, *([Path(compare)] if compare else [])))
    args = (labels, nomenclature_name, code_column, tile_size, progress, raster_values, all_touched, window_size)
    pred, nom, description, conf, grid = _confusion(prediction, *args, aoi)
    other = None
    if compare is not None:
        _check_same_grid(Path(compare), pred.grid, prediction)
        other = _confusion(Path(compare), labels, nom.name, *args[2:], aoi)[3]
    if conf.pixels["evaluated"] == 0:
        raise NoOverlapError(
            f"no pixel of {prediction} has both a prediction and a label from {labels} "
            f"({conf.pixels['no_prediction']:,} px without prediction, {conf.pixels['no_label']:,} without label); "
            "use labels that cover the map"
        )
    area = pixel_area_m2(grid)
    scores = scores_from_confusion(conf.matrix, area, nom.class_names, class_codes=nom.codes)
    inputs = {
        "prediction": prediction.name,
        "labels": labels.name,  # names: no path of the user's machine
        "labels_description": description,
        "prediction_nomenclature": pred.source_nom.name,
        "grid": grid.to_dict(),
    }
    options = {
        "nomenclature": nom.name,
        "code_column": code_column,
        "tile_size": tile_size,
        "window_size": window_size,
        "raster_values": raster_values,
        "all_touched": all_touched,
        "overwrite": overwrite,
        "block_size": block_size,
        "replicates": replicates,
        "compare": Path(compare).name if compare else None,
        "aoi": None if aoi is None else aoi.to_setting(),
    }
    scores |= _uncertainty(conf, other, grid.width, block_size, replicates, nom)
    if other is not None:
        scores["comparison"] |= {"a": Path(str(compare)).name, "b": prediction.name}
    metrics = _metrics_record(inputs, options, nom, area, conf.pixels, scores)
    with report_dir(out_dir, overwrite) as tmp:
        metrics["tiles"]["count"] = write_tiles(conf, grid, nom, tmp / "tiles_iou.gpkg")
        plot_confusion(conf.matrix, nom, tmp / "confusion_matrix.png")
        plot_iou(scores, nom, tmp / "iou_per_class.png")
        write_markdown(metrics, tmp / "report.md")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return EvaluationResult.of(metrics)


def _check_same_grid(compare: Path, grid: Grid, prediction: Path) -> None:
    reader = ClassMapReader(compare, None, "--compare map")
    reader.close()
    if not same_grid(reader.grid, grid):
        raise DatasetError(
            f"--compare {compare} is on another grid than {prediction} ({reader.grid.to_dict()} vs "
            f"{grid.to_dict()}); compare maps predicted on the same grid"
        )


def _check_bootstrap_options(tile_size: int, block_size: int, replicates: int) -> None:
    if not isinstance(block_size, int) or block_size < tile_size:
        raise ConfigError(
            f"--block-size must be a number of pixels of at least --tile-size ({tile_size}), not {block_size!r}"
        )
    if not isinstance(replicates, int) or replicates < 10:
        raise ConfigError(f"--replicates must be an integer of at least 10 (e.g. 2000), not {replicates!r}")


def tile_blocks(n_tiles: int, width: int, tile_size: int, block_size: int) -> np.ndarray:
    """Block id of each tile (row-major tiles of ``tile_size`` px on a grid ``width`` px wide); a tile
    belongs to the block of ``block_size`` px that holds its upper-left pixel."""
    ntc, nbc = -(-width // tile_size), -(-width // block_size)
    index = np.arange(n_tiles)
    return (index // ntc * tile_size // block_size) * nbc + index % ntc * tile_size // block_size


def _uncertainty(
    conf: Confusion, other: Confusion | None, width: int, block_size: int, replicates: int, nom: Nomenclature
) -> dict[str, Any]:
    """``intervals`` (block bootstrap over the tiles with evaluated pixels) and, with another map,
    ``comparison`` (paired bootstrap, this map minus the other, over tiles either evaluates)."""
    counts = (conf.tiles or {})["counts"]
    tile_size = int(conf.tile_size or 0)
    groups = tile_blocks(len(counts), width, tile_size, block_size)
    used = counts[:, 1].sum(1) > 0
    size = {"tile_size": tile_size, "block_size": block_size}
    boot = bootstrap_scores(counts[used], groups[used], replicates=replicates, class_names=list(nom.class_names))
    out: dict[str, Any] = {"intervals": boot.to_dict() | size}
    if other is not None:
        counts_a = (other.tiles or {})["counts"]
        used = used | (counts_a[:, 1].sum(1) > 0)
        diff = paired_difference(counts_a[used], counts[used], groups[used], replicates=replicates)
        a_scores = scores_from_confusion(other.matrix)
        out["comparison"] = diff.to_dict() | size
        out["comparison"]["a_scores"] = {k: a_scores[k] for k in ("miou", "miou_reference", "overall_accuracy")}
    return out


def _metrics_record(
    inputs: dict[str, Any],
    options: dict[str, Any],
    nom: Nomenclature,
    area: float | None,
    pixels: dict[str, int],
    scores: dict[str, Any],
) -> dict[str, Any]:
    """The content of metrics.json (the tiles' count is filled in when tiles_iou.gpkg is written)."""
    return {
        "software": {"landcover": __version__, "numpy": np.__version__, "rasterio": rasterio.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": inputs,
        "options": options,
        "nomenclature": nom.to_dict(),
        "pixel_area_m2": area,
        "pixels": pixels,
        "scores": scores,
        "tiles": {"file": "tiles_iou.gpkg", "layer": "tiles", "tile_size": options["tile_size"], "count": 0},
        "files": ["metrics.json", "report.md", "confusion_matrix.png", "iou_per_class.png", "tiles_iou.gpkg"],
    }


__all__ = ["ClassMapReader", "EvaluationResult", "evaluate_maps"]
