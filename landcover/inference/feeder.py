"""Scenes fed to the model window row by window row: an ingested stack or any product ingest reads, padded by
reflection, normalised with the checkpoint's statistics, read in a background thread while the model runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from landcover.errors import InputFormatError, MissingBandError
from landcover.inference.sliding import Plan
from landcover.io.aoi import AOI, AOIMask, aoi_window, no_overlap, sub_grid
from landcover.io.grid import Grid, open_raster, reflect_index
from landcover.sources.s2meta import parse_name
from landcover.sources.stac_refs import is_stac_input, split_reference

if TYPE_CHECKING:
    from landcover.inference.model_info import ModelInfo


STACK_SCALE = "reflectance x 10000"  # the SCALE tag of an ingested scenes/<id>/image.tif


class SceneSource(Protocol):
    """What the feeder reads a scene from: an ingested stack, a product, or a composite of products."""

    grid: Grid
    window: Window | None  # the scene grid's window over the area of interest (None without one)
    product_id: str
    baseline: str | None
    level: str
    sensing_time: str | None

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Scene rows r0..r1: raw image (C, rows, width), valid (rows, width), cloud (rows, width) or None."""
        ...

    def close(self) -> None: ...


class StackSource:
    """An ingested stack: band descriptions name the bands, values are already harmonised."""

    def __init__(self, path: Path, lm: ModelInfo, aoi: AOI | None = None):
        self.ds = open_raster(path)
        names, tags = [d or "" for d in self.ds.descriptions], self.ds.tags()
        if missing := [b for b in lm.bands if b not in names]:
            self.ds.close()
            raise MissingBandError(
                f"band(s) {', '.join(missing)} needed by the checkpoint are not in {path} (bands "
                f"{','.join(names)}); ingest the scene with `landcover ingest --bands {','.join(lm.bands)}` or use "
                "a checkpoint trained on these bands"
            )
        if abs(self.ds.res[0] - lm.resolution) > 1e-6:
            self.ds.close()
            raise InputFormatError(
                f"{path} is at {self.ds.res[0]:g} m, the checkpoint at {lm.resolution:g} m; "
                "ingest the scene at the checkpoint's resolution"
            )
        self.indexes = [names.index(b) + 1 for b in lm.bands]
        self.grid = Grid(self.ds.crs, self.ds.transform, self.ds.width, self.ds.height)
        self.window, self._inside = None, None
        if aoi is not None:  # the stack's window over the AOI
            self.window = aoi_window(self.grid, aoi)
            if self.window is None:
                self.ds.close()
                raise no_overlap(aoi, [(path.name, self.grid)])
            self.grid = sub_grid(self.grid, self.window)
            self._inside = AOIMask(aoi, self.grid)
        self.product_id = tags.get("PRODUCT_ID", path.parent.name)
        self.baseline = tags.get("PROCESSING_BASELINE")
        named = parse_name(self.product_id)  # stacks ingested before PROCESSING_LEVEL was tagged
        self.level = tags.get("PROCESSING_LEVEL") or (named.level if named and named.level else "unknown")
        sensing = tags.get("SENSING_TIME", "unknown")  # stacks ingested before it was tagged: the product name's
        self.sensing_time = sensing if sensing != "unknown" else (named.sensing_time if named else None)

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        c, r = (0, 0) if self.window is None else (int(self.window.col_off), int(self.window.row_off))
        image = self.ds.read(self.indexes, window=Window(c, r0 + r, self.grid.width, r1 - r0))
        valid = image.any(axis=0)
        if self._inside is not None:
            valid &= self._inside.inside(Window(0, r0, self.grid.width, r1 - r0))
        return image, valid, None

    def close(self) -> None:
        self.ds.close()


class ProductSource:
    """Any input open_product accepts, read like ingest reads it (SceneReader); with ``clouds``, its clouds are
    masked as the checkpoint's dataset masked them (``clouds`` settings: e.g. the detector on L1C products)."""

    def __init__(
        self,
        path: Path | str,
        lm: ModelInfo,
        aoi: AOI | None = None,
        sign: Callable[[str], str] | None = None,
        clouds: bool = False,
    ):
        from landcover.sources.clouds import CloudConfig, bands_to_read
        from landcover.sources.reader import SceneReader
        from landcover.sources.sentinel2 import open_product

        try:
            product = open_product(path, sign=sign)
            if missing := [b for b in lm.bands if b not in product.bands]:  # a message without ingest's --bands
                raise MissingBandError(
                    f"{path} lacks band(s) {','.join(missing)} that the checkpoint needs (it has "
                    f"{','.join(product.bands) or 'none'}; the checkpoint uses {','.join(lm.bands)}): use a product "
                    "with these bands or a checkpoint trained on its bands"
                )
            masking = CloudConfig.model_validate(lm.reader["clouds"]) if clouds and lm.reader.get("clouds") else None
            product = product.select(bands_to_read(product, lm.bands, masking))  # + the cloud detector's bands
        except InputFormatError as exc:
            if "without band names" not in str(exc):
                raise
            raise InputFormatError(
                f"{path} has bands without names; name them (band descriptions B02, ...) "
                "or ingest it with `landcover ingest --bands ...` and predict the ingested "
                "scenes/<id>/image.tif"
            ) from exc
        settings = {k: v for k, v in lm.reader.items() if k != "clouds"}
        self.reader = SceneReader(
            product, lm.bands, resolution=lm.resolution, prefetch=False, aoi=aoi, clouds=masking, **settings
        )
        self.grid, self.window, self.product_id = self.reader.grid, self.reader.window, product.product_id
        self.baseline = product.processing_baseline
        self.level = product.level
        self.sensing_time = product.sensing_time

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


