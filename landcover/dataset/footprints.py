"""Tile footprints in EPSG:4326, and the splits.gpkg map drawn from them.

A tile's footprint is its native box with every edge cut into :data:`DENSIFY_SEGMENTS` segments
(straight UTM edges are curves in lon/lat), computed from the bounds alone so that neighbouring
tiles share vertices. splits.gpkg holds one layer ``splits`` (the union of each split's tiles, done
exactly in each native CRS, with its tile count and area) and one layer ``tiles``; nothing
time-dependent is written, so the same catalog gives a byte-identical file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyogrio
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Geod, Transformer

from landcover.dataset.splits import SPLITS, box_outline, crs_key
from landcover.io.outputs import atomic_output

DENSIFY_SEGMENTS = 8
"""Segments per tile edge of the EPSG:4326 footprints (straight UTM edges are curves in lon/lat)."""


@functools.lru_cache(maxsize=64)
def to_wgs84(crs: str) -> Transformer:
    """The (x, y) -> (lon, lat) transformer of ``crs`` (cached: one per CRS)."""
    return Transformer.from_crs(ProjCRS.from_user_input(crs), ProjCRS.from_epsg(4326), always_xy=True)


def tile_footprint(
    bounds: tuple[float, float, float, float], crs: str, segments: int = DENSIFY_SEGMENTS
) -> shapely.Polygon:
    """The footprint of native ``bounds`` in EPSG:4326 (lon, lat), each edge cut in ``segments``.

    Edge points are computed from the bounds alone, so neighbouring tiles share their vertices.
    """
    lon, lat = to_wgs84(crs_key(str(crs))).transform(*box_outline(bounds, segments))
    return shapely.Polygon(np.column_stack([lon, lat]))


@contextlib.contextmanager
def _gdal_option(name: str, value: str) -> Iterator[None]:
    old = pyogrio.get_gdal_config_option(name)
    pyogrio.set_gdal_config_options({name: value})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({name: old})


def dissolve(frame: pd.DataFrame) -> shapely.MultiPolygon | None:
    """Union of tile boxes, done exactly in each native CRS, then densified into EPSG:4326."""
    if frame.empty:
        return None
    parts = []
    for crs, group in sorted(frame.groupby("crs"), key=lambda item: item[0]):
        boxes = shapely.box(
            group["xmin"].to_numpy(), group["ymin"].to_numpy(), group["xmax"].to_numpy(), group["ymax"].to_numpy()
        )
        union = shapely.union_all(boxes)
        step = float((group["xmax"] - group["xmin"]).min()) / DENSIFY_SEGMENTS
        union = shapely.segmentize(union, step)
        parts.append(
            shapely.transform(union, lambda xy, t=to_wgs84(crs): np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        )
    union = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    polygons = [g for g in shapely.get_parts(union) if isinstance(g, shapely.Polygon)]
    return shapely.MultiPolygon(polygons)


def write_splits_gpkg(table: pa.Table, path: Path) -> None:
    """Write splits.gpkg (layers ``splits`` and ``tiles``) of a catalog table, atomically."""
    frame = table.drop_columns(["geometry"]).to_pandas()
    geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    geod = Geod(ellps="WGS84")
    rows = []
    for name in (*SPLITS, "buffer"):
        mask = frame["buffer"] if name == "buffer" else (frame["split"] == name) & ~frame["buffer"]
        shape = dissolve(frame[mask])
        area = abs(geod.geometry_area_perimeter(shape)[0]) / 1e6 if shape is not None else 0.0
        rows.append({"split": name, "tiles": int(mask.sum()), "area_km2": area, "geometry": shape})
    splits = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    keep = [
        "tile_id",
        "scene_id",
        "split",
        "buffer",
        "valid_fraction",
        "cloud_fraction",
        "labelled_fraction",
        "dominant_class",
        "patch_id",
        "official_split",
    ]
    tiles = gpd.GeoDataFrame(frame[keep], geometry=geometry, crs="EPSG:4326")
    with atomic_output(path, overwrite=True) as tmp, _gdal_option("OGR_CURRENT_DATE", "2000-01-01T00:00:00Z"):
        pyogrio.write_dataframe(splits, tmp, layer="splits", driver="GPKG", geometry_type="MultiPolygon")
        pyogrio.write_dataframe(tiles, tmp, layer="tiles", driver="GPKG", append=True, geometry_type="Polygon")
