"""Raster I/O helpers shared by every stage: grids, atomic outputs, windows, class-map styling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from landcover.errors import CorruptFileError
from landcover.io.remote import NETWORK_ENV, is_remote, remote_error, s3_env

GDAL_ENV = {
    "GDAL_NUM_THREADS": "ALL_CPUS",
    "GDAL_CACHEMAX": 512,
    "CHECK_DISK_FREE_SPACE": "FALSE",
    **NETWORK_ENV,
    **s3_env(),
}
"""GDAL options for landcover's own I/O, applied through ``rasterio.Env(**GDAL_ENV)``."""


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform, and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, path: str | Path) -> Grid:
        with open_raster(path) as src:
            return cls(src.crs, src.transform, src.width, src.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return _bounds(self.transform, self.width, self.height)

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    def window_transform(self, window: Window) -> Affine:
        return rasterio.windows.transform(window, self.transform)

    def windows(self, size: int = 1024) -> Iterator[Window]:
        """Windows of ``size`` x ``size`` pixels covering the grid row by row."""
        for row in range(0, self.height, size):
            for col in range(0, self.width, size):
                yield Window(col, row, min(size, self.width - col), min(size, self.height - row))

    def to_dict(self) -> dict[str, object]:
        return {
            "crs": self.crs.to_string(),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


def open_raster(path: str | Path, mode: str = "r") -> rasterio.DatasetReader:
    """``rasterio.open`` that turns unreadable files into :class:`CorruptFileError`, and remote files that
    cannot be fetched into :class:`~landcover.errors.RemoteReadError`."""
    try:
        return rasterio.open(path, mode)
    except RasterioIOError as exc:
        if is_remote(str(path)):
            raise remote_error(str(path), exc) from None
        if not str(path).startswith("/vsi") and not Path(path).exists():
            raise CorruptFileError(f"{path} does not exist; check the path") from exc
        raise CorruptFileError(
            f"cannot read {path} as a raster ({exc}); the file may be truncated or not a raster: "
            "download or export it again"
        ) from exc


def reflect_index(p: np.ndarray, n: int) -> np.ndarray:
    """Indices of a 0..n-1 axis padded by reflection (numpy's 'reflect', any pad width)."""
    if n == 1:
        return np.zeros_like(p)
    q = np.mod(p, 2 * (n - 1))
    return np.where(q >= n, 2 * (n - 1) - q, q)


def read_reflected(
    ds: rasterio.DatasetReader, window: Window, halo: int, indexes: list[int] | None = None
) -> np.ndarray:
    """(C, H + 2 halo, W + 2 halo) pixels of ``window`` grown by ``halo``, padded by reflection past the raster's
    edges as ``landcover predict`` pads a scene (numpy's 'reflect'), reading only the rows and columns needed."""
    rows = reflect_index(np.arange(window.row_off - halo, window.row_off + window.height + halo), ds.height)
    cols = reflect_index(np.arange(window.col_off - halo, window.col_off + window.width + halo), ds.width)
    r0, c0 = int(rows.min()), int(cols.min())
    read = Window(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
    data = ds.read(indexes, window=read)
    return data.take(rows - r0, axis=-2).take(cols - c0, axis=-1)
