"""``landcover explain``: where a checkpoint looks (Grad-CAM) and where it hesitates (entropy, margin).

* Classification checkpoints (timm ResNet): Grad-CAM on the encoder's last stage (``layer4``). The
  input is cut into the non-overlapping tiles ``landcover predict`` uses (same reader, reflection
  padding and normalisation, imported from :mod:`landcover.inference.predict`); for each tile and requested
  class the stage's activations are weighted by the spatially averaged gradient of the class logit,
  summed, passed through ReLU, upsampled bilinearly to the tile's pixels and divided by the tile's
  maximum (0 where that is 0). One float32 COG per class, ``cam_<code>_<name>.tif``, on the input's
  grid (no data = -1 where the input has none), and ``overlay.png``: the input in true colour with
  the CAM of the most probable requested class on top. Default classes: those predicted with
  probability >= 0.5 in some tile (at most 5, the most probable first), else the most probable one.
* Segmentation checkpoints: ``landcover predict --probabilities`` into a temporary folder, then
  ``entropy.tif`` (Shannon entropy of the class probabilities / log K, 0..1) and ``margin.tif``
  (top-1 minus top-2 probability), derived from predict's uint8 probabilities (steps of 1/255), and
  ``overlay.png`` of the entropy.

Memory is bounded by the scene width: one row of tiles (or of 64 pixels) at a time. Every file is
written under a temporary name and renamed when complete; ``explain.json`` comes last and lists
what was written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from landcover.errors import ConfigError, OutputExistsError
from landcover.inference.checkpoint import LoadedModel, load_checkpoint, resolve_device
from landcover.inference.feeder import open_source
from landcover.inference.gradcam import (
    NODATA,
    OVERLAY_SIDE,
    cam_classes,
    cam_names,
    cam_rasters,
    default_classes,
    last_stage,
    publish_cams,
    resolve_classes,
    stretch,
)
from landcover.inference.predict import Progress, check_level, predict_scene
from landcover.inference.writers import BlockWriter
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.outputs import temporaries
from landcover.io.style import to_cog
from landcover.version import __version__

STRIP = 64  # rows per read of the probability COG (segmentation)


def explain(
    checkpoint: str | Path | LoadedModel,
    input: str | Path,
    out_dir: str | Path,
    *,
    classes: str | Sequence[str | int] | None = None,
    tile: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    batch_size: int = 8,
    allow_level_mismatch: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Explain a checkpoint on one scene into ``out_dir``; return what ``explain.json`` records.

    A scene of another processing level than the checkpoint's training data is refused (ConfigError) unless
    ``allow_level_mismatch``; ``warnings`` in the record then say so.

    ``classes``: codes or names (a list or a comma-separated string), ``'all'``, or None (the classes
    the model finds in the scene); classification only. Raises OutputExistsError for a non-empty
    ``out_dir`` without ``overwrite``, ConfigError for unknown classes, ModelError for unusable
    checkpoints and MissingBandError when the input lacks the checkpoint's bands.
    """
    started = time.perf_counter()
    input, out_dir = Path(input), Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    lm = checkpoint if isinstance(checkpoint, LoadedModel) else load_checkpoint(checkpoint)
    ids = resolve_classes(lm.nomenclature, classes)
    if lm.task == "segmentation" and ids is not None:
        raise ConfigError(
            "classes apply to classification checkpoints (Grad-CAM); for a segmentation checkpoint "
            "`landcover predict --probabilities` writes each class's probability map"
        )
    t = int(tile or lm.tile_size)
    if t < 1 or batch_size < 1:
        raise ConfigError(f"tile ({t}) and batch size ({batch_size}) must be positive")
    dev = resolve_device(device)
    with contextlib.closing(
        open_source(input, lm)
    ) as source:  # a missing or unusable input: an error before any output
        warnings = [w for w in [check_level(lm, source.level, input, allow_level_mismatch)] if w]
    previous = _previous_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.partial*"):  # what a killed earlier run left (this folder is explain's own)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    with rasterio.Env(**GDAL_ENV), temporaries(out_dir) as tmp, _out_of_memory(input, dev):
        if lm.task == "segmentation":
            record = _segmentation(lm, input, out_dir, tile, dev, batch_size, tmp, progress)
        else:
            lm.model.to(dev).eval()
            stage_name, stage = last_stage(lm.model)
            ids = ids if ids is not None else default_classes(lm, input, t, dev, batch_size)
            record = _classification(lm, input, out_dir, t, ids, stage, dev, batch_size, tmp, progress)
            record["layer"] = stage_name
        record.update(
            checkpoint=Path(lm.path).name if lm.path else "in-memory model",
            checkpoint_sha256=lm.sha256,
            input=input.name,
            warnings=warnings,
            task=lm.task,
            device=str(dev),
            software=f"landcover {__version__}",
            seconds=round(time.perf_counter() - started, 3),
        )
        for name, path in record.pop("temporaries").items():
            os.replace(path, out_dir / name)
        record["files"] = [*record["files"], "explain.json"]
        meta = tmp(out_dir / "explain.json")
        meta.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(meta, out_dir / "explain.json")  # last: its presence means 'complete'
    for name in previous - set(record["files"]):  # outputs of an earlier run replaced by this one
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    return {**record, "out_dir": str(out_dir)}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse (OutputExistsError) an output folder that is a file, or not empty without ``overwrite``."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise OutputExistsError(
            f"{out_dir} exists and is not an empty folder; pass --overwrite to write into it "
            "or choose another output folder"
        )


