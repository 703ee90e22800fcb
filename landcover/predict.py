"""``landcover predict``: a checkpoint and Sentinel-2 scenes -> Cloud-Optimized GeoTIFF land-cover maps.

The model is rebuilt from the checkpoint's ``landcover`` section (no Lightning). A scene is read
through :class:`~landcover.stack.SceneReader` (the band selection, resampling and baseline offsets
of ingest) or, for an ingested ``scenes/<id>/image.tif``, read as it is.

Streaming, with memory bounded by scene *width* (never height): the scene is padded by reflection
and covered by windows of ``tile`` pixels that start every ``stride = tile - overlap`` pixels,
``margin`` (= overlap) before the scene's first row and column, so every scene pixel lies in the
inner part of some window. Windows are blended with cosine ramps over the overlap; the weights of
the (at most two) windows over a pixel in each direction sum to exactly 1. One *row* of windows is
processed at a time: its probabilities are accumulated in a ``K x tile x padded width`` strip, the
top ``stride`` rows (which no later window touches) are finished and handed to a writer thread, and
the strip moves down. A reader thread prepares the next row of windows while the model runs.
Windows without any valid pixel are skipped; no-data pixels (0 in every band) become 255.
Classification checkpoints predict non-overlapping tiles (each tile gets its most probable class).

Outputs: ``OUT.tif`` (COG, uint8 class ids, 255 = no data, colour table, class names, provenance
tags), ``OUT.qml``, optional ``OUT_probabilities.tif`` (uint8 probability x 255 per class),
``OUT_confidence.tif`` (max probability x 255) and ``OUT.png`` (quick look with a legend). All are
written under temporary names and renamed at the end, the class map last: when ``OUT.tif`` exists,
the scene is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from torch import nn

from landcover import __version__
from landcover.errors import (
    ConfigError,
    InputFormatError,
    MissingBandError,
    ModelError,
    OutputExistsError,
)
from landcover.io import (
    GDAL_ENV,
    Grid,
    open_raster,
    remove_stale_temporaries,
    style_class_map,
    temporary_sibling,
    write_qgis_style,
)
from landcover.models import ModelConfig, build_model
from landcover.tables import IGNORE, NOMENCLATURES, Nomenclature, nomenclature

Progress = Callable[[str, int, int], None]
STACK_SCALE = "reflectance x 10000"  # the SCALE tag of an ingested scenes/<id>/image.tif
MULTIPLE = 32  # U-Net input sides must be multiples of this
TMP_BLOCK = 256  # block side of the temporary GeoTIFFs (written one whole block row at a time)
COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": 512, "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}


@dataclass
class LoadedModel:
    """A model in eval mode and everything prediction needs from its checkpoint."""

    model: nn.Module
    task: str  # 'segmentation' | 'classification'
    bands: list[str]
    nomenclature: Nomenclature
    tile_size: int
    mean: np.ndarray
    std: np.ndarray
    resolution: float = 10.0
    label_mode: str = "single"
    reader: dict[str, Any] = field(default_factory=dict)  # ingest settings: resampling, harmonize, scl_invalid
    sha256: str | None = None
    path: str | None = None

    @classmethod
    def from_meta(cls, model: nn.Module, meta: dict[str, Any], *, where: str = "checkpoint",
                  sha256: str | None = None, path: str | None = None) -> LoadedModel:
        """Wrap ``model`` with a checkpoint's ``landcover`` section (raises ModelError if incomplete)."""
        try:
            classes = sorted(meta["nomenclature"]["classes"], key=lambda c: int(c["id"]))
            name = str(meta["nomenclature"]["name"])
            nom = Nomenclature(
                name, tuple(str(c["code"]) for c in classes), tuple(str(c["name"]) for c in classes),
                tuple((int(c["rgb"][0]), int(c["rgb"][1]), int(c["rgb"][2])) for c in classes),
                nomenclature(name).lut if name in NOMENCLATURES else np.zeros(0, np.uint16),
            )
            bands = [str(b) for b in meta["bands"]]
            norm = meta.get("normalization") or {}
            mode = norm.get("mode") or ((meta.get("config") or {}).get("data") or {}).get("normalization")
            if mode == "none":  # the datamodule's x / 10000
                mean, std = np.zeros(len(bands), np.float32), np.full(len(bands), 10000.0, np.float32)
            else:
                mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
                std = np.where(std > 0, std, 1.0).astype(np.float32)
            if mean.shape != (len(bands),) or std.shape != (len(bands),):
                raise ValueError(f"normalization has {mean.size} values for {len(bands)} bands")
            settings = meta.get("dataset_settings") or {}
            reader = {k: settings[k] for k in ("resampling", "harmonize", "scl_invalid") if settings.get(k) is not None}
            return cls(model.eval(), str(meta["task"]), bands, nom, int(meta["tile_size"]), mean, std,
                       float(meta.get("resolution") or 10.0), str(meta.get("label_mode") or "single"),
                       reader, sha256, path)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"the landcover section of {where} is incomplete ({exc!r}); use a checkpoint "
                             "written by `landcover train` (RUN/checkpoints/best.ckpt)") from exc


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the model of a ``landcover train`` checkpoint (torch.load + build_model, no Lightning)."""
    path = Path(path)
    hint = "point at RUN/checkpoints/best.ckpt of a `landcover train` run"
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read checkpoint {path} ({type(exc).__name__}: {first}); the file is truncated "
                         f"or not a PyTorch checkpoint: copy it again, or {hint}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("landcover"), dict) or "state_dict" not in ckpt:
        raise ModelError(f"{path} is not a landcover checkpoint (it has no 'landcover' section); {hint}")
    meta = ckpt["landcover"]
    info = LoadedModel.from_meta(nn.Identity(), meta, where=str(path))
    try:
        model, _ = build_model(ModelConfig.model_validate(meta["model"]), info.bands,
                               info.nomenclature.num_classes, load_weights=False)
    except Exception as exc:
        raise ModelError(f"cannot rebuild the model described by {path} ({exc}); {hint}") from exc
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)  # strict: a partial load must never pass silently
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"the weights in {path} do not fit the model its landcover section describes "
                         f"({first}); the file is damaged or edited: {hint}") from exc
    info.model = model.eval()
    with path.open("rb") as fh:
        info.sha256, info.path = hashlib.file_digest(fh, "sha256").hexdigest(), str(path)
    return info


# --- window geometry ------------------------------------------------------------------------------


class Plan(NamedTuple):
    """Windows over the reflect-padded scene: window (i, j) starts at (i, j) * stride - margin."""

    height: int
    width: int
    tile: int
    overlap: int
    margin: int
    stride: int
    rows: int
    cols: int
    padded_width: int


def make_plan(height: int, width: int, tile: int, overlap: int) -> Plan:
    """``margin = overlap``: every scene pixel lies in the flat part of a window or in two ramps."""
    if not 0 <= overlap <= tile // 2:
        raise ConfigError(f"--overlap {overlap} must be between 0 and half the tile ({tile // 2} px)")
    s = tile - overlap
    rows, cols = (max(1, math.ceil((n + overlap) / s)) for n in (height, width))
    return Plan(height, width, tile, overlap, overlap, s, rows, cols, (cols - 1) * s + tile)


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) weights: 1 inside, cosine ramps over ``overlap`` px at each edge.

    The ramps of two windows ``tile - overlap`` apart add up to exactly 1 (0.5 - c + 0.5 + c).
    """
    w = np.ones(tile, np.float64)
    if overlap:
        ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap))
        w[:overlap], w[tile - overlap:] = ramp, ramp[::-1]
    return np.outer(w, w).astype(np.float32)


