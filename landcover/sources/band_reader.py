"""One band file read onto a target grid, window by window: how a scene reader reads each band.

A band already on the grid is copied; a coarser one is resampled with GDAL's warper, from whole rows
of source blocks decoded once (JPEG 2000 code-stream tile rows) and kept while later strips need them;
other windows, and downsampling, go through a :class:`~rasterio.vrt.WarpedVRT`.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetWriter
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window

from landcover.errors import ProductMismatchError
from landcover.io.grid import Grid, open_raster
from landcover.io.remote import is_remote, remote_error
from landcover.sources.band_files import BandFile

_KERNEL_RADIUS = {Resampling.nearest: 1, Resampling.bilinear: 1, Resampling.cubic: 2}


def _chunk_rows(block_rows: int) -> int:
    """Rows decoded at once: whole rows of source blocks (a JP2 code-stream tile row), at least 256
    rows; 1024 rows of files whose blocks are taller than 2048 rows (single-tile JP2s)."""
    if block_rows > 2048:
        return 1024
    return block_rows * max(1, math.ceil(256 / max(block_rows, 1)))


def open_raster_level(path: str, level: int) -> rasterio.io.DatasetReader:
    """``path`` opened at overview ``level`` (0: the first overview), as its own dataset."""
    return rasterio.open(path, overview_level=level)


def _aligned_offset(src: rasterio.io.DatasetReader, grid: Grid) -> tuple[int, int] | None:
    """(column, row) of the grid's origin in the file when the grid is a window of the file's own grid
    (same CRS and pixel size, whole-pixel shift, inside the file); None when the band must be resampled."""
    st, gt = src.transform, grid.transform
    if not (st.b == st.d == gt.b == gt.d == 0 and math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e)):
        return None
    dc, dr = (gt.c - st.c) / st.a, (gt.f - st.f) / st.e
    col, row = round(dc), round(dr)
    tol = 1e-6
    if abs(dc - col) > tol or abs(dr - row) > tol or col < 0 or row < 0:
        return None
    if col + grid.width > src.width or row + grid.height > src.height:
        return None
    return col, row


def _source_columns(src: rasterio.io.DatasetReader, grid: Grid, margin: int) -> tuple[int, int]:
    """The file's columns under the grid's columns, grown by the kernel ``margin`` (all of them for a grid
    over the whole file)."""
    st, gt = src.transform, grid.transform
    if st.a <= 0 or st.b or st.d or gt.b or gt.d:
        return 0, src.width
    left = (gt.c - st.c) / st.a
    right = (gt.c + grid.width * gt.a - st.c) / st.a
    return max(0, math.floor(left) - margin), min(src.width, math.ceil(right) + margin)


class BandReader:
    """One band file, positioned on the target grid (direct read or resampled).

    Full-width windows (the strips ingest reads, top to bottom) decode each block of the file once:
    whole rows of source blocks (a JPEG 2000 code-stream tile row) are read with one large read,
    which GDAL decodes in parallel, and kept while later windows need them. GDAL does not cache
    large reads of JP2 files, so reading windows directly would decode a tile again for every
    window that touches it, and the windows of coarser bands overlap. A band on the target grid is
    copied from those rows; a coarser band is resampled (GDAL warp, the no-data value excluded)
    from an in-memory copy of the band holding the rows decoded so far, which gives the values of a
    warp of the whole band. Other windows, and downsampling, go through a :class:`WarpedVRT`.
    """

    def __init__(self, band: BandFile, grid: Grid, resampling: Resampling, nodata: float | None):
        self.band = band
        self.grid = grid
        self.resampling = resampling
        self.nodata = nodata
        self.src = open_raster(band.path)
        self._vrt: WarpedVRT | None = None
        self._ovr: rasterio.io.DatasetReader | None = None
        self._mem: DatasetWriter | None = None
        self._targets: dict[int, DatasetWriter] = {}
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        src, grid = self.src, self.grid
        if src.crs != grid.crs:
            raise ProductMismatchError(
                f"{self.band.path} is in {src.crs} but the scene grid is in {grid.crs}: "
                "bands of different products were mixed; ingest each product separately"
            )
        self._offset = _aligned_offset(src, grid)
        self.warped = self._offset is None
        self.dtype = src.dtypes[self.band.index - 1]
        self.src_nodata = self.nodata if self.nodata is not None else src.nodata
        st, gt = src.transform, grid.transform
        north_up = st.b == st.d == gt.b == gt.d == 0 and st.e < 0 and gt.e < 0
        # rows are cached where GDAL's kernel is not widened by downsampling
        self._cacheable = not self.warped or (north_up and gt.a <= st.a and -gt.e <= -st.e)
        self._chunk = _chunk_rows(src.block_shapes[self.band.index - 1][0])
        self._chunks: dict[int, np.ndarray] = {}  # on the target grid: decoded rows by chunk
        self._loaded: dict[int, bool] = {}  # resampled: chunks copied to self._mem -> has no-data
        self._margin = _KERNEL_RADIUS.get(self.resampling, 3) + 2
        self._cols = _source_columns(src, grid, self._margin)  # source columns under the grid (an AOI: a part)
        # Without no-data pixels, GDAL's faster unmasked bilinear kernel gives the masked kernel's
        # values exactly when its weights are dyadic (coarse pixels of 1, 2, 4 or 8 target pixels,
        # aligned origins), e.g. 20 m -> 10 m. Other ratios (60 m -> 10 m) round differently, and
        # cubic overshoots differently near 0: those keep the masked kernel.
        ratios = (st.a / gt.a, st.e / gt.e, (st.c - gt.c) / gt.a, (st.f - gt.f) / gt.e)
        self._dyadic = (
            self.resampling in (Resampling.bilinear, Resampling.nearest)
            and ratios[0] in (1, 2, 4, 8) and ratios[1] in (1, 2, 4, 8)
            and all(float(r).is_integer() for r in ratios[2:])
        )  # fmt: skip
        if self.warped and self._cacheable:
            self._mem = rasterio.open(
                f"{self.band.band}-source",
                "w+",
                driver="MEM",
                width=src.width,
                height=src.height,
                count=1,
                dtype=self.dtype,
                crs=src.crs,
                transform=src.transform,
            )

    @property
    def dataset(self) -> rasterio.io.DatasetReaderBase:
        if not self.warped:
            return self.src
        if self._vrt is None:
            self._vrt = WarpedVRT(
                self._overview_source(),
                crs=self.grid.crs,
                transform=self.grid.transform,
                width=self.grid.width,
                height=self.grid.height,
                resampling=self.resampling,
                src_nodata=self.nodata,
                nodata=self.nodata,
            )
        return self._vrt

    def _overview_source(self) -> rasterio.io.DatasetReader:
        """What a downsampling warp reads: the coarsest overview (COG, JPEG 2000 resolution level) that is not
        coarser than the grid, as gdalwarp picks by default, so a coarse grid over a remote COG fetches the
        overview's tiles, not the whole band; the band itself when upsampling, for categorical bands (nearest:
        an overview may have averaged classes) or without overviews."""
        factor = self.grid.res[0] / abs(self.src.transform.a)
        levels = self.src.overviews(self.band.index) if self.resampling != Resampling.nearest else []
        usable = [i for i, f in enumerate(levels) if f <= factor * (1 + 1e-6)]
        if not usable:
            return self.src
        if self._ovr is None:
            self._ovr = open_raster_level(self.band.path, max(usable))
        return self._ovr

    def read(self, window: Window) -> np.ndarray:
        out = np.empty((int(window.height), int(window.width)), dtype=self.dtype)
        self.read_into(window, out)
        return out

    def read_into(self, window: Window, out: np.ndarray) -> None:
        try:
            self._read_into(window, out)
        except RasterioError as exc:
            if is_remote(self.band.path):
                raise remote_error(self.band.path, exc) from None
            raise

    def _read_into(self, window: Window, out: np.ndarray) -> None:
        full_width = int(window.col_off) == 0 and int(window.width) == self.grid.width
        if not (self._cacheable and full_width):
            dc, dr = self._offset or (0, 0)  # a window of the grid is this window of the file
            out[...] = self.dataset.read(
                self.band.index, window=Window(window.col_off + dc, window.row_off + dr, window.width, window.height)
            )
            return
        r0, r1 = int(window.row_off), int(window.row_off) + int(window.height)
        if self._offset is not None:
            out[...] = self._rows(r0 + self._offset[1], r1 + self._offset[1])
            return
        # source rows under the window, plus a margin for the resampling kernel
        st, gt = self.src.transform, self.grid.transform
        top = (st.f - (gt.f + r0 * gt.e)) / -st.e
        bottom = (st.f - (gt.f + r1 * gt.e)) / -st.e
        s0 = max(0, math.floor(top) - self._margin)
        s1 = min(self.src.height, math.ceil(bottom) + self._margin)
        if s0 >= s1:
            out.fill(self.src_nodata or 0)
            return
        has_nodata = self._load(s0, s1)
        masked = self.src_nodata is not None and (has_nodata or not self._dyadic)
        target = self._targets.get(r1 - r0)
        if target is None:  # datasets, not arrays: rasterio's array wrappers are not thread-safe
            target = self._targets[r1 - r0] = rasterio.open(
                f"{self.band.band}-target",
                "w+",
                driver="MEM",
                width=self.grid.width,
                height=r1 - r0,
                count=1,
                dtype=self.dtype,
                crs=self.grid.crs,
                transform=self.grid.transform,
            )
        target.transform = self.grid.window_transform(window)
        reproject(
            rasterio.band(self._mem, 1),
            rasterio.band(target, 1),
            resampling=self.resampling,
            src_nodata=self.src_nodata if masked else None,
            dst_nodata=self.nodata if masked else None,
        )
        target.read(1, out=out)

    def _load(self, s0: int, s1: int) -> bool:
        """Copy source rows ``s0:s1`` into the in-memory band; whether they hold no-data pixels."""
        assert self._mem is not None
        ch, has_nodata = self._chunk, False
        c0, c1 = self._cols
        for k in range(s0 // ch, (s1 - 1) // ch + 1):
            if k not in self._loaded:
                block = Window(c0, k * ch, c1 - c0, min(ch, self.src.height - k * ch))
                rows = self.src.read(self.band.index, window=block)
                self._loaded[k] = self.src_nodata is not None and bool((rows == self.src_nodata).any())
                self._mem.write(rows, 1, window=block)
            has_nodata = has_nodata or self._loaded[k]
        return has_nodata

    def _rows(self, r0: int, r1: int) -> np.ndarray:
        """Source rows ``r0:r1`` under the grid (the whole width of a grid on the file's own), decoding the
        blocks they need once."""
        ch, dc = self._chunk, (self._offset or (0, 0))[0]
        k0, k1 = r0 // ch, (r1 - 1) // ch
        for k in [k for k in self._chunks if k < k0 or k > k1]:
            del self._chunks[k]
        for k in range(k0, k1 + 1):
            if k not in self._chunks:
                height = min(ch, self.src.height - k * ch)
                self._chunks[k] = self.src.read(self.band.index, window=Window(dc, k * ch, self.grid.width, height))
        parts = [self._chunks[k] for k in range(k0, k1 + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return block[r0 - k0 * ch : r1 - k0 * ch]

    def close(self) -> None:
        self._chunks.clear()
        for dataset in (*self._targets.values(), self._mem, self._vrt, self._ovr, self.src):
            if dataset is not None:
                dataset.close()
        self._targets.clear()