@contextlib.contextmanager
def _out_of_memory(input: Path, dev: torch.device) -> Iterator[None]:
    """A GPU out of memory as a ConfigError naming what explain offers (predict's would name --batch-size)."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, ConfigError) as exc:
        cause = exc if isinstance(exc, torch.cuda.OutOfMemoryError) else exc.__cause__
        if not isinstance(cause, torch.cuda.OutOfMemoryError):
            raise
        raise ConfigError(
            f"the GPU ({dev}) ran out of memory explaining {input.name}; free GPU memory (other "
            "processes) or pass --device cpu"
        ) from cause


def _previous_files(out_dir: Path) -> set[str]:
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        files = json.loads((out_dir / "explain.json").read_text(encoding="utf-8")).get("files", [])
        return {f for f in files if isinstance(f, str) and f == Path(f).name}
    return set()


def _classification(
    lm: LoadedModel,
    input: Path,
    out_dir: Path,
    t: int,
    ids: list[int],
    stage: nn.Module,
    dev: torch.device,
    batch_size: int,
    tmp: Callable[[Path], Path],
    progress: Progress | None,
) -> dict[str, Any]:
    """Grad-CAM COGs of the classes ``ids`` and overlay.png of the most probable one; explain.json's record."""
    nom = lm.nomenclature
    names = cam_names(nom, ids)
    gtiffs = [tmp(out_dir / n) for n in names]
    scene = cam_rasters(lm, input, gtiffs, t, ids, stage, dev, batch_size, progress)
    top = max(ids, key=lambda c: float(scene.mean[c]))
    finals = {name: tmp(out_dir / name) for name in names}
    publish_cams(lm, input, scene, ids, gtiffs, list(finals.values()), t)
    image = scene.quick
    with rasterio.open(finals[names[ids.index(top)]]) as ds:
        heat = ds.read(1, out_shape=image.shape[1:], masked=True).filled(np.nan)
    finals["overlay.png"] = tmp(out_dir / "overlay.png")
    _overlay(
        finals["overlay.png"],
        stretch(image[:3], image[3] > 0),
        heat,
        "jet",
        f"Grad-CAM of {nom.codes[top]} {nom.class_names[top]} on {scene.product_id}",
        "class activation (0..1)",
    )
    return {
        "method": "grad-cam",
        "product_id": scene.product_id,
        "grid": scene.grid.to_dict(),
        "tile": t,
        "classes": cam_classes(nom, ids, names, scene),
        "top_class": nom.codes[top],
        "nodata": NODATA,
        "files": [*names, "overlay.png"],
        "temporaries": finals,
    }