def reflect_index(p: np.ndarray, n: int) -> np.ndarray:
    """Indices of a 0..n-1 axis padded by reflection (numpy's 'reflect', any pad width)."""
    if n == 1:
        return np.zeros_like(p)
    q = np.mod(p, 2 * (n - 1))
    return np.where(q >= n, 2 * (n - 1) - q, q)


# --- inputs ----------------------------------------------------------------------------------------


class _StackSource:
    """An ingested stack: band descriptions name the bands, values are already harmonised."""

    def __init__(self, path: Path, lm: LoadedModel):
        self.ds = open_raster(path)
        names, tags = [d or "" for d in self.ds.descriptions], self.ds.tags()
        if missing := [b for b in lm.bands if b not in names]:
            self.ds.close()
            raise MissingBandError(
                f"band(s) {', '.join(missing)} needed by the checkpoint are not in {path} (bands "
                f"{','.join(names)}); ingest the scene with --bands {','.join(lm.bands)} or use a "
                "checkpoint trained on these bands")
        if abs(self.ds.res[0] - lm.resolution) > 1e-6:
            self.ds.close()
            raise InputFormatError(f"{path} is at {self.ds.res[0]:g} m, the checkpoint at {lm.resolution:g} m; "
                                   "ingest the scene at the checkpoint's resolution")
        self.indexes = [names.index(b) + 1 for b in lm.bands]
        self.grid = Grid(self.ds.crs, self.ds.transform, self.ds.width, self.ds.height)
        self.product_id = tags.get("PRODUCT_ID", path.parent.name)
        self.baseline = tags.get("PROCESSING_BASELINE")

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image = self.ds.read(self.indexes, window=Window(0, r0, self.grid.width, r1 - r0))
        return image, image.any(axis=0), None

    def close(self) -> None:
        self.ds.close()


