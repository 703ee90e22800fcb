"""An area of interest: polygons from a vector file (``--aoi``) or a box (``--bbox``), and the window of a
scene grid it covers.

The window is the scene grid clipped to the AOI's bounds, snapped outwards to whole pixels of the scene
grid (no resampling: its pixels are the scene's pixels); :class:`AOIMask` tells which of its pixels lie
inside the polygons (pixel centres), strip by strip, so no whole-scene mask is ever held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio.features
import rasterio.windows
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from landcover.errors import AOIError
from landcover.io.grid import Grid

WGS84 = "EPSG:4326"
DENSIFY = 21  # points per edge when a box is reprojected (its image in another CRS is curved)


@dataclass(frozen=True)
class AOI:
    """Polygons (one shapely geometry) in ``crs``; ``source`` says where they came from, for messages."""

    geometry: BaseGeometry
    crs: str
    source: str

    def in_crs(self, crs: CRS | str) -> BaseGeometry:
        """The polygons in ``crs`` (edges densified first, so boxes stay boxes' true images)."""
        target = ProjCRS.from_user_input(str(crs) if isinstance(crs, CRS) else crs)
        source = ProjCRS.from_user_input(self.crs)
        if source == target:
            return self.geometry
        dense = shapely.segmentize(self.geometry, max_segment_length=_segment(self.geometry))
        to = Transformer.from_crs(source, target, always_xy=True)
        return shapely.transform(dense, to.transform, interleaved=False)

    def describe(self, crs: CRS | str | None = None) -> str:
        """'<source> (bounds minx, miny, maxx, maxy in its CRS[; in ``crs``])' for messages."""
        own = f"{_fmt(self.geometry.bounds)} in {self.crs}"
        if crs is None or ProjCRS.from_user_input(str(crs)) == ProjCRS.from_user_input(self.crs):
            return f"{self.source} (bounds {own})"
        return f"{self.source} (bounds {own}; {_fmt(self.in_crs(crs).bounds)} in {crs})"

    @cached_property
    def utm_crs(self) -> str:
        """The UTM zone of the AOI's centre (the default CRS of a mosaic)."""
        centre = self.in_crs(WGS84).centroid
        zone = min(60, int((centre.x + 180) // 6) + 1)
        return f"EPSG:{(32600 if centre.y >= 0 else 32700) + zone}"

    def to_setting(self) -> dict[str, object]:
        """What identifies the AOI in settings and provenance: its source, CRS and WKT (6 decimals)."""
        return {"source": self.source, "crs": self.crs, "wkt": shapely.to_wkt(self.geometry, rounding_precision=6)}


def _segment(geom: BaseGeometry) -> float:
    minx, miny, maxx, maxy = geom.bounds
    return max(maxx - minx, maxy - miny, 1e-9) / DENSIFY


def _fmt(bounds: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.10g}" for v in bounds)


def read_aoi(path: str | Path) -> AOI:
    """The polygons of a vector file (any format GDAL reads, any CRS), merged into one geometry."""
    import geopandas as gpd

    path = Path(path).expanduser()
    if not path.exists():
        raise AOIError(f"--aoi {path} does not exist; pass a vector file (GeoPackage, GeoJSON, Shapefile, ...)")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError, GDAL others
        raise AOIError(
            f"cannot read --aoi {path} as a vector file ({exc}); export it as GeoPackage or GeoJSON"
        ) from exc
    if frame.crs is None:
        raise AOIError(f"--aoi {path} has no CRS; save it with one (e.g. EPSG:4326) or use --bbox with a CRS")
    geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
    if not geoms:
        raise AOIError(f"--aoi {path} has no geometry; draw at least one polygon")
    if kinds := sorted({g.geom_type for g in geoms if g.geom_type not in ("Polygon", "MultiPolygon")}):
        raise AOIError(
            f"--aoi {path} holds {', '.join(kinds)} geometries; an area of interest is made of polygons "
            "(buffer points or lines first, e.g. in QGIS: Vector > Geoprocessing > Buffer)"
        )
    geometry = shapely.make_valid(shapely.union_all(geoms))
    return AOI(geometry, frame.crs.to_string(), path.name)


def parse_bbox(text: str) -> AOI:
    """``minx,miny,maxx,maxy[,CRS]`` (CRS default EPSG:4326: lon/lat) as an AOI."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (4, 5):
        raise AOIError(f"--bbox {text!r} needs minx,miny,maxx,maxy[,CRS], e.g. --bbox 3.70,43.55,3.95,43.70")
    try:
        minx, miny, maxx, maxy = (float(p) for p in parts[:4])
    except ValueError:
        raise AOIError(f"--bbox {text!r}: the first four values must be numbers (minx,miny,maxx,maxy)") from None
    crs = parts[4] if len(parts) == 5 else WGS84
    try:
        crs = ProjCRS.from_user_input(crs).to_string()
    except Exception:
        raise AOIError(f"--bbox {text!r}: unknown CRS {parts[4]!r}; give it as EPSG:32631 or similar") from None
    if not (minx < maxx and miny < maxy):
        raise AOIError(f"--bbox {text!r} is empty: it needs minx < maxx and miny < maxy")
    if crs == WGS84 and (minx < -180 or maxx > 180 or miny < -90 or maxy > 90):
        raise AOIError(f"--bbox {text!r} is outside -180..180, -90..90: give WGS84 degrees or add the CRS (,EPSG:...)")
    return AOI(box(minx, miny, maxx, maxy), crs, f"--bbox {','.join(parts[:4])}")


def aoi_option(aoi: str | Path | None, bbox: str | None) -> AOI | None:
    """The AOI of ``--aoi`` or ``--bbox`` (not both), or None."""
    if aoi is not None and bbox is not None:
        raise AOIError("--aoi and --bbox both given; pass one of them")
    if aoi is not None:
        return read_aoi(aoi)
    return parse_bbox(bbox) if bbox is not None else None


def aoi_window(grid: Grid, aoi: AOI) -> Window | None:
    """The window of ``grid`` over the AOI's bounds (whole pixels, clipped to the grid); None if the
    polygons do not overlap the grid."""
    geom = aoi.in_crs(grid.crs)
    left, bottom, right, top = grid.bounds
    if not geom.intersects(box(left, bottom, right, top)):
        return None
    win = rasterio.windows.from_bounds(*geom.bounds, transform=grid.transform)
    eps = 1e-6  # a bound on a pixel edge (up to float noise) does not take the next pixel
    c0 = max(0, math.floor(win.col_off + eps))
    r0 = max(0, math.floor(win.row_off + eps))
    c1 = min(grid.width, math.ceil(win.col_off + win.width - eps))
    r1 = min(grid.height, math.ceil(win.row_off + win.height - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def sub_grid(grid: Grid, window: Window) -> Grid:
    """The grid of ``window`` of ``grid``: same CRS and pixel size, shifted origin."""
    return Grid(grid.crs, grid.window_transform(window), int(window.width), int(window.height))


class AOIOutsideError(AOIError):
    """An AOI that overlaps none of the inputs (``extents``: each input's name and grid)."""

    def __init__(self, message: str, extents: list[tuple[str, Grid]]):
        super().__init__(message)
        self.extents = extents


def no_overlap(aoi: AOI, extents: list[tuple[str, Grid]]) -> AOIOutsideError:
    """The error for an AOI that overlaps none of the inputs: both extents, in each input's CRS."""
    shown = "; ".join(f"{name}: {_fmt(g.bounds)} in {g.crs.to_string()}" for name, g in extents[:5])
    more = f" and {len(extents) - 5} more" if len(extents) > 5 else ""
    first = extents[0][1].crs if extents else None
    return AOIOutsideError(
        f"the area of interest {aoi.describe(first)} overlaps none of the inputs ({shown}{more}); "
        "check the AOI's CRS and coordinates (--bbox takes lon/lat unless a CRS is given) or pick scenes that cover it",
        extents,
    )


class AOIMask:
    """Which pixels of ``grid`` (a grid over the AOI) lie inside the AOI's polygons, window by window."""

    def __init__(self, aoi: AOI, grid: Grid):
        self.grid = grid
        self.geometry = aoi.in_crs(grid.crs)
        self.covers_all = self.geometry.covers(box(*grid.bounds))

    def inside(self, window: Window) -> np.ndarray:
        """(H, W) bool: True where the pixel centre is inside the polygons."""
        shape = (int(window.height), int(window.width))
        if self.covers_all:
            return np.ones(shape, dtype=bool)
        return rasterio.features.geometry_mask(
            [self.geometry], out_shape=shape, transform=self.grid.window_transform(window), invert=True
        )
