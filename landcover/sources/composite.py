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
from landcover.sources.reductions import reduce_period, time_stack, to_reflectance


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
        """The composite of ``window``: image (P * C, H, W) uint16, valid, counts (P, H, W) uint8."""
        height, width = int(window.height), int(window.width)
        n_bands = len(self.source_bands)
        futures = {id(p): self._pool.submit(self._readers[id(p)].read, window) for p in self.products}
        image = np.zeros((len(self.recipe.periods) * n_bands, height, width), dtype=np.uint16)
        counts = np.zeros((len(self.recipe.periods), height, width), dtype=np.uint8)
        try:
            for i, period in enumerate(self.recipe.periods):
                group = self.periods[period.name]
                windows = [futures.pop(id(p)).result() for p in group]
                values, counts[i] = self._reduce(period, group, windows)
                to_reflectance(values, out=image[i * n_bands : (i + 1) * n_bands])
                del windows, values
        finally:
            _drain(futures)
        return SceneWindow(image, np.asarray(counts.any(axis=0)), None, counts=counts)

    def _reduce(
        self, period: Period, group: list[Product], windows: list[SceneWindow]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One period's (C, H, W) float32 composite (NaN: no valid observation) and its (H, W) uint8 counts."""
        usable = [w.valid if w.cloud is None else w.valid & ~w.cloud for w in windows]
        times = [np.datetime64(sensing_date(p), "D") for p in group]
        stack = time_stack([w.image for w in windows], usable, times, self.source_bands)
        count = np.minimum(np.sum(usable, axis=0, dtype=np.int32), 255).astype(np.uint8)
        probability = None
        probabilities = [w.cloud_probability for w in windows if w.cloud_probability is not None]
        if period.method == "best" and len(probabilities) == len(windows):
            probability = xr.DataArray(np.stack(probabilities), dims=("time", "y", "x"), coords={"time": times})
        return reduce_period(stack, period, probability), count

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


def _drain(futures: dict[int, Future[SceneWindow]]) -> None:
    """Wait for reads not consumed (an error in another period): no read may outlive its reader."""
    for future in futures.values():
        future.cancel()
        with contextlib.suppress(BaseException):  # the first error is already being raised
            future.result()