class _ProductSource:
    """Any input open_product accepts, read like ingest reads it (SceneReader)."""

    def __init__(self, path: Path, lm: LoadedModel):
        from landcover.sentinel2 import open_product
        from landcover.stack import SceneReader

        try:
            product = open_product(path).select(lm.bands)
        except MissingBandError as exc:
            raise MissingBandError(f"{path} lacks band(s) the checkpoint needs ({','.join(lm.bands)}): {exc}; "
                                   "use a product with these bands or a checkpoint trained on its bands") from exc
        except InputFormatError as exc:
            if "without band names" not in str(exc):
                raise
            raise InputFormatError(f"{path} has bands without names; name them (band descriptions B02, ...) "
                                   "or ingest it with `landcover ingest --bands ...` and predict the ingested "
                                   "scenes/<id>/image.tif") from exc
        self.reader = SceneReader(product, lm.bands, resolution=lm.resolution, prefetch=False, **lm.reader)
        self.grid, self.product_id = self.reader.grid, product.product_id
        self.baseline = product.processing_baseline

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        win = self.reader.read(Window(0, r0, self.grid.width, r1 - r0))
        return win.image, win.valid, win.cloud

    def close(self) -> None:
        self.reader.close()


def is_ingested_stack(path: Path) -> bool:
    """Whether ``path`` is an image.tif written by ``landcover ingest`` (harmonised values)."""
    if not path.is_file() or path.suffix.lower() not in (".tif", ".tiff"):
        return False
    with contextlib.suppress(Exception), rasterio.open(path) as ds:
        return ds.tags().get("SCALE") == STACK_SCALE
    return False


def _open_source(path: Path, lm: LoadedModel) -> _StackSource | _ProductSource:
    if not path.exists():
        raise InputFormatError(f"{path} does not exist; check the path")
    return _StackSource(path, lm) if is_ingested_stack(path) else _ProductSource(path, lm)


@dataclass
class _Row:
    valid: np.ndarray  # (tile, padded width) bool: pixels that get a class
    batches: list[tuple[list[int], torch.Tensor]]  # window columns, normalised (B, C, tile, tile)
    skipped: int


