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
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn

from landcover import __version__
from landcover.errors import ConfigError, ModelError, OutputExistsError
from landcover.inference.checkpoint import LoadedModel, load_checkpoint, probabilities, resolve_device
from landcover.inference.feeder import Feeder, open_source
from landcover.inference.predict import Progress, check_level, predict_scene
from landcover.inference.sliding import make_plan
from landcover.inference.writers import BlockWriter
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.outputs import temporaries
from landcover.io.style import to_cog
from landcover.models.encoders import encoder_of
from landcover.nomenclature import Nomenclature

NODATA = -1.0  # no-data value of the float32 outputs
MAX_DEFAULT_CLASSES = 5
OVERLAY_SIDE = 1024  # longest side of overlay.png, in pixels of the (decimated) scene
STRIP = 64  # rows per read of the probability COG (segmentation)


def slug(text: str) -> str:
    """``'Water bodies'`` -> ``'water-bodies'`` (file-name safe)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "class"


def resolve_classes(nom: Nomenclature, classes: str | Sequence[str | int] | None) -> list[int] | None:
    """Class ids for codes or names (``'all'`` = every class, ``None`` = choose from the scene)."""
    if classes is None:
        return None
    items = classes.split(",") if isinstance(classes, str) else [str(c) for c in classes]
    items = [i.strip() for i in items if i.strip()]
    if [i.lower() for i in items] == ["all"]:
        return list(range(nom.num_classes))
    ids: list[int] = []
    unknown = []
    for item in items:
        hits = [
            i
            for i, (code, name) in enumerate(zip(nom.codes, nom.class_names, strict=True))
            if item == code or slug(item) == slug(name)
        ]
        if not hits:
            unknown.append(item)
        elif hits[0] not in ids:
            ids.append(hits[0])
    if unknown or not ids:
        known = "; ".join(f"{c} ({n})" for c, n in zip(nom.codes, nom.class_names, strict=True))
        raise ConfigError(
            f"unknown class(es) {', '.join(map(repr, unknown)) or '(none given)'} for the checkpoint's "
            f"{nom.name} nomenclature; give codes or names from: {known}; or 'all'"
        )
    return ids


def last_stage(model: nn.Module) -> tuple[str, nn.Module]:
    """The encoder's last stage (``layer4`` of a timm ResNet), the layer Grad-CAM reads."""
    try:
        stages = [(n, m) for n, m in encoder_of(model).named_children() if re.fullmatch(r"layer\d+|stages?", n)]
    except ModelError as exc:
        stages, why = [], str(exc)
    else:
        why = "its encoder has no layer1..layerN stages"
    if not stages:
        raise ModelError(
            f"Grad-CAM needs a ResNet classifier (timm, stages layer1..layer4); {type(model).__name__} "
            f"is not one ({why}); use a checkpoint of `landcover train` with model.task=classification"
        )
    return stages[-1]


