"""Read a Sentinel-2 product onto one analysis-ready grid, window by window.

* Bands are resampled onto the target grid (10 m by default) with GDAL's warper: bilinear
  (or cubic) for reflectance, nearest for SCL and masks. A band already on the target grid is
  read as it is, so 10 m bands are copied exactly.
* Radiometry is harmonised: ``value = (DN + offset) * 10000 / quantification``, where ``offset`` is
  the product's ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` (-1000 from processing baseline 04.00 on,
  0 before), so scenes of every baseline share one reflectance x 10000 scale. DN 0 stays 0
  (no data); valid pixels are clipped to >= 1 so they never become no-data.
* ``valid`` marks pixels where every band has data (and, with an area of interest, whose centre lies in its
  polygons); ``cloud`` marks SCL classes of the invalid set (or a cloud mask's non-zero pixels).
* With an area of interest (``aoi``) the grid is the scene grid's window over the AOI's bounds (whole
  pixels, :func:`landcover.io.aoi.aoi_window`): only the source blocks under it are read. Pixels outside
  the polygons keep their values (a model sees them as context) but are not ``valid``.
* Reading full-width strips top to bottom (what ingest does) decodes every JPEG 2000 tile once, on
  all cores (bands in parallel, GDAL's tile threads within a band), and reads the next strip in the
  background while the caller writes the current one. Memory: two strips, one row of source blocks
  per band at the target resolution, and the coarser bands whole (about 0.4 GB for a full L2A
  tile); ``scripts/bench_ingest.py`` measures time and memory against the JP2 decode alone.

Each band is read by a :class:`~landcover.sources.band_reader.BandReader`; this module owns the
scene: the target grid, the harmonised radiometry, the masks, the parallel and read-ahead reads.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.errors import ProductMismatchError
from landcover.io.aoi import AOI, AOIMask, aoi_window, no_overlap, sub_grid
from landcover.io.grid import Grid, open_raster
from landcover.nomenclature import default_scl_invalid
from landcover.sources.band_reader import BandReader
from landcover.sources.clouds import CloudConfig, CloudMasker, crop
from landcover.sources.sentinel2 import Product

NODATA = 0
RESAMPLING = {"bilinear": Resampling.bilinear, "cubic": Resampling.cubic, "nearest": Resampling.nearest}


@dataclass
class SceneWindow:
    image: np.ndarray  # (C, H, W) uint16 reflectance x 10000, 0 = no data
    valid: np.ndarray  # (H, W) bool: every band has data
    cloud: np.ndarray | None  # (H, W) bool: SCL-invalid / cloud-mask / detected pixels, None without a mask
    counts: np.ndarray | None = None  # (P, H, W) uint8 valid observations per period (composites only)
    cloud_probability: np.ndarray | None = None  # (H, W) float32 0..1: the cloud detector's, None where it did not run


class StackReader(Protocol):
    """What ingest reads a stack through: :class:`SceneReader` (one product) or a composite's reader."""

    grid: Grid
    bands: list[str]

    def read(self, window: Window) -> SceneWindow: ...

    def provenance(self) -> dict[str, Any]: ...


def target_grid(product: Product, bands: Sequence[str], resolution: float) -> Grid:
    """The grid at ``resolution`` over the extent of the finest of ``bands``, snapped to its origin."""
    finest = min((product.bands[b] for b in bands), key=lambda bf: bf.resolution)
    with open_raster(finest.path) as src:
        if src.crs is None:
            raise ProductMismatchError(f"{finest.path} has no CRS; is it a Sentinel-2 band file?")
        left, bottom, right, top = src.bounds
        crs = src.crs
    width = max(1, round((right - left) / resolution))
    height = max(1, round((top - bottom) / resolution))
    transform = rasterio.transform.from_origin(left, top, resolution, resolution)
    return Grid(crs, transform, width, height)


def _harmonise(band: np.ndarray, has_data: np.ndarray | None, offset: float, scale: float) -> None:
    """``band`` (uint16 DN) -> reflectance x 10000 in place: rint((DN + offset) * scale) in 1..65535.

    Pixels without data (``has_data`` False) are left for the caller to set to no-data.
    """
    if scale == 1.0 and float(offset).is_integer() and abs(offset) < 65535:
        off = int(offset)  # the usual case (offset -1000 or 0, quantification 10000): integer maths
        if off < 0:
            np.maximum(band, 1 - off, out=band)
            np.subtract(band, -off, out=band)
        elif off > 0:
            np.minimum(band, 65535 - off, out=band)
            np.add(band, off, out=band)
        return
    value = np.clip(np.rint((band.astype(np.float32) + offset) * scale), 1, 65535)
    band[...] = value if has_data is None else np.where(has_data, value, NODATA)


