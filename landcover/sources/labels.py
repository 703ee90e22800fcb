"""CORINE Land Cover labels on any grid, window by window.

Rules (documented in the README):

* **Vector** sources (GPKG, Shapefile, GeoParquet, GeoJSON, ...) are read inside the grid's
  bounding box only, reprojected to the grid's CRS and burnt with
  :func:`rasterio.features.rasterize`; by default a pixel takes the polygon containing its
  centre (``all_touched=False``, the BigEarthNet convention). Where polygons overlap, the one
  later in the file (higher feature id) wins, as with ``rasterize`` of the whole layer.
* **Raster** sources (CLC index rasters 1..44 or 3-digit code rasters, any CRS) are warped with
  GDAL: *nearest* when the grid's pixels are no larger than the source's, *mode* (majority)
  when they are larger, so a coarse pixel takes the class covering most of it.
* Codes become contiguous class ids of the chosen nomenclature through
  :meth:`landcover.nomenclature.Nomenclature.encode`; 255 marks pixels without a label.

Reading the files (layer, code column, mapping files, the features inside the grid) is
:mod:`landcover.sources.label_files`' part; this module owns the sources, the burning and warping,
and the ``landcover labels`` command (:func:`labels_like`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.errors import InputFormatError, LabelSourceError, UnknownCodeError
from landcover.io.grid import GDAL_ENV, Grid, open_raster
from landcover.io.outputs import atomic_output
from landcover.io.style import class_map_profile, style_class_map, write_qgis_style
from landcover.nomenclature import IGNORE, corine_classes, index_to_code_lut, nomenclature
from landcover.sources.label_files import check_overlap, known_codes, map_values, parse_codes, read_vector
from landcover.version import __version__

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc"}
_UNKNOWN = 65535


class LabelSource(Protocol):
    """Anything that yields CORINE level-3 codes (0 = no label) for a window of a grid."""

    description: str

    def codes(self, grid: Grid, window: Window) -> np.ndarray: ...


# --- vector --------------------------------------------------------------------------------


@dataclass
class VectorLabels:
    """A CLC vector layer, reprojected to the grid's CRS, indexed for window queries."""

    path: Path
    grid: Grid
    code_column: str | None = None
    all_touched: bool = False
    layer: str | None = None
    mapping: dict[str, int] | None = None  # attribute value -> level-3 code (non-CORINE labels)
    description: str = field(init=False)

    def __post_init__(self) -> None:
        frame, column, src_crs = read_vector(self.path, self.grid, self.layer, self.code_column)
        if not frame.geom_type.isin(["Polygon", "MultiPolygon"]).all():
            raise LabelSourceError(f"{self.path} must hold polygons; found {sorted(set(frame.geom_type))}")
        check_overlap(self.grid, src_crs, tuple(frame.total_bounds), str(self.path))
        if self.mapping is None:
            self.codes_array = parse_codes(frame[column].to_numpy(), self.path, column)
        else:
            self.codes_array = map_values(frame[column], self.mapping, self.path, column)
        self.frame = frame.to_crs(self.grid.crs)
        self.sindex = self.frame.sindex
        self.column = column
        touched = "all touched" if self.all_touched else "pixel centres"
        self.description = f"{self.path.name} (vector, column {column}, {touched})"

    def codes(self, grid: Grid, window: Window) -> np.ndarray:
        from shapely.geometry import box

        transform = grid.window_transform(window)
        shape = (int(window.height), int(window.width))
        left, bottom, right, top = rasterio.windows.bounds(window, grid.transform)
        # Sorted positions = file order, so where polygons overlap the later feature in the file wins
        # (rasterize burns in order), whatever the index's internal order and the window size.
        hits = np.sort(self.sindex.query(box(left, bottom, right, top)))
        if hits.size == 0:
            return np.zeros(shape, dtype=np.uint16)
        shapes = zip(self.frame.geometry.values[hits], self.codes_array[hits], strict=True)
        return rasterio.features.rasterize(
            shapes, out_shape=shape, transform=transform, fill=0, all_touched=self.all_touched, dtype="uint16"
        )


