"""Several Sentinel-2 products of one place -> a multi-period composite, window by window.

:class:`CompositeReader` has the interface of :class:`~landcover.sources.reader.SceneReader` that ingest
uses (``grid``, ``bands``, ``read``, ``provenance``, context manager), so a composite is ingested like a scene:

* the products are placed in the periods of a :class:`~landcover.sources.recipe.CompositeRecipe` by sensing
  date (:meth:`CompositeRecipe.assign`); products outside every period are not read;
* one :class:`SceneReader` per product, all on ONE grid: the grid of the first product by date (cut to the
  area of interest); products of other tiles or CRSs are warped onto it by their band readers;
* per window, every product's strip is read (in parallel, one strip per date in memory), each period's
  observations become a ``(time, band, y, x)`` float32 :class:`xarray.DataArray` with NaN where an observation
  is not valid or cloudy, and are reduced (:mod:`landcover.sources.reductions`);
* the window's image is ``(P * C, H, W)`` uint16, bands named ``B04@spring`` (period-major), 0 where a
  period has no valid observation; ``counts`` ``(P, H, W)`` uint8 holds the valid observations per period;
  ``valid`` is true where at least one period has one; ``cloud`` is None (clouds are already left out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr
from rasterio.windows import Window

from landcover.errors import ConfigError
from landcover.io.aoi import AOI
from landcover.io.grid import Grid
from landcover.sources.clouds import CloudConfig
from landcover.sources.product import Product
from landcover.sources.reader import SceneReader, SceneWindow, stop_pool
from landcover.sources.recipe import CompositeRecipe, Period, sensing_date
from landcover.sources.reductions import fill_observation, reduce_period, to_reflectance


class CompositeReader:
    """Windows of a multi-period composite of ``products`` on the grid of the first of them (by date)."""

    def __init__(
        self,
        products: Sequence[Product],
        bands: Sequence[str],
        recipe: CompositeRecipe,
        *,
        resolution: float = 10.0,
        resampling: str = "bilinear",
        harmonize: bool = True,
        scl_invalid: Sequence[int] | None = None,
        aoi: AOI | None = None,
        threads: int | None = None,
        clouds: CloudConfig | dict[str, Any] | None = None,
    ):
        self.recipe = recipe
        self.source_bands = list(bands)
        self.bands = recipe.band_names(self.source_bands)
        self.periods: dict[str, list[Product]] = recipe.assign(products)
        used = [p for group in self.periods.values() for p in group]
        self.products = sorted(used, key=lambda p: (sensing_date(p), p.product_id))
        self.unused = [p.product_id for p in products if all(p is not u for u in used)]
        self._readers: dict[int, SceneReader] = {}
        self._buffers: dict[str, np.ndarray] = {}  # each period's time stack, reused strip after strip
        self._pool = ThreadPoolExecutor(max_workers=threads or max(1, min(len(self.products), 4)))
        options: dict[str, Any] = {
            "resolution": resolution,
            "resampling": resampling,
            "harmonize": harmonize,
            "scl_invalid": scl_invalid,
            "aoi": aoi,
            "clouds": clouds,  # each date's SCL / detected clouds are left out of its period
            "prefetch": False,  # one strip per date in memory
        }
        try:
            first = SceneReader(self.products[0], self.source_bands, **options)
            self._readers[id(self.products[0])] = first
            self.grid: Grid = first.grid
            self.window = first.window  # the first product's grid window over the AOI (None without one)
            for product in self.products[1:]:
                self._readers[id(product)] = SceneReader(product, self.source_bands, grid=self.grid, **options)
        except BaseException:
            self.close()
            raise

    @property
    def product(self) -> Product:
        """The product whose grid the composite has (the first by date)."""
        return self.products[0]

    def read(self, window: Window) -> SceneWindow:
        """The composite of ``window``: image (P * C, H, W) uint16, valid, counts (P, H, W) uint8.

        Every date is read on the pool and written at once into its period's float32 time stack (NaN where
        not usable), so the conversion runs in parallel with the other reads and a date's uint16 strip is
        dropped as soon as it is in the stack; then each period is reduced."""
        height, width = int(window.height), int(window.width)
        n_bands = len(self.source_bands)
        stacks = {p.name: self._buffer(p.name, (len(g), n_bands, height, width)) for p, g in self._groups()}
        futures = {
            id(product): self._pool.submit(self._observe, product, window, stacks[period.name][t])
            for period, group in self._groups()
            for t, product in enumerate(group)
        }
        image = np.zeros((len(self.recipe.periods) * n_bands, height, width), dtype=np.uint16)
        counts = np.zeros((len(self.recipe.periods), height, width), dtype=np.uint8)
        try:
            for i, (period, group) in enumerate(self._groups()):
                observed = [futures.pop(id(p)).result() for p in group]
                times = [np.datetime64(sensing_date(p), "D") for p in group]
                stack = xr.DataArray(
                    stacks[period.name],
                    dims=("time", "band", "y", "x"),
                    coords={"time": times, "band": self.source_bands},
                )
                counts[i] = np.minimum(np.sum([u for u, _ in observed], axis=0, dtype=np.int32), 255)
                probabilities = [c for _, c in observed if c is not None]
                probability = None
                if period.method == "best" and len(probabilities) == len(observed):
                    probability = xr.DataArray(np.stack(probabilities), dims=("time", "y", "x"), coords={"time": times})
                values = reduce_period(stack, period, probability)
                to_reflectance(values, out=image[i * n_bands : (i + 1) * n_bands])
        finally:
            _drain(futures)
        return SceneWindow(image, np.asarray(counts.any(axis=0)), None, counts=counts)

    def _groups(self) -> list[tuple[Period, list[Product]]]:
        return [(period, self.periods[period.name]) for period in self.recipe.periods]

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Period ``name``'s time stack, reused strip after strip (a fresh array per strip costs page faults)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = self._buffers[name] = np.empty(shape, np.float32)
        return buffer

    def _observe(self, product: Product, window: Window, out: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Read ``product``'s window into ``out`` ((C, H, W) float32, NaN where not usable: no data, or cloudy);
        return its usable mask and its cloud probability (None without one)."""
        win = self._readers[id(product)].read(window)
        usable = win.valid if win.cloud is None else win.valid & ~win.cloud
        fill_observation(out, win.image, usable)
        return usable, win.cloud_probability

    def check_best(self) -> None:
        """Refuse a recipe with method ``best`` when a product of that period gives no cloud probability
        (reads one pixel of each), before anything is written."""
        for period in self.recipe.periods:
            if period.method != "best":
                continue
            for product in self.periods[period.name]:
                if self._readers[id(product)].read(Window(0, 0, 1, 1)).cloud_probability is None:
                    raise ConfigError(
                        f"period {period.label()} uses method 'best' (lowest cloud probability), but "
                        f"{product.product_id} gives no cloud probability; use method median or quantile, "
                        "or inputs with a cloud detector's probability"
                    )

    def provenance(self) -> dict[str, Any]:
        """The recipe, and per period its method and inputs (product ids, dates, each one's provenance)."""
        levels = {str(p.level) for p in self.products}
        return {
            "kind": "composite",
            "level": levels.pop() if len(levels) == 1 else "mixed",
            "grid_of": self.product.product_id,
            "composite": self.recipe.model_dump(mode="json"),
            "periods": [
                {
                    "name": period.name,
                    "start": str(period.start),
                    "end": str(period.end),
                    "method": period.method,
                    "quantile": period.quantile,
                    "inputs": [
                        {
                            "product_id": p.product_id,
                            "sensing_time": p.sensing_time,
                            "tile": p.tile,
                            **self._readers[id(p)].provenance(),
                        }
                        for p in self.periods[period.name]
                    ],
                }
                for period in self.recipe.periods
            ],
            "unused_inputs": self.unused,
            "warnings": sorted({f"{p.product_id}: {w}" for p in self.products for w in p.warnings}),
        }

    def close(self) -> None:
        stop_pool(self._pool)
        for reader in self._readers.values():
            reader.close()

    def __enter__(self) -> CompositeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(futures: dict[int, Future[Any]]) -> None:
    """Wait for reads not consumed (an error in another period): no read may outlive its reader."""
    for future in futures.values():
        future.cancel()
        with contextlib.suppress(BaseException):  # the first error is already being raised
            future.result()
