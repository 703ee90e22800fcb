"""Grad-CAM of classification checkpoints for ``landcover explain``: the classes to explain, the hook on the
encoder's last stage, the per-tile heat maps written row by row into float32 GeoTIFFs on the input's grid
(tagged, then copied to COGs), and the decimated true-colour image the overlay is drawn on.

See :mod:`landcover.inference.explain` for the method and the files written.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import nn

from landcover.errors import ConfigError, ModelError
from landcover.inference.checkpoint import LoadedModel, probabilities
from landcover.inference.feeder import Feeder, Row, open_source
from landcover.inference.predict import Progress
from landcover.inference.sliding import make_plan
from landcover.inference.torch_engine import normalise
from landcover.inference.writers import BlockWriter
from landcover.io.grid import Grid
from landcover.io.style import to_cog
from landcover.models.encoders import encoder_of
from landcover.nomenclature import Nomenclature

NODATA = -1.0  # no-data value of the float32 outputs
MAX_DEFAULT_CLASSES = 5
OVERLAY_SIDE = 1024  # longest side of overlay.png, in pixels of the (decimated) scene


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


def grad_cam(lm: LoadedModel, stage: nn.Module, x: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
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


def default_classes(lm: LoadedModel, input: Path, t: int, dev: torch.device, batch_size: int) -> list[int]:
    """Classes with probability >= 0.5 in some tile (most probable first, at most 5), else the top one."""
    best = torch.zeros(lm.nomenclature.num_classes)
    with contextlib.closing(open_source(input, lm)) as source, torch.inference_mode():
        plan = make_plan(source.grid.height, source.grid.width, t, 0)
        feeder = Feeder(source, plan, batch_size, False)
        for k in range(plan.rows):
            for _, raw in feeder.batches(feeder(k)):
                x = _normalised(lm, raw).to(dev)
                best = torch.maximum(best, probabilities(lm, x, None).amax(0).cpu())
    order = [int(i) for i in torch.argsort(best, descending=True)]
    return [i for i in order if best[i] >= 0.5][:MAX_DEFAULT_CLASSES] or order[:1]


class CamScene(NamedTuple):
    """What one Grad-CAM pass over a scene found."""

    product_id: str
    grid: Grid
    mean: torch.Tensor  # mean probability of each class over the tiles
    best: torch.Tensor  # highest probability of each class in a tile
    quick: np.ndarray  # (4, h, w): decimated true-colour reflectances and the valid mask, for the overlay


def cam_names(nom: Nomenclature, ids: list[int]) -> list[str]:
    """File names of the classes' CAMs: ``cam_<code>_<name>.tif``."""
    return [f"cam_{slug(nom.codes[c])}_{slug(nom.class_names[c])}.tif" for c in ids]


def _normalised(lm: LoadedModel, raw: np.ndarray) -> torch.Tensor:
    """Raw windows normalised as predict's engine normalises them (one function for both)."""
    mean, std = (torch.from_numpy(a.reshape(1, -1, 1, 1)) for a in (lm.mean, lm.std))
    return normalise(torch.from_numpy(raw.astype(np.float32)), mean, std)


def _rgb_bands(lm: LoadedModel) -> list[int]:
    """Indices of B04, B03, B02 in the checkpoint's bands (grey from the first band when one is missing)."""
    rgb_idx = [lm.bands.index(b) for b in ("B04", "B03", "B02") if b in lm.bands]
    return rgb_idx if len(rgb_idx) == 3 else [0] * 3