def open_source(
    path: Path | str | Sequence[Path | str],
    lm: ModelInfo,
    aoi: AOI | None = None,
    *,
    sign: Callable[[str], str] | None = None,
    clouds: bool = False,
) -> SceneSource:
    """The scene at ``path``: an ingested stack, any product, or a STAC item ``doc.json#<item id>`` (``sign``
    rewrites its http(s) hrefs); on its grid's window over ``aoi`` if given. ``clouds``: a product's clouds are
    computed as the checkpoint's dataset computed them (only needed when they are masked). For a model trained on
    multi-date composites, ``path`` may be several products: the composite of the model's recipe is built from
    them, with the clouds (SCL, the detector) left out of its periods as ingest left them out."""
    if not isinstance(path, (str, Path)) or (lm.composite is not None and not is_ingested_stack(Path(path))):
        from landcover.inference.composite_source import CompositeSource

        paths = [path] if isinstance(path, (str, Path)) else list(path)
        if lm.composite is None:
            raise InputFormatError(
                f"{len(paths)} inputs for one map, but the model was trained on single dates: predict each "
                "product into its own map (pass a folder as --out)"
            )
        return CompositeSource(paths, lm, aoi, sign)
    if not split_reference(path)[0].exists():
        raise InputFormatError(f"{path} does not exist; check the path")
    if is_stac_input(path):
        return ProductSource(path, lm, aoi, sign, clouds)
    if is_ingested_stack(Path(path)):
        return StackSource(Path(path), lm, aoi)
    return ProductSource(path, lm, aoi, sign, clouds)


@dataclass
class Row:
    """Row ``k`` of windows: the scene rows under it (raw values, unpadded), how the reflect-padded row maps onto
    them, and which pixels get a class. Windows are cut from the scene rows when the model needs them, so the
    padded row itself is never held."""

    source: np.ndarray  # (C, rows, width) raw scene rows (harmonised reflectance x 10000; 0 = no data)
    rows: np.ndarray  # (tile,) the source row of each padded row
    cols: np.ndarray  # (padded width,) the source column of each padded column
    valid: np.ndarray  # (tile, padded width) bool: pixels that get a class
    todo: list[int]  # the columns of the windows that hold a valid pixel
    skipped: int
    stride: int
    tile: int

    def windows(self, cols: list[int]) -> np.ndarray:
        """(B, C, tile, tile) raw values of the windows at ``cols``."""
        s, t = self.stride, self.tile
        out = np.empty((len(cols), self.source.shape[0], t, t), self.source.dtype)
        r = _as_slice(self.rows)
        for b, j in enumerate(cols):
            c = _as_slice(self.cols[j * s : j * s + t])
            if r is not None and c is not None:  # inside the scene: a plain copy (8x faster than fancy indexing)
                out[b] = self.source[:, r, c]
            else:  # the reflect-padded border
                out[b] = self.source[:, self.rows[:, None], self.cols[None, j * s : j * s + t]]
        return out


def _as_slice(index: np.ndarray) -> slice | None:
    """``index`` as a slice when it is a run of consecutive integers, else None."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and bool((np.diff(index) == 1).all()):
        return slice(int(index[0]), int(index[-1]) + 1)
    return None


class Feeder:
    """Prepares row ``k`` of windows: the raw values reflect-padded (an engine normalises them), with the pixels
    that get a class. Only the raw row is held (uint16 for a stack): batches are cut from it when the model
    needs them."""

    def __init__(self, source: SceneSource, plan: Plan, batch_size: int, mask_clouds: bool):
        self.source, self.plan, self.batch_size, self.mask_clouds = source, plan, batch_size, mask_clouds
        self.cols = reflect_index(np.arange(plan.padded_width) - plan.margin, plan.width)
        self.cache: tuple[int, np.ndarray, np.ndarray, np.ndarray | None] | None = None

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
            got = (
                img[:, lo - c0 : hi - c0],
                valid[lo - c0 : hi - c0],
                None if cloud is None else cloud[lo - c0 : hi - c0],
            )
        else:
            got = self.source.rows(lo, hi)
        self.cache = (lo, *got)  # type: ignore[assignment]
        return got  # type: ignore[return-value]

    def __call__(self, k: int) -> Row:
        p, t = self.plan, self.plan.tile
        rows = reflect_index(np.arange(t) + k * p.stride - p.margin, p.height)
        lo = int(rows.min())
        img, valid, cloud = self._rows(lo, int(rows.max()) + 1)
        valid = valid.take(rows - lo, axis=0).take(self.cols, axis=1)
        if self.mask_clouds and cloud is not None:
            valid &= ~cloud.take(rows - lo, axis=0).take(self.cols, axis=1)
        todo = [j for j in range(p.cols) if valid[:, j * p.stride : j * p.stride + t].any()]
        return Row(img, rows - lo, self.cols, valid, todo, p.cols - len(todo), p.stride, t)

    def batches(self, row: Row) -> Iterator[tuple[list[int], np.ndarray]]:
        """The row's windows with a valid pixel, ``batch_size`` at a time: (columns, raw (B, C, tile, tile))."""
        for i in range(0, len(row.todo), self.batch_size):
            cols = row.todo[i : i + self.batch_size]
            yield cols, row.windows(cols)