# --- raster --------------------------------------------------------------------------------


@dataclass
class RasterLabels:
    """A CLC raster (indices 1..44 or 3-digit codes) in any CRS, warped window by window."""

    path: Path
    grid: Grid
    values: str = "auto"  # 'auto' | 'codes' | 'indices'
    values_option: str = "--raster-values {}"  # how the command that reads the raster sets ``values``
    description: str = field(init=False)

    def __post_init__(self) -> None:
        self.src = open_raster(self.path)
        if self.src.crs is None:
            raise LabelSourceError(f"{self.path} has no CRS; assign one (gdal_edit.py -a_srs EPSG:3035)")
        check_overlap(self.grid, self.src.crs, tuple(self.src.bounds), str(self.path))
        if self.values == "auto":
            self.values = self._detect_values()
        if self.values not in ("codes", "indices"):
            raise LabelSourceError(f"raster values must be 'codes' or 'indices', not {self.values!r}")
        # Source pixel size expressed in the grid's CRS decides nearest vs mode.
        left, b, r, t = rasterio.warp.transform_bounds(self.src.crs, self.grid.crs, *self.src.bounds, densify_pts=21)
        src_res = math.sqrt(((r - left) / self.src.width) * ((t - b) / self.src.height))
        dst_res = math.sqrt(self.grid.res[0] * self.grid.res[1])
        self.resampling = Resampling.mode if dst_res > src_res * 1.01 else Resampling.nearest
        self.description = f"{self.path.name} (raster {self.values}, {self.resampling.name})"
        self._index_lut = index_to_code_lut()

    def _detect_values(self) -> str:
        h, w = min(self.src.height, 1024), min(self.src.width, 1024)
        sample = self.src.read(1, out_shape=(h, w), resampling=Resampling.nearest, masked=True)
        values = set(np.unique(sample.compressed()).tolist())
        indices = {c.index for c in corine_classes()}
        codes = {c.code for c in corine_classes()}
        if values & codes and not values & (indices - codes):
            return "codes"
        if not values & codes or values <= indices | {0, 48, 49, 50, 128, 255}:
            return "indices"
        raise LabelSourceError(
            f"cannot tell whether {self.path} stores CLC codes (111..523) or raster indices (1..44); "
            f"pass {self.values_option.format('codes')} or {self.values_option.format('indices')}"
        )

    def codes(self, grid: Grid, window: Window) -> np.ndarray:
        shape = (int(window.height), int(window.width))
        raw = np.full(shape, -1, dtype=np.int32)
        rasterio.warp.reproject(
            source=rasterio.band(self.src, 1),
            destination=raw,
            dst_transform=grid.window_transform(window),
            dst_crs=grid.crs,
            src_nodata=self.src.nodata,
            dst_nodata=-1,
            resampling=self.resampling,
        )
        nodata = raw == -1
        if self.values == "indices":
            inside = (raw >= -128) & (raw < 256)
            out = np.full(shape, _UNKNOWN, dtype=np.uint16)
            out[inside] = self._index_lut[raw[inside] % 256]
        else:
            out = np.where((raw >= 0) & (raw < 1000), raw, _UNKNOWN).astype(np.uint16)
            bad = (out != _UNKNOWN) & ~np.isin(out, sorted(known_codes()))
            out[bad] = _UNKNOWN
        out[nodata] = 0
        if (out == _UNKNOWN).any():
            rows, cols = np.nonzero(out == _UNKNOWN)
            x, y = grid.window_transform(window) * (cols[0] + 0.5, rows[0] + 0.5)
            values = sorted(set(raw[out == _UNKNOWN].tolist()))
            raise UnknownCodeError(
                f"{self.path} holds value(s) {', '.join(map(str, values[:20]))} that are not CLC "
                f"{self.values} (first at x={x:.1f}, y={y:.1f} in {grid.crs.to_string()}); "
                f"check {self.values_option.format('codes|indices')}, or recode the raster to CLC codes or indices"
            )
        return out