class _Feeder:
    """Prepares row ``k`` of windows: reflect-padded, normalised like training, batched.

    With ``pin`` (CUDA) the windows travel raw (pinned) and :meth:`to_device` normalises them on
    the GPU: the same float32 arithmetic, without the CPU passes that would make the reader thread,
    not the model, set the pace.
    """

    def __init__(self, source: _StackSource | _ProductSource, plan: Plan, lm: LoadedModel, batch_size: int, pin: bool,
                 mask_clouds: bool):
        self.source, self.plan, self.batch_size, self.pin, self.mask_clouds = source, plan, batch_size, pin, mask_clouds
        self.mean, self.std = lm.mean.reshape(1, -1, 1, 1), lm.std.reshape(1, -1, 1, 1)
        self.cols = reflect_index(np.arange(plan.padded_width) - plan.margin, plan.width)
        self.cache: tuple[int, np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None  # mean, std on the device

    def _rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Scene rows lo..hi, reusing the rows of the previous call (windows overlap)."""
        if self.cache is not None and self.cache[0] <= lo < self.cache[0] + self.cache[1].shape[1] < hi:
            c0, img, valid, cloud = self.cache
            new = self.source.rows(c0 + img.shape[1], hi)
            cut = lo - c0
            parts = zip((img[:, cut:], valid[cut:], None if cloud is None else cloud[cut:]), new, strict=True)
            got = tuple(None if a is None else np.concatenate([a, b], axis=0 if a.ndim == 2 else 1) for a, b in parts)
        elif self.cache is not None and self.cache[0] <= lo and hi <= self.cache[0] + self.cache[1].shape[1]:
            c0, img, valid, cloud = self.cache
            got = (img[:, lo - c0:hi - c0], valid[lo - c0:hi - c0], None if cloud is None else cloud[lo - c0:hi - c0])
        else:
            got = self.source.rows(lo, hi)
        self.cache = (lo, *got)  # type: ignore[assignment]
        return got  # type: ignore[return-value]

    def __call__(self, k: int) -> _Row:
        p, t = self.plan, self.plan.tile
        rows = reflect_index(np.arange(t) + k * p.stride - p.margin, p.height)
        lo = int(rows.min())
        img, valid, cloud = self._rows(lo, int(rows.max()) + 1)
        img = img.take(rows - lo, axis=1).take(self.cols, axis=2)
        valid = valid.take(rows - lo, axis=0).take(self.cols, axis=1)
        if self.mask_clouds and cloud is not None:
            valid &= ~cloud.take(rows - lo, axis=0).take(self.cols, axis=1)
        todo = [j for j in range(p.cols) if valid[:, j * p.stride:j * p.stride + t].any()]
        batches = []
        data = None if self.pin else img.any(axis=0)  # training zeroes pixels that are 0 in every band
        for i in range(0, len(todo), self.batch_size):
            cols = todo[i:i + self.batch_size]
            if data is None:  # raw values travel; to_device normalises them
                raw = np.stack([img[:, :, j * p.stride:j * p.stride + t] for j in cols])
                raw = raw.view(np.int16) if raw.dtype == np.uint16 else raw.astype(np.float32)
                batches.append((cols, torch.from_numpy(raw).pin_memory()))
                continue
            x = np.stack([img[:, :, j * p.stride:j * p.stride + t] for j in cols]).astype(np.float32)
            x -= self.mean
            x /= self.std
            x *= np.stack([data[:, j * p.stride:j * p.stride + t] for j in cols])[:, None]
            tensor = torch.from_numpy(x)
            batches.append((cols, tensor))
        return _Row(valid, batches, p.cols - len(todo))

    def to_device(self, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """A batch of :meth:`__call__` on ``dev``, normalised (on the device when it travelled raw)."""
        x = x.to(dev, non_blocking=True)
        if not self.pin:
            return x
        if x.dtype == torch.int16:  # uint16 viewed as int16 to travel (torch's uint16 support is partial)
            x = x.to(torch.int32).bitwise_and_(0xFFFF)
        x = x.float()
        if self._stats is None:
            self._stats = (torch.from_numpy(self.mean).to(dev), torch.from_numpy(self.std).to(dev))
        mean, std = self._stats
        return (x - mean) / std * (x != 0).any(dim=1, keepdim=True)


# --- outputs ---------------------------------------------------------------------------------------


class _BlockWriter:
    """Collects finished rows and writes whole block rows of a temporary GeoTIFF (each block once)."""

    def __init__(self, path: Path, grid: Grid, count: int, dtype: str, nodata: float | None, masked: bool):
        self.ds = rasterio.open(
            path, "w", driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=dtype,
            crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True, blockxsize=TMP_BLOCK,
            blockysize=TMP_BLOCK, compress="zstd", zstd_level=1, bigtiff="IF_SAFER",
            interleave="band" if count == 1 else "pixel")
        self.buf = np.zeros((count, TMP_BLOCK, grid.width), dtype)
        self.mask = np.zeros((TMP_BLOCK, grid.width), np.uint8) if masked else None
        self.start = self.filled = 0

    def add(self, data: np.ndarray, valid: np.ndarray) -> None:
        i = 0
        while i < data.shape[1]:
            n = min(data.shape[1] - i, TMP_BLOCK - self.filled)
            self.buf[:, self.filled:self.filled + n] = data[:, i:i + n]
            if self.mask is not None:
                self.mask[self.filled:self.filled + n] = valid[i:i + n] * 255
            self.filled, i = self.filled + n, i + n
            if self.filled == TMP_BLOCK:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            window = Window(0, self.start, self.ds.width, self.filled)
            self.ds.write(self.buf[:, :self.filled], window=window)
            if self.mask is not None:
                self.ds.write_mask(self.mask[:self.filled], window=window)
            self.start, self.filled = self.start + self.filled, 0


def output_paths(out: Path, *, probabilities: bool = False, confidence: bool = False,
                 quicklook: bool = True) -> dict[str, Path]:
    """The files of one prediction; ``map`` is written last."""
    paths = {"map": out, "qml": out.with_suffix(".qml")}
    if probabilities:
        paths["probabilities"] = out.with_name(f"{out.stem}_probabilities.tif")
    if confidence:
        paths["confidence"] = out.with_name(f"{out.stem}_confidence.tif")
    if quicklook:
        paths["quicklook"] = out.with_suffix(".png")
    return paths


def _to_cog(src: Path, dst: Path, resampling: str, nom: Nomenclature | None) -> None:
    rasterio.shutil.copy(src, dst, driver="COG", OVERVIEW_RESAMPLING=resampling, **COG_OPTIONS)
    if nom is None:
        return
    with rasterio.open(dst) as ds:
        kept = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
    if any(kept.get(i, (0, 0, 0, 0))[:3] != rgb for i, rgb in enumerate(nom.colors)):
        with rasterio.open(dst, "r+") as ds:  # GDAL dropped the palette: put it back
            ds.write_colormap(1, nom.colormap())


def _quicklook(cog: Path, png: Path, nom: Nomenclature, nodata: int, title: str, max_side: int = 1024) -> None:
    """A PNG of the class map (read from the COG's overviews) with a legend of the classes shown.

    Drawn on a bare Figure, not pyplot, so the caller's matplotlib backend (a notebook's) is left alone.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(cog) as ds:
        f = max(1.0, max(ds.width, ds.height) / max_side)
        arr = ds.read(1, out_shape=(max(1, round(ds.height / f)), max(1, round(ds.width / f))))
    lut = np.zeros((max(nodata, nom.num_classes) + 1, 4), np.float32)
    lut[: nom.num_classes, :3] = np.asarray(nom.colors, np.float32) / 255
    lut[: nom.num_classes, 3] = 1
    ids, counts = np.unique(arr[arr != nodata], return_counts=True)
    shown = [int(i) for i in ids[np.argsort(-counts)][:20] if i < nom.num_classes]
    fig = Figure(figsize=(10, 7))
    ax = fig.subplots()
    ax.imshow(lut[arr], interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    handles = [Patch(color=lut[i, :3], label=f"{nom.codes[i]} {nom.class_names[i]}") for i in shown]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(png, dpi=100, bbox_inches="tight", format="png")


@contextlib.contextmanager
def _temporaries() -> Iterator[Callable[[Path], Path]]:
    """``tmp(final)`` gives a temporary sibling; every one left over is removed at the end."""
    made: list[Path] = []

    def tmp(final: Path) -> Path:
        made.append(temporary_sibling(final))
        return made[-1]

    try:
        yield tmp
    finally:
        for path in made:
            for stale in (path, Path(f"{path}.aux.xml")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()


# --- prediction ------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown --device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def _probabilities(lm: LoadedModel, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
        logits = lm.model(x).float()
    k = lm.nomenclature.num_classes
    expect = (len(x), k, *x.shape[2:]) if lm.task == "segmentation" else (len(x), k)
    if tuple(logits.shape) != expect:
        raise ModelError(f"the model returned shape {tuple(logits.shape)} for input {tuple(x.shape)}, expected {expect}")
    if lm.task == "classification" and lm.label_mode == "multilabel":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def predict_scene(checkpoint_or_loaded_model: str | Path | LoadedModel, input: str | Path, out: str | Path, *,
                  overlap: int | None = None, tile: int | None = None, batch_size: int = 8, device: str = "auto",
                  probabilities: bool = False, confidence: bool = False, quicklook: bool = True,
                  overwrite: bool = False, mask_clouds: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Predict one scene into the COG ``out`` (and its side files); return a summary."""
    started = time.perf_counter()
    input, out = Path(input), Path(out)
    paths = output_paths(out, probabilities=probabilities, confidence=confidence, quicklook=quicklook)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    lm = checkpoint_or_loaded_model if isinstance(checkpoint_or_loaded_model, LoadedModel) \
        else load_checkpoint(checkpoint_or_loaded_model)
    seg = lm.task == "segmentation"
    t = int(tile or (lm.tile_size // MULTIPLE * MULTIPLE if seg else lm.tile_size))
    if t < 1 or (seg and t % MULTIPLE):
        raise ConfigError(f"tile {t} px: segmentation windows must be a positive multiple of {MULTIPLE} px")
    if not seg and overlap:
        raise ConfigError("--overlap applies to segmentation; classification predicts non-overlapping tiles")
    o = (t // 4 if overlap is None else int(overlap)) if seg else 0
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if dev.type == "cuda" else None
    lm.model.to(dev).eval()
    nom, k = lm.nomenclature, lm.nomenclature.num_classes
    dtype, nodata = ("uint8", IGNORE) if k <= 254 else ("uint16", 65535)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in paths.values():  # what a killed earlier run (e.g. a requeued array task) left of this scene
        remove_stale_temporaries(path)
    with rasterio.Env(**GDAL_ENV), _temporaries() as tmp, contextlib.closing(_open_source(input, lm)) as source:
        grid = source.grid
        plan = make_plan(grid.height, grid.width, t, o)
        gtiffs = {name: tmp(paths[name]) for name in ("map", "probabilities", "confidence") if name in paths}
        writers: dict[str, _BlockWriter] = {}
        try:
            writers["map"] = _BlockWriter(gtiffs["map"], grid, 1, dtype, nodata, False)
            if probabilities:
                writers["probabilities"] = _BlockWriter(gtiffs["probabilities"], grid, k, "uint8", None, True)
            if confidence:
                writers["confidence"] = _BlockWriter(gtiffs["confidence"], grid, 1, "uint8", None, True)
            feeder = _Feeder(source, plan, lm, batch_size, dev.type == "cuda", mask_clouds)
            try:
                run, skipped = _stream(lm, plan, feeder, writers, dev, amp, dtype, nodata,
                                       lambda done: progress and progress(f"{out.stem}: predict", done, plan.rows))
            except torch.cuda.OutOfMemoryError as exc:
                raise ConfigError(f"the GPU ran out of memory with --batch-size {batch_size} and {t}-px windows; "
                                  "pass a smaller --batch-size (or --tile)") from exc
        finally:
            for bw in writers.values():
                bw.ds.close()
        if progress:
            progress(f"{out.stem}: COG", 0, 1)
        tags = {"PRODUCT_ID": source.product_id, "PROCESSING_BASELINE": str(source.baseline), "INPUT": str(input),
                "CHECKPOINT": lm.path or "in-memory model", "CHECKPOINT_SHA256": lm.sha256 or "none",
                "BANDS": json.dumps(lm.bands), "TASK": lm.task, "TILE_SIZE": str(t), "OVERLAP": str(o),
                "BLENDING": "cosine ramps over the overlap, weights sum to 1", "SOFTWARE": f"landcover {__version__}"}
        with rasterio.open(gtiffs["map"], "r+") as ds:
            style_class_map(ds, nom, **tags)
        if probabilities:
            with rasterio.open(gtiffs["probabilities"], "r+") as ds:
                ds.update_tags(SCALE="probability x 255", NOMENCLATURE=nom.name, **tags)
                for i, name in enumerate(nom.class_names, 1):
                    ds.set_band_description(i, f"{nom.codes[i - 1]} {name}")
        if confidence:
            with rasterio.open(gtiffs["confidence"], "r+") as ds:
                ds.update_tags(SCALE="max class probability x 255", **tags)
                ds.set_band_description(1, "confidence (max class probability x 255)")
        finals = {name: tmp(paths[name]) for name in paths if name != "qml"}
        for name in ("probabilities", "confidence"):
            if name in gtiffs:
                _to_cog(gtiffs[name], finals[name], "AVERAGE", None)
        _to_cog(gtiffs["map"], finals["map"], "MODE", nom)
        if quicklook:
            _quicklook(finals["map"], finals["quicklook"], nom, nodata, f"{source.product_id} ({nom.name})")
        for name in finals:
            if name != "map":
                os.replace(finals[name], paths[name])
        write_qgis_style(out, nom)
        os.replace(finals["map"], out)  # last: the final name means 'complete'
    return {"input": str(input), "out": {name: str(p) for name, p in paths.items()}, "grid": grid.to_dict(),
            "product_id": source.product_id, "tile": t, "overlap": o, "device": str(dev),
            "windows_run": run, "windows_skipped": skipped, "seconds": round(time.perf_counter() - started, 3),
            "skipped": False}


def _stream(lm: LoadedModel, plan: Plan, feeder: _Feeder, writers: dict[str, _BlockWriter], dev: torch.device,
            amp: torch.dtype | None, dtype: str, nodata: int, progress: Callable[[int], Any]) -> tuple[int, int]:
    """Run the model row of windows by row, blend into a strip, hand finished rows to the writer."""
    t, s, m, o, width = plan.tile, plan.stride, plan.margin, plan.overlap, plan.width
    k = lm.nomenclature.num_classes
    weights = torch.from_numpy(blend_weights(t, o)).to(dev)
    acc = torch.zeros((k, t, plan.padded_width), device=dev)
    wsum = torch.zeros((t, plan.padded_width), device=dev)
    reader, writer = (ThreadPoolExecutor(1, initializer=_enter_env, initargs=(GDAL_ENV,)) for _ in range(2))
    pending: list[Future[None]] = []
    run = skipped = 0
    try:
        ahead = reader.submit(feeder, 0)
        with torch.inference_mode():
            for i in range(plan.rows):
                row = ahead.result()
                if i + 1 < plan.rows:
                    ahead = reader.submit(feeder, i + 1)  # read the next row while the model runs
                skipped += row.skipped
                for cols, x in row.batches:
                    probs = _probabilities(lm, feeder.to_device(x, dev), amp)
                    if probs.ndim == 2:  # classification: one probability vector per tile
                        probs = probs[:, :, None, None].expand(-1, -1, t, t)
                    for b, j in enumerate(cols):
                        acc[:, :, j * s:j * s + t].addcmul_(probs[b], weights)
                        wsum[:, j * s:j * s + t].add_(weights)
                    run += len(cols)
                lo, hi = max(0, m - i * s), min(s, plan.height - (i * s - m))  # finished rows in the strip
                if hi > lo:
                    outputs = _finish(acc[:, lo:hi, m:m + width], wsum[lo:hi, m:m + width],
                                      row.valid[lo:hi, m:m + width], dtype, nodata,
                                      "probabilities" in writers, "confidence" in writers)
                    pending.append(writer.submit(_write, writers, outputs))
                    while len(pending) > 2 or (pending and pending[0].done()):
                        pending.pop(0).result()
                if o:  # move the strip down by one stride
                    acc[:, :o].copy_(acc[:, s:])
                    wsum[:o].copy_(wsum[s:])
                acc[:, o:].zero_()
                wsum[o:].zero_()
                progress(i + 1)
        for future in pending:
            future.result()
        for bw in writers.values():
            writer.submit(bw.flush).result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
    return run, skipped


def _finish(acc: torch.Tensor, wsum: torch.Tensor, valid: np.ndarray, dtype: str, nodata: int,
            probabilities: bool, confidence: bool, chunk: int = 1024) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Finished rows -> class ids (nodata outside ``valid``), optional probabilities and confidence x 255."""
    parts: dict[str, list[np.ndarray]] = {"map": [], "probabilities": [], "confidence": []}
    for c in range(0, acc.shape[2], chunk):  # column chunks keep the temporaries small
        p = acc[:, :, c:c + chunk] / wsum[:, c:c + chunk].clamp_min(1e-12)
        best, ids = p.max(dim=0)
        parts["map"].append(ids.cpu().numpy().astype(dtype)[None])
        if probabilities:
            parts["probabilities"].append(p.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy())
        if confidence:
            parts["confidence"].append(best.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()[None])
    result = {}
    for name, arrays in parts.items():
        if arrays:
            data = np.concatenate(arrays, axis=2)
            data[:, ~valid] = nodata if name == "map" else 0
            result[name] = (data, valid)
    return result


def _write(writers: dict[str, _BlockWriter], outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (data, valid) in outputs.items():
        writers[name].add(data, valid)


def _enter_env(options: dict[str, Any]) -> None:
    """Give a worker thread landcover's GDAL options (rasterio's environment is per thread)."""
    rasterio.Env(**options).__enter__()


def scene_name(path: str | Path) -> str:
    """Output name of an input: the scene folder of an ingested image.tif, else the product's name."""
    p = Path(path)
    while p.name.upper() in ("IMG_DATA", "R10M", "R20M", "R60M") and p.parent != p:
        p = p.parent  # a band folder inside a product: name it after the product folder
    name = p.parent.name if p.name == "image.tif" and is_ingested_stack(p) else p.name
    for suffix in (".zip", ".SAFE", ".tiff", ".tif", ".jp2"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "scene"


def predict_many(checkpoint_or_loaded_model: str | Path | LoadedModel, inputs: Sequence[str | Path],
                 out_dir: str | Path, *, overwrite: bool = False, progress: Progress | None = None,
                 **options: Any) -> list[dict[str, Any]]:
    """Predict each input into ``out_dir/<scene>.tif``, skipping scenes whose outputs are complete."""
    if not inputs:
        raise ConfigError("no input given: pass Sentinel-2 products, ingested image.tif files, or --from-list FILE")
    names = [scene_name(p) for p in inputs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"inputs repeat a scene ({', '.join(dup)}); give each scene once")
    lm = checkpoint_or_loaded_model  # loaded when a scene needs it: a finished batch costs nothing
    flags = {k: options[k] for k in ("probabilities", "confidence", "quicklook") if k in options}
    summaries = []
    for i, (path, name) in enumerate(zip(inputs, names, strict=True)):
        target = Path(out_dir) / f"{name}.tif"
        if progress:
            progress("scenes", i, len(inputs))
        if not overwrite and all(p.exists() for p in output_paths(target, **flags).values()):
            summaries.append({"input": str(path), "out": {"map": str(target)}, "skipped": True})
            continue
        lm = lm if isinstance(lm, LoadedModel) else load_checkpoint(lm)
        summaries.append(predict_scene(lm, path, target, overwrite=True, progress=progress, **options))
    if progress:
        progress("scenes", len(inputs), len(inputs))
    return summaries
