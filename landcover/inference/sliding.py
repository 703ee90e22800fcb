"""Sliding windows over whole scenes, for ``predict`` and ``explain``: window geometry, the readers
that feed rows of windows (an ingested stack, or a Sentinel-2 product through the ingest reader), and
the writers (block rows of temporary GeoTIFFs, then Cloud-Optimized GeoTIFFs and quick looks).

See :mod:`landcover.inference.predict` for how the windows are blended and streamed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window

from landcover.errors import ConfigError, InputFormatError, MissingBandError
from landcover.io.grid import Grid, open_raster, temporary_sibling
from landcover.io.outputs import check_written, writing
from landcover.nomenclature import Nomenclature
from landcover.sources.s2meta import parse_name

if TYPE_CHECKING:
    from landcover.inference.checkpoint import LoadedModel

STACK_SCALE = "reflectance x 10000"  # the SCALE tag of an ingested scenes/<id>/image.tif
TMP_BLOCK = 256  # block side of the temporary GeoTIFFs (written one whole block row at a time)
COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": 512, "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}
EXPECTED: dict[Path, int] = {}  # uncompressed bytes of each temporary GeoTIFF a BlockWriter writes (full-disk messages)


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


class StackSource:
    """An ingested stack: band descriptions name the bands, values are already harmonised."""

    def __init__(self, path: Path, lm: LoadedModel):
        self.ds = open_raster(path)
        names, tags = [d or "" for d in self.ds.descriptions], self.ds.tags()
        if missing := [b for b in lm.bands if b not in names]:
            self.ds.close()
            raise MissingBandError(
                f"band(s) {', '.join(missing)} needed by the checkpoint are not in {path} (bands "
                f"{','.join(names)}); ingest the scene with `landcover ingest --bands {','.join(lm.bands)}` or use "
                "a checkpoint trained on these bands")
        if abs(self.ds.res[0] - lm.resolution) > 1e-6:
            self.ds.close()
            raise InputFormatError(f"{path} is at {self.ds.res[0]:g} m, the checkpoint at {lm.resolution:g} m; "
                                   "ingest the scene at the checkpoint's resolution")
        self.indexes = [names.index(b) + 1 for b in lm.bands]
        self.grid = Grid(self.ds.crs, self.ds.transform, self.ds.width, self.ds.height)
        self.product_id = tags.get("PRODUCT_ID", path.parent.name)
        self.baseline = tags.get("PROCESSING_BASELINE")
        named = parse_name(self.product_id)  # stacks ingested before PROCESSING_LEVEL was tagged
        self.level = tags.get("PROCESSING_LEVEL") or (named.level if named and named.level else "unknown")

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image = self.ds.read(self.indexes, window=Window(0, r0, self.grid.width, r1 - r0))
        return image, image.any(axis=0), None

    def close(self) -> None:
        self.ds.close()


class ProductSource:
    """Any input open_product accepts, read like ingest reads it (SceneReader)."""

    def __init__(self, path: Path, lm: LoadedModel):
        from landcover.sources.reader import SceneReader
        from landcover.sources.sentinel2 import open_product

        try:
            product = open_product(path)
            if missing := [b for b in lm.bands if b not in product.bands]:  # a message without ingest's --bands
                raise MissingBandError(
                    f"{path} lacks band(s) {','.join(missing)} that the checkpoint needs (it has "
                    f"{','.join(product.bands) or 'none'}; the checkpoint uses {','.join(lm.bands)}): use a product "
                    "with these bands or a checkpoint trained on its bands")
            product = product.select(lm.bands)
        except InputFormatError as exc:
            if "without band names" not in str(exc):
                raise
            raise InputFormatError(f"{path} has bands without names; name them (band descriptions B02, ...) "
                                   "or ingest it with `landcover ingest --bands ...` and predict the ingested "
                                   "scenes/<id>/image.tif") from exc
        self.reader = SceneReader(product, lm.bands, resolution=lm.resolution, prefetch=False, **lm.reader)
        self.grid, self.product_id = self.reader.grid, product.product_id
        self.baseline = product.processing_baseline
        self.level = product.level

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


def open_source(path: Path, lm: LoadedModel) -> StackSource | ProductSource:
    if not path.exists():
        raise InputFormatError(f"{path} does not exist; check the path")
    return StackSource(path, lm) if is_ingested_stack(path) else ProductSource(path, lm)


@dataclass
class Row:
    valid: np.ndarray  # (tile, padded width) bool: pixels that get a class
    batches: list[tuple[list[int], torch.Tensor]]  # window columns, normalised (B, C, tile, tile)
    skipped: int


class Feeder:
    """Prepares row ``k`` of windows: reflect-padded, normalised like training, batched.

    With ``pin`` (CUDA) the windows travel raw (pinned) and :meth:`to_device` normalises them on
    the GPU: the same float32 arithmetic, without the CPU passes that would make the reader thread,
    not the model, set the pace.
    """

    def __init__(self, source: StackSource | ProductSource, plan: Plan, lm: LoadedModel, batch_size: int, pin: bool,
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

    def __call__(self, k: int) -> Row:
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
        data = None if self.pin else np.asarray(img.any(axis=0))  # training zeroes pixels that are 0 in every band
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
        return Row(valid, batches, p.cols - len(todo))

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


class BlockWriter:
    """Collects finished rows and writes whole block rows of a temporary GeoTIFF (each block once)."""

    def __init__(self, path: Path, grid: Grid, count: int, dtype: str, nodata: float | None, masked: bool):
        EXPECTED[path] = grid.width * grid.height * (count * np.dtype(dtype).itemsize + masked)
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


def to_cog(src: Path, dst: Path, resampling: str, nom: Nomenclature | None) -> None:
    check_written()  # the GeoTIFF to copy was written whole
    rasterio.shutil.copy(src, dst, driver="COG", OVERVIEW_RESAMPLING=resampling, **COG_OPTIONS)
    check_written()
    if nom is None:
        return
    with rasterio.open(dst) as ds:
        kept = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
    if any(kept.get(i, (0, 0, 0, 0))[:3] != rgb for i, rgb in enumerate(nom.colors)):
        with rasterio.open(dst, "r+") as ds:  # GDAL dropped the palette: put it back
            ds.write_colormap(1, nom.colormap())


def write_quicklook(cog: Path, png: Path, nom: Nomenclature, nodata: int, title: str, max_side: int = 1024) -> None:
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
    handles = [Patch(color=(float(lut[i, 0]), float(lut[i, 1]), float(lut[i, 2])), label=f"{nom.codes[i]} {nom.class_names[i]}")
               for i in shown]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(png, dpi=100, bbox_inches="tight", format="png")


@contextlib.contextmanager
def temporaries(output: Path | None = None) -> Iterator[Callable[[Path], Path]]:
    """``tmp(final)`` gives a temporary sibling; every one left over is removed at the end.

    A write failure in the block (permission, full disk) is an :class:`~landcover.errors.OutputError` naming
    ``output`` (default: the first final path); with a full disk it tells about what the GeoTIFFs of :class:`BlockWriter` and their COG
    copies need (uncompressed, so at most).
    """
    made: list[Path] = []

    def needed() -> int | None:
        return sum(2 * EXPECTED.get(path, 0) for path in made) or None

    try:
        with writing(output, needed) as guard:

            def tmp(final: Path) -> Path:
                if guard.path is None:
                    guard.path = final
                made.append(temporary_sibling(final))
                guard.temporaries.extend([made[-1], Path(f"{made[-1]}.aux.xml")])
                return made[-1]

            yield tmp
    finally:
        for path in made:
            EXPECTED.pop(path, None)
            for stale in (path, Path(f"{path}.aux.xml")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
