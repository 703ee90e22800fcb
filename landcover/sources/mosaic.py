"""Mosaics of rasters that share one pixel grid, as GDAL VRTs (no pixel is copied or resampled)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from landcover.errors import CorruptFileError, ProductMismatchError

Bounds = tuple[float, float, float, float]  # left, bottom, right, top

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def raster_header(path: Path) -> tuple[Bounds, float, str | None, str]:
    """Bounds, pixel size, CRS and data type of a raster (its header only)."""
    try:
        with rasterio.open(path) as ds:
            crs = ds.crs.to_string() if ds.crs else None
            return tuple(ds.bounds), float(ds.res[0]), crs, ds.dtypes[0]
    except RasterioError as exc:
        raise CorruptFileError(
            f"cannot read {path} ({exc}); the file is truncated or not a raster: re-download it"
        ) from exc


def _pixels(value: float, what: Path, res: float) -> int:
    count = round(value)
    if abs(value - count) > 1e-3:
        raise ProductMismatchError(
            f"{what} is not on the {res:g} m pixel grid of the rasters it is mosaicked with "
            "(BigEarthNet patches of one product); ingest it on its own"
        )
    return int(count)


def write_mosaic_vrt(
    path: Path,
    sources: Sequence[tuple[Path, Bounds]],
    union: Bounds,
    res: float,
    crs: str,
    dtype: str,
    nodata: float | None = None,
) -> tuple[int, int]:
    """A GDAL VRT placing each single-band ``(file, bounds)`` of ``sources`` on a grid over ``union``.

    Every source must lie on the ``res`` pixel grid of ``union`` (whole-pixel offsets and sizes);
    pixels outside every source read as ``nodata`` (or 0). Returns the VRT's width and height.
    """
    left, bottom, right, top = union
    width, height = _pixels((right - left) / res, path, res), _pixels((top - bottom) / res, path, res)
    gdal_type = _GDAL_TYPES[dtype]
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = CRS.from_user_input(crs).to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (left, res, 0, top, 0, -res))
    band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band="1")
    if nodata is not None:
        ET.SubElement(band, "NoDataValue").text = f"{nodata:g}"
    for file, (x0, y0, x1, y1) in sources:
        w, h = _pixels((x1 - x0) / res, file, res), _pixels((y1 - y0) / res, file, res)
        col, row = _pixels((x0 - left) / res, file, res), _pixels((top - y1) / res, file, res)
        source = ET.SubElement(band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(Path(file).resolve())
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SourceProperties", RasterXSize=str(w), RasterYSize=str(h), DataType=gdal_type)
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
        ET.SubElement(source, "DstRect", xOff=str(col), yOff=str(row), xSize=str(w), ySize=str(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8")
    return width, height