def open_label_source(
    path: str | Path,
    grid: Grid,
    *,
    code_column: str | None = None,
    all_touched: bool = False,
    raster_values: str = "auto",
    layer: str | None = None,
    mapping: dict[str, int] | None = None,
    raster_values_option: str = "--raster-values {}",
) -> LabelSource:
    """Open a CORINE raster or vector as a :class:`LabelSource` for ``grid``.

    With ``mapping`` (see :func:`landcover.sources.label_files.load_label_mapping`), ``code_column``
    names a non-CORINE attribute.
    ``raster_values_option`` is how the calling command sets ``raster_values`` (named in error messages).
    """
    path = Path(path)
    if not path.exists():
        raise LabelSourceError(f"label source {path} does not exist; check the path")
    if path.suffix.lower() in RASTER_SUFFIXES:
        return RasterLabels(path, grid, raster_values, raster_values_option)
    return VectorLabels(path, grid, code_column, all_touched, layer, mapping)


# --- the labels command --------------------------------------------------------------------


@dataclass
class LabelSummary:
    out: Path
    nomenclature: str
    source: str
    pixels: int
    labelled: int
    class_pixels: dict[str, int]

    @property
    def labelled_fraction(self) -> float:
        return self.labelled / self.pixels if self.pixels else 0.0


def write_labels(
    source: LabelSource,
    grid: Grid,
    out: str | Path,
    *,
    nomenclature_name: str = "level3",
    overwrite: bool = False,
    window_size: int = 1024,
    progress=None,
) -> LabelSummary:
    """Burn ``source`` onto ``grid`` as class ids of a nomenclature; write a styled GeoTIFF.

    Memory is bounded by one window (``window_size``\u00b2 pixels), whatever the grid size.
    ``progress`` is an optional callable ``(done, total)``.
    """
    out = Path(out)
    nom = nomenclature(nomenclature_name)
    counts: Counter[int] = Counter()
    windows = list(grid.windows(window_size))
    # the style first, the GeoTIFF last: labels.tif under its final name means complete (uint8: w x h bytes at most)
    with atomic_output(out, overwrite, needed=grid.width * grid.height) as tmp:
        with rasterio.Env(**GDAL_ENV), rasterio.open(tmp, "w", **class_map_profile(grid)) as dst:
            for done, window in enumerate(windows, 1):
                ids = nom.encode(source.codes(grid, window), where=source.description)
                dst.write(ids, 1, window=window)
                values, n = np.unique(ids, return_counts=True)
                counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
                if progress:
                    progress(done, len(windows))
            style_class_map(dst, nom, LABEL_SOURCE=source.description, SOFTWARE=f"landcover {__version__}")
        write_qgis_style(out, nom)
    labelled = sum(n for v, n in counts.items() if v != IGNORE)
    return LabelSummary(
        out=out,
        nomenclature=nom.name,
        source=source.description,
        pixels=grid.width * grid.height,
        labelled=labelled,
        class_pixels={nom.class_names[v]: n for v, n in sorted(counts.items()) if v != IGNORE},
    )


def labels_like(
    source_path: str | Path,
    like: str | Path,
    out: str | Path,
    *,
    nomenclature_name: str = "level3",
    code_column: str | None = None,
    all_touched: bool = False,
    raster_values: str = "auto",
    overwrite: bool = False,
    progress=None,
) -> LabelSummary:
    """``landcover labels``: CORINE labels on exactly the grid of the raster ``like``."""
    grid = Grid.of(like)
    if grid.crs is None:
        raise InputFormatError(
            f"--like {like} has no CRS (it is not georeferenced); pass a raster with a CRS "
            "and a geotransform, e.g. a band of the scene"
        )
    nomenclature(nomenclature_name)  # validate before any work
    source = open_label_source(
        source_path, grid, code_column=code_column, all_touched=all_touched, raster_values=raster_values
    )
    return write_labels(source, grid, out, nomenclature_name=nomenclature_name, overwrite=overwrite, progress=progress)


__all__ = [
    "IGNORE",
    "LabelSource",
    "LabelSummary",
    "RasterLabels",
    "VectorLabels",
    "labels_like",
    "open_label_source",
    "write_labels",
]