def _cam_row(
    lm: LoadedModel,
    stage: nn.Module,
    feeder: Feeder,
    row: Row,
    ids: list[int],
    t: int,
    width: int,
    dev: torch.device,
    stats: tuple[torch.Tensor, int, torch.Tensor],
) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, int, torch.Tensor]]:
    """CAMs and true-colour reflectances of one row of tiles; ``stats`` (sum, count and maximum of the tiles'
    probabilities) updated with its tiles."""
    rgb_idx = _rgb_bands(lm)
    total, tiles, best = stats
    cams = np.full((len(ids), t, width), NODATA, np.float32)
    rgb = np.zeros((3, t, width), np.float32)
    for cols, raw in feeder.batches(row):
        x = _normalised(lm, raw)
        cam, probs = grad_cam(lm, stage, x.to(dev), ids)
        total, tiles, best = total + probs.sum(0).cpu(), tiles + len(cols), torch.maximum(best, probs.amax(0).cpu())
        for b, j in enumerate(cols):
            cams[:, :, j * t : (j + 1) * t] = cam[b].cpu().numpy()
            rgb[:, :, j * t : (j + 1) * t] = raw[b, rgb_idx]
    return cams, rgb, (total, tiles, best)


def cam_rasters(
    lm: LoadedModel,
    input: Path,
    gtiffs: list[Path],
    t: int,
    ids: list[int],
    stage: nn.Module,
    dev: torch.device,
    batch_size: int,
    progress: Progress | None,
) -> CamScene:
    """Grad-CAM of every tile, row by row, into the float32 GeoTIFFs ``gtiffs`` (one per class of ``ids``)."""
    k = lm.nomenclature.num_classes
    stats: tuple[torch.Tensor, int, torch.Tensor] = (torch.zeros(k), 0, torch.zeros(k))
    with contextlib.closing(open_source(input, lm)) as source:
        grid = source.grid
        plan = make_plan(grid.height, grid.width, t, 0)
        feeder = Feeder(source, plan, batch_size, False)
        f = max(1, math.ceil(max(grid.height, grid.width) / OVERLAY_SIDE))
        quick: list[np.ndarray] = []
        writers: list[BlockWriter] = []
        try:
            for path in gtiffs:
                writers.append(BlockWriter(path, grid, 1, "float32", NODATA, False))
            for r in range(plan.rows):
                row = feeder(r)
                cams, rgb, stats = _cam_row(lm, stage, feeder, row, ids, t, plan.padded_width, dev, stats)
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
    total, tiles, best = stats
    return CamScene(product_id, grid, total / max(tiles, 1), best, np.concatenate(quick, axis=1))


def publish_cams(
    lm: LoadedModel, input: Path, scene: CamScene, ids: list[int], gtiffs: list[Path], finals: list[Path], t: int
) -> None:
    """Tag each class's CAM GeoTIFF (band description, method, class, provenance) and copy it to its COG."""
    nom = lm.nomenclature
    for c, path, final in zip(ids, gtiffs, finals, strict=True):
        with rasterio.open(path, "r+") as ds:
            ds.set_band_description(1, f"Grad-CAM {nom.codes[c]} {nom.class_names[c]} (0..1; -1 = no data)")
            ds.update_tags(
                METHOD="Grad-CAM, last encoder stage, per-tile max normalised",
                CLASS_CODE=nom.codes[c],
                CLASS_NAME=nom.class_names[c],
                PRODUCT_ID=scene.product_id,
                INPUT=input.name,
                CHECKPOINT_SHA256=lm.sha256 or "none",
                TILE_SIZE=str(t),
            )
        to_cog(path, final, "AVERAGE", None)


def cam_classes(nom: Nomenclature, ids: list[int], names: list[str], scene: CamScene) -> list[dict[str, Any]]:
    """explain.json's entry of each explained class: id, code, name, file, mean and max probability."""
    return [
        {
            "id": c,
            "code": nom.codes[c],
            "name": nom.class_names[c],
            "file": n,
            "mean_probability": round(float(scene.mean[c]), 4),
            "max_probability": round(float(scene.best[c]), 4),
        }
        for c, n in zip(ids, names, strict=True)
    ]


def stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) reflectances -> (h, w, 4) RGBA in 0..1, 2-98 % stretch per band, no data transparent."""
    out = np.zeros((*rgb.shape[1:], 4), np.float32)
    for i in range(3):
        lo, hi = np.percentile(rgb[i][valid], (2, 98)) if valid.any() else (0.0, 1.0)
        out[..., i] = np.clip((rgb[i] - lo) / max(hi - lo, 1e-6), 0, 1)
    out[..., 3] = valid
    return out