class SceneReader:
    """Windows of a product's bands on one grid, harmonised, with validity and cloud masks.

    ``grid`` (default: the product's own grid at ``resolution``, cut to ``aoi``) reads the product onto
    another grid, e.g. a product of another date or tile onto the grid of a composite (bands warp as needed).

    Bands are read in parallel (one task per band on ``threads`` threads). When ``prefetch`` is on
    and a full-width window is read, the window below it (same height) is read in the background
    while the caller works on this one, so reading strips top to bottom overlaps decoding with the
    caller's own work; a window asked for out of that order is simply read then.
    """

    def __init__(
        self,
        product: Product,
        bands: Sequence[str],
        *,
        resolution: float = 10.0,
        resampling: str = "bilinear",
        harmonize: bool = True,
        scl_invalid: Sequence[int] | None = None,
        threads: int | None = None,
        prefetch: bool = True,
        aoi: AOI | None = None,
        grid: Grid | None = None,
        clouds: CloudConfig | dict[str, Any] | None = None,
    ):
        self.product = product
        self.bands = list(bands)
        self.scene_grid = target_grid(product, self.bands, resolution) if grid is None else grid
        self.grid, self.window, self._inside = self.scene_grid, None, None
        if grid is not None and aoi is not None:  # a given grid is used as it is; the AOI only masks
            self._inside = AOIMask(aoi, grid)
        elif aoi is not None:  # the scene grid's window over the AOI: the scene's own pixels, a part of them
            self.window = aoi_window(self.scene_grid, aoi)
            if self.window is None:
                raise no_overlap(aoi, [(product.product_id, self.scene_grid)])
            self.grid = sub_grid(self.scene_grid, self.window)
            self._inside = AOIMask(aoi, self.grid)
        method = RESAMPLING[resampling]
        config = CloudConfig.model_validate(clouds) if isinstance(clouds, dict) else clouds
        self.clouds = None if config is None else CloudMasker(product, self.bands, config, resolution)
        read_bands = self.bands + ([] if self.clouds is None else self.clouds.extra_bands)
        self._readers: list[BandReader] = []
        self._mask_reader: BandReader | None = None
        options = rasterio.env.getenv() if rasterio.env.hasenv() else {}
        self._pool = ThreadPoolExecutor(
            max_workers=threads or max(2, min(len(self.bands), 4)), initializer=_enter_env, initargs=(options,)
        )
        self._ahead = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self._next: tuple[tuple[int, int, int, int], Future[SceneWindow]] | None = None
        self._inflight: set[Future[Any]] = set()
        try:
            for b in read_bands:
                exact = product.bands[b].resolution == resolution
                self._readers.append(
                    BandReader(product.bands[b], self.grid, Resampling.nearest if exact else method, NODATA)
                )
            self.offsets = [float(product.offsets.get(b, 0.0)) if harmonize else 0.0 for b in read_bands]
            self.scale = 10000.0 / product.quantification if harmonize and product.quantification else 1.0
            self.scl_invalid = np.array(sorted(default_scl_invalid() if scl_invalid is None else scl_invalid))
            mask = product.scl or product.cloud_mask
            self._mask_reader = BandReader(mask, self.grid, Resampling.nearest, None) if mask else None
        except BaseException:
            self.close()
            raise
        self._mask_is_scl = product.scl is not None
        invalid = self.scl_invalid[(self.scl_invalid > 0) & (self.scl_invalid < 256)].astype(np.intp)
        self._invalid_lut = np.zeros(256, dtype=bool)
        self._invalid_lut[invalid] = True

    def provenance(self) -> dict[str, Any]:
        return {
            "product_id": self.product.product_id,
            "level": self.product.level,
            "processing_baseline": self.product.processing_baseline,
            "metadata_source": self.product.metadata_source,
            "offsets_applied": dict(zip(self.bands, self.offsets[: len(self.bands)], strict=True)),
            "quantification": self.product.quantification,
            "resampled_bands": [r.band.band for r in self._readers if r.warped],
            "mask": None if self._mask_reader is None else ("SCL" if self._mask_is_scl else "cloud_mask"),
            "warnings": list(self.product.warnings),
            **({} if self.window is None else {"aoi_window": _key(self.window)}),
            **({"radiometry": self.product.radiometry} if self.product.radiometry else {}),
            **({} if self.clouds is None else {"clouds": self.clouds.provenance()}),
        }

    def read(self, window: Window) -> SceneWindow:
        key = _key(window)
        pending, self._next = self._next, None
        result = None
        if pending is not None:
            ahead, future = pending
            try:
                ahead_result = future.result()
            except Exception:
                ahead_result = None  # read again below, so the error is raised here if it recurs
            if ahead == key:
                result = ahead_result
        if result is None:
            result = self._read(window)
        col, row, width, height = key
        below = row + height
        if self._ahead is not None and col == 0 and width == self.grid.width and below < self.grid.height:
            following = Window(col, below, width, min(height, self.grid.height - below))
            self._next = (_key(following), self._ahead.submit(self._read, following))
        return result

    def _band(self, i: int, window: Window, out: np.ndarray) -> np.ndarray | None:
        """Read band ``i`` into ``out`` and harmonise it; its has-data mask (None: all data)."""
        self._readers[i].read_into(window, out)
        has_data = None if out.all() else out != NODATA
        if self.offsets[i] or self.scale != 1.0:
            _harmonise(out, has_data, self.offsets[i], self.scale)
        return has_data

    def _mask(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        assert self._mask_reader is not None
        mask = self._mask_reader.read(window)
        if not self._mask_is_scl:
            return mask > 0, None
        if mask.dtype == np.uint8:
            cloud = self._invalid_lut[mask]
        else:
            cloud = np.isin(mask, self.scl_invalid[self.scl_invalid > 0])
        return cloud, (None if mask.all() else mask != 0)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn`` on the pool, remembered until done (close waits for it before closing the files)."""
        future = self._pool.submit(fn, *args)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return future

    def _read(self, window: Window) -> SceneWindow:
        """The window; with cloud masking, read grown by its halo and cropped (a strip's mask then equals the
        whole scene's there), with the extra bands the detector needed dropped."""
        if self.clouds is None or not self.clouds.active:
            return self._read_window(window)
        grown = self.clouds.grow(window, self.grid)
        win = self._read_window(grown)
        clouds = self.clouds.compute(win.image, win.cloud)
        return SceneWindow(
            crop(win.image[: len(self.bands)], grown, window),
            crop(win.valid, grown, window),
            None if clouds.cloud is None else crop(clouds.cloud, grown, window),
            cloud_probability=None if clouds.probability is None else crop(clouds.probability, grown, window),
        )

    def _read_window(self, window: Window) -> SceneWindow:
        image = np.empty((len(self._readers), int(window.height), int(window.width)), dtype=np.uint16)
        bands = [self._submit(self._band, i, window, image[i]) for i in range(len(self._readers))]
        masked = self._submit(self._mask, window) if self._mask_reader is not None else None
        wait([*bands, *([masked] if masked is not None else [])])  # a failed band raises once no read is in flight
        valid = np.ones(image.shape[1:], dtype=bool)
        for task in bands:
            has_data = task.result()
            if has_data is not None:
                valid &= has_data
        if not valid.all():
            np.multiply(image, valid, out=image)  # no data in any band: no data in all
        cloud = None
        if masked is not None:
            cloud, scl_data = masked.result()
            if scl_data is not None:
                valid &= scl_data
        if self._inside is not None:  # outside the AOI's polygons: not valid, but the pixels stay (context)
            valid &= self._inside.inside(window)
        return SceneWindow(image, valid, cloud)

    def close(self) -> None:
        """Stop the reading threads, then close the band files. The wait for reads in flight completes even
        when a signal (Ctrl-C, SIGTERM as KeyboardInterrupt) interrupts it, and is raised afterwards: a thread
        must never read a file that is being closed (that crashed the process with SIGSEGV)."""
        interrupted: BaseException | None = None
        while True:
            try:
                self._stop_threads()
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        for reader in self._readers:
            reader.close()
        if self._mask_reader is not None:
            self._mask_reader.close()
        if interrupted is not None:
            raise interrupted

    def _stop_threads(self) -> None:
        """Cancel the read ahead and wait until no read is in flight (idempotent: safe to repeat after an
        interruption). It waits on the reads' futures, not only on ``Thread.join``: a join interrupted by a
        signal can return early on Python 3.11 while the thread still reads."""
        if self._next is not None:
            self._next[1].cancel()
            wait([self._next[1]])
            self._next = None
        if self._ahead is not None:
            self._ahead.shutdown()
        wait(list(self._inflight))
        stop_pool(self._pool)

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_pool(pool: ThreadPoolExecutor) -> None:
    """Shut ``pool`` down and wait for every one of its threads, also one whose start a signal interrupted
    (it runs although the pool does not list it): found by the pool's thread-name prefix."""
    pool.shutdown(wait=True, cancel_futures=True)
    prefix = getattr(pool, "_thread_name_prefix", None)
    for thread in threading.enumerate():
        if prefix and thread.name.startswith(prefix + "_") and thread is not threading.current_thread():
            with contextlib.suppress(RuntimeError):  # still starting: its queue holds only cancelled work
                thread.join()


def _enter_env(options: dict[str, object]) -> None:
    """Give a worker thread the creator's GDAL options for its life (rasterio's env is per thread)."""
    rasterio.Env(**options).__enter__()


def _key(window: Window) -> tuple[int, int, int, int]:
    return (int(window.col_off), int(window.row_off), int(window.width), int(window.height))


def strips(grid: Grid, tile_size: int, target_rows: int = 1024) -> list[Window]:
    """Full-width windows whose height is a multiple of ``tile_size`` (about ``target_rows``)."""
    rows = max(tile_size, tile_size * math.floor(target_rows / tile_size))
    return [Window(0, r, grid.width, min(rows, grid.height - r)) for r in range(0, grid.height, rows)]
