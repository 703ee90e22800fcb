"""Read a Sentinel-2 product onto one analysis-ready grid, window by window.

* Bands are resampled onto the target grid (10 m by default) with GDAL's warper: bilinear
  (or cubic) for reflectance, nearest for SCL and masks. A band already on the target grid is
  read as it is, so 10 m bands are copied exactly.
* Radiometry is harmonised: ``value = (DN + offset) * 10000 / quantification``, where ``offset`` is
  the product's ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` (-1000 from processing baseline 04.00 on,
  0 before), so scenes of every baseline share one reflectance x 10000 scale. DN 0 stays 0
  (no data); valid pixels are clipped to >= 1 so they never become no-data.
* ``valid`` marks pixels where every band has data; ``cloud`` marks SCL classes of the invalid set
  (or a cloud mask's non-zero pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.errors import ProductMismatchError
from landcover.io import Grid, open_raster
from landcover.sentinel2 import BandFile, Product
from landcover.tables import default_scl_invalid

NODATA = 0
RESAMPLING = {"bilinear": Resampling.bilinear, "cubic": Resampling.cubic, "nearest": Resampling.nearest}


@dataclass
class SceneWindow:
    image: np.ndarray  # (C, H, W) uint16 reflectance x 10000, 0 = no data
    valid: np.ndarray  # (H, W) bool: every band has data
    cloud: np.ndarray | None  # (H, W) bool: SCL-invalid / cloud-mask pixels, None without a mask


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


class _BandReader:
    """One band file, positioned on the target grid (direct read or warped)."""

    def __init__(self, band: BandFile, grid: Grid, resampling: Resampling, nodata: float | None):
        self.band = band
        self.src = open_raster(band.path)
        if self.src.crs != grid.crs:
            raise ProductMismatchError(
                f"{band.path} is in {self.src.crs} but the scene grid is in {grid.crs}: "
                "bands of different products were mixed; ingest each product separately"
            )
        same_grid = (
            self.src.transform.almost_equals(grid.transform)
            and (self.src.width, self.src.height) == (grid.width, grid.height)
        )
        self.warped = same_grid is False
        self.dataset = (
            WarpedVRT(
                self.src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling, src_nodata=nodata, nodata=nodata,
            )
            if self.warped
            else self.src
        )

    def read(self, window: Window) -> np.ndarray:
        return self.dataset.read(self.band.index, window=window)

    def close(self) -> None:
        if self.warped:
            self.dataset.close()
        self.src.close()


class SceneReader:
    """Windows of a product's bands on one grid, harmonised, with validity and cloud masks."""

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
    ):
        self.product = product
        self.bands = list(bands)
        self.grid = target_grid(product, self.bands, resolution)
        method = RESAMPLING[resampling]
        self._readers = [
            _BandReader(product.bands[b], self.grid, Resampling.nearest
                        if product.bands[b].resolution == resolution else method, NODATA)
            for b in self.bands
        ]
        self.offsets = [float(product.offsets.get(b, 0.0)) if harmonize else 0.0 for b in self.bands]
        self.scale = 10000.0 / product.quantification if harmonize and product.quantification else 1.0
        self.scl_invalid = np.array(sorted(default_scl_invalid() if scl_invalid is None else scl_invalid))
        mask = product.scl or product.cloud_mask
        self._mask_reader = _BandReader(mask, self.grid, Resampling.nearest, None) if mask else None
        self._mask_is_scl = product.scl is not None
        self._pool = ThreadPoolExecutor(max_workers=threads or max(2, min(len(self.bands), 4)))

    def provenance(self) -> dict[str, object]:
        return {
            "product_id": self.product.product_id,
            "level": self.product.level,
            "processing_baseline": self.product.processing_baseline,
            "metadata_source": self.product.metadata_source,
            "offsets_applied": dict(zip(self.bands, self.offsets, strict=True)),
            "quantification": self.product.quantification,
            "resampled_bands": [r.band.band for r in self._readers if r.warped],
            "mask": None if self._mask_reader is None else ("SCL" if self._mask_is_scl else "cloud_mask"),
            "warnings": list(self.product.warnings),
        }

    def read(self, window: Window) -> SceneWindow:
        raw = list(self._pool.map(lambda r: r.read(window), self._readers))
        image = np.empty((len(raw), int(window.height), int(window.width)), dtype=np.uint16)
        valid = np.ones(image.shape[1:], dtype=bool)
        for i, (band, offset) in enumerate(zip(raw, self.offsets, strict=True)):
            has_data = band != NODATA
            valid &= has_data
            if offset or self.scale != 1.0:
                value = (band.astype(np.float32) + offset) * self.scale
                band = np.where(has_data, np.clip(np.rint(value), 1, 65535), NODATA)
            image[i] = band
        image[:, ~valid] = NODATA
        cloud = None
        if self._mask_reader is not None:
            mask = self._mask_reader.read(window)
            cloud = np.isin(mask, self.scl_invalid[self.scl_invalid > 0]) if self._mask_is_scl else mask > 0
            if self._mask_is_scl:
                valid &= mask != 0
        return SceneWindow(image, valid, cloud)

    def close(self) -> None:
        self._pool.shutdown()
        for reader in self._readers:
            reader.close()
        if self._mask_reader is not None:
            self._mask_reader.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def strips(grid: Grid, tile_size: int, target_rows: int = 1024) -> list[Window]:
    """Full-width windows whose height is a multiple of ``tile_size`` (about ``target_rows``)."""
    rows = max(tile_size, tile_size * math.floor(target_rows / tile_size))
    return [
        Window(0, r, grid.width, min(rows, grid.height - r)) for r in range(0, grid.height, rows)
    ]
