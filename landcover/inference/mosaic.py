"""One map for an area of interest from the maps of the scenes over it (neighbouring tiles, both UTM zones).

The mosaic's grid covers the AOI's bounds in the CRS asked for (default: the AOI's UTM zone), on whole
multiples of the maps' pixel size, so a map already in that CRS lands pixel on pixel (Sentinel-2 grids sit
on multiples of 10 m). Block by block, each map (and its confidence raster) is warped onto the block with
nearest neighbour; each pixel takes the valid class of the map whose confidence is highest (the first map on
ties), pixels outside the AOI's polygons stay no data. Written under a temporary name, then a COG with
overviews, colour table, class names, a QGIS style and a STAC Item like any map of ``landcover predict``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landcover.errors import ConfigError, InputFormatError
from landcover.io.aoi import AOI, AOIMask
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.outputs import temporaries
from landcover.io.stac_items import write_map_item
from landcover.io.style import class_map_profile, style_class_map, to_cog, write_qgis_style
from landcover.nomenclature import IGNORE, nomenclature
from landcover.version import __version__

BLOCK = 1024


@dataclass(frozen=True)
class MosaicResult:
    """The mosaic written: its path, grid, the maps it was made of and the share of pixels with a class."""

    out: str
    grid: dict[str, object]
    maps: list[str]
    valid_fraction: float


def confidence_path(map_path: Path) -> Path:
    """The confidence raster ``landcover predict --confidence`` writes next to ``map_path``."""
    return map_path.with_name(f"{map_path.stem}_confidence.tif")


def mosaic_grid(aoi: AOI, crs: CRS | str, res: float) -> Grid:
    """The grid over the AOI's bounds in ``crs``, its edges on whole multiples of ``res``."""
    minx, miny, maxx, maxy = aoi.in_crs(crs).bounds
    left, bottom = math.floor(minx / res) * res, math.floor(miny / res) * res
    right, top = math.ceil(maxx / res) * res, math.ceil(maxy / res) * res
    transform = rasterio.transform.from_origin(left, top, res, res)
    return Grid(
        CRS.from_user_input(crs), transform, max(1, round((right - left) / res)), max(1, round((top - bottom) / res))
    )


def _check_maps(maps: Sequence[Path]) -> tuple[str, float]:
    """The maps' common nomenclature and pixel size; each needs its confidence raster."""
    names, sizes = set(), set()
    for path in maps:
        if not confidence_path(path).exists():
            raise InputFormatError(
                f"{confidence_path(path)} is missing: a mosaic picks the most confident map per pixel; "
                "predict the scenes with --confidence"
            )
        with rasterio.open(path) as ds:
            names.add(ds.tags().get("NOMENCLATURE"))
            sizes.add(round(ds.res[0], 6))
    if len(names) != 1 or None in names:
        raise InputFormatError(
            f"the maps have different nomenclatures ({sorted(map(str, names))}); mosaic maps of one model"
        )
    if len(sizes) != 1:
        raise InputFormatError(f"the maps have different pixel sizes ({sorted(sizes)} m); mosaic maps of one model")
    return str(names.pop()), float(sizes.pop())


def _warped(path: Path, grid: Grid) -> WarpedVRT:
    src = rasterio.open(path)
    return WarpedVRT(
        src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height, resampling=Resampling.nearest
    )


def mosaic_maps(maps: Sequence[str | Path], aoi: AOI, out: str | Path, *, crs: str | None = None) -> MosaicResult:
    """Mosaic class maps of ``landcover predict`` (each with its ``_confidence.tif``) into the COG ``out``."""
    paths = [Path(m) for m in maps]
    if not paths:
        raise ConfigError("no map to mosaic: no scene overlaps the area of interest")
    nom_name, res = _check_maps(paths)
    nom = nomenclature(nom_name)
    grid = mosaic_grid(aoi, crs or aoi.utm_crs, res)
    inside = AOIMask(aoi, grid)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    valid_px = 0
    with rasterio.Env(**GDAL_ENV), temporaries(out) as tmp:
        gtiff = tmp(out.with_suffix(".mosaic.tif"))
        vrts = [(_warped(p, grid), _warped(confidence_path(p), grid)) for p in paths]
        try:
            with rasterio.open(gtiff, "w", **class_map_profile(grid)) as dst:
                for window in grid.windows(BLOCK):
                    block = _block(vrts, window, inside.inside(window))
                    valid_px += int(np.count_nonzero(block != IGNORE))
                    dst.write(block, 1, window=window)
            with rasterio.open(gtiff, "r+") as dst:  # a colour table cannot be set once blocks are written
                style_class_map(
                    dst,
                    nom,
                    MOSAIC_OF=json.dumps([p.name for p in paths]),
                    AOI=aoi.source,
                    SOFTWARE=f"landcover {__version__}",
                    RULE="per pixel the valid class of the most confident map (first on ties)",
                )
        finally:
            for pair in vrts:
                for vrt in pair:
                    vrt.src_dataset.close()
                    vrt.close()
        final = tmp(out)
        to_cog(gtiff, final, "MODE", nom)
        write_qgis_style(out, nom)
        write_map_item(out, nom, raster=final, sidecars={"qml": out.with_suffix(".qml")})  # <stem>.stac.json
        os.replace(final, out)
    fraction = valid_px / max(1, grid.width * grid.height)
    return MosaicResult(str(out), grid.to_dict(), [str(p) for p in paths], round(fraction, 6))


def _block(vrts: list[tuple[WarpedVRT, WarpedVRT]], window: Window, inside: np.ndarray) -> np.ndarray:
    """One block of the mosaic: per pixel the class of the most confident valid map, 255 outside ``inside``."""
    shape = (int(window.height), int(window.width))
    best = np.full(shape, -1, dtype=np.int16)
    classes = np.full(shape, IGNORE, dtype=np.uint8)
    for class_vrt, conf_vrt in vrts:
        cls = class_vrt.read(1, window=window, boundless=False)
        conf = conf_vrt.read(1, window=window).astype(np.int16)
        take = (cls != IGNORE) & (conf > best) & inside
        classes[take] = cls[take]
        best[take] = conf[take]
    return classes