def _grad_cam(lm: LoadedModel, stage: nn.Module, x: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, len(ids), H, W) CAMs in 0..1 and (B, K) probabilities of a normalised batch ``x``."""

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        acts.append(output.detach().requires_grad_(True))  # the graph starts here: only pool + head
        return acts[-1]

    acts: list[torch.Tensor] = []
    handle = stage.register_forward_hook(hook)
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            logits = lm.model(x).float()
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    if tuple(logits.shape) != (len(x), lm.nomenclature.num_classes) or not acts:
        raise ModelError(
            f"the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}, expected "
            f"{(len(x), lm.nomenclature.num_classes)}; the checkpoint is not a classifier"
        )
    a = acts[-1]
    maps = []
    for n, c in enumerate(ids):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=n + 1 < len(ids))
        maps.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)))
    cam = F.interpolate(torch.cat(maps, 1).detach(), size=x.shape[2:], mode="bilinear", align_corners=False)
    peak = cam.amax(dim=(2, 3), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-30), torch.zeros_like(cam)).clamp_(0, 1)
    probs = torch.sigmoid(logits) if lm.label_mode == "multilabel" else torch.softmax(logits, 1)
    return cam, probs.detach()


def _default_classes(lm: LoadedModel, input: Path, t: int, dev: torch.device, batch_size: int) -> list[int]:
    """Classes with probability >= 0.5 in some tile (most probable first, at most 5), else the top one."""
    best = torch.zeros(lm.nomenclature.num_classes)
    with contextlib.closing(open_source(input, lm)) as source, torch.inference_mode():
        plan = make_plan(source.grid.height, source.grid.width, t, 0)
        feeder = Feeder(source, plan, lm, batch_size, False, False)
        for k in range(plan.rows):
            for _, x in feeder(k).batches:
                best = torch.maximum(best, probabilities(lm, x.to(dev), None).amax(0).cpu())
    order = [int(i) for i in torch.argsort(best, descending=True)]
    return [i for i in order if best[i] >= 0.5][:MAX_DEFAULT_CLASSES] or order[:1]


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
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise OutputExistsError(
            f"{out_dir} exists and is not an empty folder; pass --overwrite to write into it "
            "or choose another output folder"
        )
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
            ids = ids if ids is not None else _default_classes(lm, input, t, dev, batch_size)
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
    tmp: Any,
    progress: Progress | None,
) -> dict[str, Any]:
    nom, k = lm.nomenclature, lm.nomenclature.num_classes
    names = [f"cam_{slug(nom.codes[c])}_{slug(nom.class_names[c])}.tif" for c in ids]
    total, tiles, best = torch.zeros(k), 0, torch.zeros(k)
    with contextlib.closing(open_source(input, lm)) as source:
        grid = source.grid
        plan = make_plan(grid.height, grid.width, t, 0)
        feeder = Feeder(source, plan, lm, batch_size, False, False)
        f = max(1, math.ceil(max(grid.height, grid.width) / OVERLAY_SIDE))
        rgb_idx = [lm.bands.index(b) for b in ("B04", "B03", "B02") if b in lm.bands]
        rgb_idx = rgb_idx if len(rgb_idx) == 3 else [0] * 3  # grey from the first band
        quick: list[np.ndarray] = []
        gtiffs = [tmp(out_dir / n) for n in names]
        writers: list[BlockWriter] = []
        try:
            for path in gtiffs:
                writers.append(BlockWriter(path, grid, 1, "float32", NODATA, False))
            for r in range(plan.rows):
                row = feeder(r)
                cams = np.full((len(ids), t, plan.padded_width), NODATA, np.float32)
                rgb = np.zeros((3, t, plan.padded_width), np.float32)
                for cols, x in row.batches:
                    cam, probs = _grad_cam(lm, stage, x.to(dev), ids)
                    total, tiles, best = (
                        total + probs.sum(0).cpu(),
                        tiles + len(cols),
                        torch.maximum(best, probs.amax(0).cpu()),
                    )
                    raw = x[:, rgb_idx].numpy() * lm.std[rgb_idx, None, None] + lm.mean[rgb_idx, None, None]
                    for b, j in enumerate(cols):
                        cams[:, :, j * t : (j + 1) * t] = cam[b].cpu().numpy()
                        rgb[:, :, j * t : (j + 1) * t] = raw[b]
                h, valid = min(t, grid.height - r * t), row.valid[:, : grid.width]
                cams, valid = cams[:, :h, : grid.width], valid[:h]
                cams[:, ~valid] = NODATA
                for n, bw in enumerate(writers):
                    bw.add(cams[n : n + 1], valid)
                keep = [i for i in range(h) if (r * t + i) % f == 0]
                quick.append(np.concatenate([rgb[:, keep, : grid.width : f], valid[None, keep, ::f]]))
                if progress:
                    progress(f"{source.product_id}: Grad-CAM", r + 1, plan.rows)
            for bw in writers:
                bw.flush()
        finally:
            for bw in writers:
                bw.ds.close()
        product_id = source.product_id
    mean = total / max(tiles, 1)
    top = max(ids, key=lambda c: float(mean[c]))
    finals: dict[str, Path] = {}
    for c, name, path in zip(ids, names, gtiffs, strict=True):
        with rasterio.open(path, "r+") as ds:
            ds.set_band_description(1, f"Grad-CAM {nom.codes[c]} {nom.class_names[c]} (0..1; -1 = no data)")
            ds.update_tags(
                METHOD="Grad-CAM, last encoder stage, per-tile max normalised",
                CLASS_CODE=nom.codes[c],
                CLASS_NAME=nom.class_names[c],
                PRODUCT_ID=product_id,
                INPUT=input.name,
                CHECKPOINT_SHA256=lm.sha256 or "none",
                TILE_SIZE=str(t),
            )
        finals[name] = tmp(out_dir / name)
        to_cog(path, finals[name], "AVERAGE", None)
    image = np.concatenate(quick, axis=1)
    with rasterio.open(finals[names[ids.index(top)]]) as ds:
        heat = ds.read(1, out_shape=image.shape[1:], masked=True).filled(np.nan)
    finals["overlay.png"] = tmp(out_dir / "overlay.png")
    _overlay(
        finals["overlay.png"],
        _stretch(image[:3], image[3] > 0),
        heat,
        "jet",
        f"Grad-CAM of {nom.codes[top]} {nom.class_names[top]} on {product_id}",
        "class activation (0..1)",
    )
    classes = [
        {
            "id": c,
            "code": nom.codes[c],
            "name": nom.class_names[c],
            "file": n,
            "mean_probability": round(float(mean[c]), 4),
            "max_probability": round(float(best[c]), 4),
        }
        for c, n in zip(ids, names, strict=True)
    ]
    return {
        "method": "grad-cam",
        "product_id": product_id,
        "grid": grid.to_dict(),
        "tile": t,
        "classes": classes,
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
    tmp: Any,
    progress: Progress | None,
) -> dict[str, Any]:
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
        k = lm.nomenclature.num_classes
        gtiffs = {name: tmp(out_dir / name) for name in ("entropy.tif", "margin.tif")}
        with rasterio.open(work / "p_probabilities.tif") as src:
            grid = Grid(src.crs, src.transform, src.width, src.height)
            writers = {n: BlockWriter(p, grid, 1, "float32", NODATA, False) for n, p in gtiffs.items()}
            try:
                for r0 in range(0, grid.height, STRIP):
                    win = Window(0, r0, grid.width, min(STRIP, grid.height - r0))
                    p, valid = src.read(window=win).astype(np.float32), src.read_masks(1, window=win) > 0
                    p /= np.maximum(p.sum(axis=0), 1e-12)
                    if k > 1:
                        logs = np.log(p, where=p > 0, out=np.zeros_like(p))
                        entropy = np.clip(-(p * logs).sum(axis=0) / math.log(k), 0, 1)
                        top2 = np.partition(p, k - 2, axis=0)[k - 2 :]
                        margin = top2[1] - top2[0]
                    else:
                        entropy, margin = np.zeros(p.shape[1:], np.float32), np.ones(p.shape[1:], np.float32)
                    for name, data in (("entropy.tif", entropy), ("margin.tif", margin)):
                        data = np.where(valid, data, NODATA).astype(np.float32)[None]
                        writers[name].add(data, valid)
                for bw in writers.values():
                    bw.flush()
            finally:
                for bw in writers.values():
                    bw.ds.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finals: dict[str, Path] = {}
    for name, path in gtiffs.items():
        with rasterio.open(path, "r+") as ds:
            what = "Shannon entropy / log(K)" if name == "entropy.tif" else "top-1 minus top-2 probability"
            ds.set_band_description(1, f"{what} (0..1; -1 = no data)")
            ds.update_tags(
                METHOD=what,
                PRODUCT_ID=summary["product_id"],
                INPUT=input.name,
                CHECKPOINT_SHA256=lm.sha256 or "none",
                PROBABILITY_STEP="1/255",
            )
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
        f"Normalised entropy on {summary['product_id']}",
        "entropy (0 = certain, 1 = uniform)",
    )
    return {
        "method": "entropy-margin",
        "product_id": summary["product_id"],
        "grid": grid.to_dict(),
        "tile": summary["tile"],
        "overlap": summary["overlap"],
        "classes": [],
        "nodata": NODATA,
        "files": [*gtiffs, "overlay.png"],
        "temporaries": finals,
    }


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) reflectances -> (h, w, 4) RGBA in 0..1, 2-98 % stretch per band, no data transparent."""
    out = np.zeros((*rgb.shape[1:], 4), np.float32)
    for i in range(3):
        lo, hi = np.percentile(rgb[i][valid], (2, 98)) if valid.any() else (0.0, 1.0)
        out[..., i] = np.clip((rgb[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    out[..., 3] = valid
    return out


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