def _segmentation(
    lm: LoadedModel,
    input: Path,
    out_dir: Path,
    tile: int | None,
    dev: torch.device,
    batch_size: int,
    tmp: Callable[[Path], Path],
    progress: Progress | None,
) -> dict[str, Any]:
    """entropy.tif, margin.tif and overlay.png of the entropy, from predict's probabilities; explain.json's record."""
    work = out_dir / f".explain-{uuid.uuid4().hex[:8]}.partial"
    try:
        summary = predict_scene(
            lm,
            input,
            work / "p.tif",
            tile=tile,
            device=str(dev),
            batch_size=batch_size,
            probabilities=True,
            quicklook=False,
            progress=progress,
            allow_level_mismatch=True,
        )  # checked (and warned about) by explain itself
        gtiffs = {name: tmp(out_dir / name) for name in ("entropy.tif", "margin.tif")}
        grid = _uncertainty_rasters(work / "p_probabilities.tif", gtiffs, lm.nomenclature.num_classes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finals: dict[str, Path] = {}
    for name, path in gtiffs.items():
        _tag_uncertainty(path, name, lm, input, summary.product_id)
        finals[name] = tmp(out_dir / name)
        to_cog(path, finals[name], "AVERAGE", None)
    with rasterio.open(finals["entropy.tif"]) as ds:
        f = max(1.0, max(ds.width, ds.height) / OVERLAY_SIDE)
        shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
        heat = ds.read(1, out_shape=shape, masked=True).filled(np.nan)
    finals["overlay.png"] = tmp(out_dir / "overlay.png")
    _overlay(
        finals["overlay.png"],
        None,
        heat,
        "magma",
        f"Normalised entropy on {summary.product_id}",
        "entropy (0 = certain, 1 = uniform)",
    )
    return {
        "method": "entropy-margin",
        "product_id": summary.product_id,
        "grid": grid.to_dict(),
        "tile": summary.tile,
        "overlap": summary.overlap,
        "classes": [],
        "nodata": NODATA,
        "files": [*gtiffs, "overlay.png"],
        "temporaries": finals,
    }


def _uncertainty_rasters(probabilities: Path, gtiffs: dict[str, Path], k: int) -> Grid:
    """Entropy and margin of predict's uint8 probabilities, ``STRIP`` rows at a time, into float32 GeoTIFFs."""
    with rasterio.open(probabilities) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
        writers = {n: BlockWriter(p, grid, 1, "float32", NODATA, False) for n, p in gtiffs.items()}
        try:
            for r0 in range(0, grid.height, STRIP):
                win = Window(0, r0, grid.width, min(STRIP, grid.height - r0))
                p, valid = src.read(window=win).astype(np.float32), src.read_masks(1, window=win) > 0
                p /= np.maximum(p.sum(axis=0), 1e-12)
                for name, data in zip(("entropy.tif", "margin.tif"), _entropy_margin(p, k), strict=True):
                    data = np.where(valid, data, NODATA).astype(np.float32)[None]
                    writers[name].add(data, valid)
            for bw in writers.values():
                bw.flush()
        finally:
            for bw in writers.values():
                bw.ds.close()
    return grid


def _entropy_margin(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shannon entropy / log K and top-1 minus top-2 probability of (K, h, w) probabilities."""
    if k > 1:
        logs = np.log(p, where=p > 0, out=np.zeros_like(p))
        entropy = np.clip(-(p * logs).sum(axis=0) / math.log(k), 0, 1)
        top2 = np.partition(p, k - 2, axis=0)[k - 2 :]
        return entropy, top2[1] - top2[0]
    return np.zeros(p.shape[1:], np.float32), np.ones(p.shape[1:], np.float32)


def _tag_uncertainty(path: Path, name: str, lm: LoadedModel, input: Path, product_id: str) -> None:
    """Band description, method and provenance tags of entropy.tif or margin.tif."""
    with rasterio.open(path, "r+") as ds:
        what = "Shannon entropy / log(K)" if name == "entropy.tif" else "top-1 minus top-2 probability"
        ds.set_band_description(1, f"{what} (0..1; -1 = no data)")
        ds.update_tags(
            METHOD=what,
            PRODUCT_ID=product_id,
            INPUT=input.name,
            CHECKPOINT_SHA256=lm.sha256 or "none",
            PROBABILITY_STEP="1/255",
        )


def _overlay(png: Path, background: np.ndarray | None, heat: np.ndarray, cmap: str, title: str, label: str) -> None:
    """A PNG of ``heat`` (0..1, NaN = no data) over ``background`` (drawn on a bare Figure, not pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7))
    ax = fig.subplots()
    if background is not None:
        ax.imshow(background, interpolation="nearest")
    shown = ax.imshow(
        np.ma.masked_invalid(heat),
        cmap=cmap,
        vmin=0,
        vmax=1,
        interpolation="bilinear",
        alpha=0.45 if background is not None else 1.0,
    )
    fig.colorbar(shown, ax=ax, fraction=0.035, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.savefig(png, dpi=100, bbox_inches="tight", format="png")


def explain_command_summary(result: dict[str, Any]) -> str:
    """One line for the CLI: what was explained and where it went."""
    if result.get("method") == "grad-cam":
        what = "Grad-CAM of " + ", ".join(f"{c['code']} {c['name']}" for c in result["classes"])
    else:
        what = "entropy and margin"
    return (
        f"{what} for {result.get('product_id', result.get('input'))}: {len(result['files'])} files in "
        f"{result.get('out_dir', '?')} ({result.get('seconds', 0):.1f} s)"
    )
