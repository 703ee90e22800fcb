"""The map writers of predict and explain: finished block rows go to temporary tiled GeoTIFFs (COG copies
come at the end, :mod:`landcover.io.style`), and the names of one prediction's files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from landcover.io.grid import Grid
from landcover.io.outputs import EXPECTED
from landcover.io.stac_items import item_path

if TYPE_CHECKING:
    pass


TMP_BLOCK = 256  # block side of the temporary GeoTIFFs (written one whole block row at a time)


class BlockWriter:
    """Collects finished rows and writes whole block rows of a temporary GeoTIFF (each block once)."""

    def __init__(self, path: Path, grid: Grid, count: int, dtype: str, nodata: float | None, masked: bool):
        EXPECTED[path] = grid.width * grid.height * (count * np.dtype(dtype).itemsize + masked)
        self.ds = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=count,
            dtype=dtype,
            crs=grid.crs,
            transform=grid.transform,
            nodata=nodata,
            tiled=True,
            blockxsize=TMP_BLOCK,
            blockysize=TMP_BLOCK,
            compress="zstd",
            zstd_level=1,
            bigtiff="IF_SAFER",
            interleave="band" if count == 1 else "pixel",
        )
        self.buf = np.zeros((count, TMP_BLOCK, grid.width), dtype)
        self.mask = np.zeros((TMP_BLOCK, grid.width), np.uint8) if masked else None
        self.start = self.filled = 0

    def add(self, data: np.ndarray, valid: np.ndarray) -> None:
        i = 0
        while i < data.shape[1]:
            n = min(data.shape[1] - i, TMP_BLOCK - self.filled)
            self.buf[:, self.filled : self.filled + n] = data[:, i : i + n]
            if self.mask is not None:
                self.mask[self.filled : self.filled + n] = valid[i : i + n] * 255
            self.filled, i = self.filled + n, i + n
            if self.filled == TMP_BLOCK:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            window = Window(0, self.start, self.ds.width, self.filled)
            self.ds.write(self.buf[:, : self.filled], window=window)
            if self.mask is not None:
                self.ds.write_mask(self.mask[: self.filled], window=window)
            self.start, self.filled = self.start + self.filled, 0


def output_paths(
    out: Path, *, probabilities: bool = False, confidence: bool = False, quicklook: bool = True
) -> dict[str, Path]:
    """The files of one prediction; ``map`` is written last; ``stac`` is its STAC Item (``OUT.stac.json``)."""
    paths = {"map": out, "qml": out.with_suffix(".qml"), "stac": item_path(out)}
    if probabilities:
        paths["probabilities"] = out.with_name(f"{out.stem}_probabilities.tif")
    if confidence:
        paths["confidence"] = out.with_name(f"{out.stem}_confidence.tif")
    if quicklook:
        paths["quicklook"] = out.with_suffix(".png")
    return paths


@contextlib.contextmanager
def block_writers(
    gtiffs: dict[str, Path], grid: Grid, k: int, dtype: str, nodata: int
) -> Iterator[dict[str, BlockWriter]]:
    """Block writers of the class map and of the optional probability and confidence rasters; closed at the end."""
    writers: dict[str, BlockWriter] = {}
    try:
        writers["map"] = BlockWriter(gtiffs["map"], grid, 1, dtype, nodata, False)
        if "probabilities" in gtiffs:
            writers["probabilities"] = BlockWriter(gtiffs["probabilities"], grid, k, "uint8", None, True)
        if "confidence" in gtiffs:
            writers["confidence"] = BlockWriter(gtiffs["confidence"], grid, 1, "uint8", None, True)
        yield writers
    finally:
        for bw in writers.values():
            bw.ds.close()
