"""The tiles catalog of an ingested dataset: per-tile statistics and leakage-aware spatial splits.

Ingest calls :func:`tile_record` for every tile of a scene, :func:`write_scene_part` once per scene
and :func:`finalize` once at the end; training reads the result with :func:`read_catalog`.

Splits are assigned by :func:`finalize`, from the tile coordinates alone (see
:mod:`landcover.dataset.splits`: blocks of one grid shared by every CRS, a buffer between splits), so
scenes and shards processed independently agree, and a dataset can be re-split without reading
its imagery again. Buffer tiles stay in the catalog (``buffer=True``) but :func:`read_catalog`
leaves them out unless asked. Tile footprints and the splits.gpkg map are
:mod:`landcover.dataset.footprints`' part, band and class statistics :mod:`landcover.dataset.catalog_stats`'.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio.windows
import shapely
from pyproj import CRS as ProjCRS
from rasterio.windows import Window

from landcover.dataset.catalog_stats import band_statistics
from landcover.dataset.footprints import tile_footprint, write_splits_gpkg
from landcover.dataset.splits import (  # noqa: F401  (SplitConfig and the split functions are catalog's API too)
    SPLITS,
    SplitConfig,
    block_size,
    block_split,
    check_block_size,
    scene_split,
    tile_split,
)
from landcover.errors import ConfigError, DatasetError
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_output
from landcover.nomenclature import IGNORE, Nomenclature

CATALOG_NAME = "catalog.parquet"
SPLITS_GPKG_NAME = "splits.gpkg"

SCHEMA = pa.schema(
    [
        ("tile_id", pa.string()),
        ("scene_id", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("crs", pa.string()),
        ("xmin", pa.float64()),
        ("ymin", pa.float64()),
        ("xmax", pa.float64()),
        ("ymax", pa.float64()),
        ("split", pa.string()),
        ("buffer", pa.bool_()),
        ("valid_fraction", pa.float64()),
        ("cloud_fraction", pa.float64()),
        ("labelled_fraction", pa.float64()),
        ("class_counts", pa.list_(pa.int64())),
        ("dominant_class", pa.int32()),
        ("present_classes", pa.list_(pa.int32())),
        ("band_sum", pa.list_(pa.float64())),
        ("band_sumsq", pa.list_(pa.float64())),
        ("band_count", pa.int64()),
        ("patch_id", pa.string()),
        ("patch_labels", pa.list_(pa.int32())),
        ("patch_label_names", pa.list_(pa.string())),
        ("official_split", pa.string()),
        ("geometry", pa.binary()),
    ]
)
"""Arrow schema of scene parts and of catalog.parquet (geometry: WKB polygons in EPSG:4326).

``patch_*`` and ``official_split`` describe the BigEarthNet patch a tile coincides with (empty
otherwise): its id, its patch-level labels as class ids of the dataset nomenclature (empty when
they cannot be converted) and as BigEarthNet names, and its official split (train/val/test).
"""

COLUMNS = tuple(SCHEMA.names)
PERIOD_PREFIX = "valid_fraction@"
"""Composites' parts and catalogs add one float64 column per period: ``valid_fraction@<period>``, the share of
the tile's pixels with at least one valid observation in that period."""


def period_column(period: str) -> str:
    return PERIOD_PREFIX + period


def part_schema(names: Sequence[str]) -> pa.Schema:
    """:data:`SCHEMA` plus the per-period columns among ``names`` (in their order)."""
    extra = [pa.field(n, pa.float64()) for n in names if n.startswith(PERIOD_PREFIX)]
    return pa.schema([*SCHEMA, *extra])


def _known_schema(schema: pa.Schema) -> bool:
    """Whether ``schema`` is :data:`SCHEMA` (plus per-period float64 columns)."""
    return schema.equals(part_schema(schema.names))


# --- records ----------------------------------------------------------------------------------


def tile_record(
    *,
    scene_id: str,
    grid: Grid,
    window: Window,
    labels: np.ndarray,
    valid: np.ndarray,
    cloud: np.ndarray | None,
    image: np.ndarray,
    nomenclature: Nomenclature,
    split_cfg: SplitConfig,
    present_threshold: float = 0.01,
    patch_id: str = "",
    patch_labels: Sequence[int] = (),
    patch_label_names: Sequence[str] = (),
    official_split: str = "",
) -> dict[str, Any] | None:
    """The catalog row of one tile, or None when its cloud-free image share is below the minimum.

    ``labels`` (H, W) uint8 class ids with 255 = ignore; ``valid`` (H, W) image has data;
    ``cloud`` (H, W) SCL-invalid pixels or None; ``image`` (C, H, W). ``split_cfg`` gives the
    minimum valid fraction; the split itself is assigned by :func:`finalize` (``split`` is ''
    until then). Class statistics count every pixel with a label (labels != 255): set labels to 255 where the
    image is unusable if those pixels must not count. Band sums use valid & ~cloud pixels only.
    ``patch_id``, ``patch_labels`` (class ids), ``patch_label_names`` and ``official_split`` are
    copied as they are (BigEarthNet patches; see :data:`SCHEMA`).
    """
    row, col, height, width = _tile_window(window, grid)
    shape = (height, width)
    _check_shapes(shape, {"labels": labels, "valid": valid} | ({} if cloud is None else {"cloud": cloud}), image)
    valid = np.asarray(valid, dtype=bool)
    cloudy = np.zeros(shape, bool) if cloud is None else np.asarray(cloud, dtype=bool) & valid
    usable = valid & ~cloudy
    n_pixels = height * width
    n_usable = int(usable.sum())
    valid_fraction = n_usable / n_pixels if n_pixels else 0.0
    if n_pixels == 0 or valid_fraction < split_cfg.min_valid_fraction:
        return None

    where = f"tile r{row} c{col} of {scene_id}"
    class_counts, labelled, dominant, present = _class_statistics(labels, nomenclature, present_threshold, where)
    band_sum, band_sumsq = _band_sums(image, usable, n_usable == n_pixels)
    crs = grid.crs.to_string()
    left, bottom, right, top = rasterio.windows.bounds(window, grid.transform)
    bounds = (min(left, right), min(bottom, top), max(left, right), max(bottom, top))
    return {
        "tile_id": f"{scene_id}_r{row:05d}_c{col:05d}",
        "scene_id": scene_id,
        "row": row,
        "col": col,
        "height": height,
        "width": width,
        "crs": crs,
        "xmin": bounds[0],
        "ymin": bounds[1],
        "xmax": bounds[2],
        "ymax": bounds[3],
        "split": "",
        "buffer": False,  # assigned by finalize()
        "valid_fraction": valid_fraction,
        "cloud_fraction": int(cloudy.sum()) / n_pixels,
        "labelled_fraction": labelled / n_pixels,
        "class_counts": [int(c) for c in class_counts],
        "dominant_class": dominant,
        "present_classes": present,
        "band_sum": band_sum,
        "band_sumsq": band_sumsq,
        "band_count": n_usable,
        "patch_id": patch_id,
        "patch_labels": [int(c) for c in patch_labels],
        "patch_label_names": [str(n) for n in patch_label_names],
        "official_split": official_split,
        "geometry": tile_footprint(bounds, crs),
    }


def _tile_window(window: Window, grid: Grid) -> tuple[int, int, int, int]:
    """(row, col, height, width) of a tile window, checked to be on whole pixels inside ``grid``."""
    values = (window.row_off, window.col_off, window.height, window.width)
    if any(float(v) != int(v) for v in values):
        raise ValueError(f"tile window {window} is not on whole pixels")
    row, col, height, width = (int(v) for v in values)
    if row < 0 or col < 0 or row + height > grid.height or col + width > grid.width:
        raise ValueError(f"tile window {window} lies outside the {grid.width} x {grid.height} grid")
    return row, col, height, width


def _check_shapes(shape: tuple[int, int], masks: dict[str, np.ndarray], image: np.ndarray) -> None:
    """Check that every (H, W) mask and the (C, H, W) image have the tile window's shape."""
    for name, array in masks.items():
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, the tile window is {shape}")
    if image.ndim != 3 or image.shape[1:] != shape:
        raise ValueError(f"image has shape {image.shape}, expected (bands, {shape[0]}, {shape[1]})")


def _class_statistics(
    labels: np.ndarray, nomenclature: Nomenclature, present_threshold: float, where: str
) -> tuple[np.ndarray, int, int, list[int]]:
    """(pixels per class, labelled pixels, dominant class or -1, classes over ``present_threshold``) of a tile."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256)
    k = nomenclature.num_classes
    if counts[k:IGNORE].any():
        bad = [int(v) for v in np.flatnonzero(counts[k:IGNORE]) + k]
        raise DatasetError(
            f"label values {bad} in {where} are not class ids "
            f"of the {nomenclature.name} nomenclature (0..{k - 1}, 255 = ignore); "
            "this is a bug in label encoding: report it"
        )
    class_counts = counts[:k]
    labelled = int(class_counts.sum())
    if not labelled:
        return class_counts, 0, -1, []
    present = [int(c) for c in np.flatnonzero(class_counts / labelled >= present_threshold)]
    return class_counts, labelled, int(np.argmax(class_counts)), present


def _band_sums(image: np.ndarray, usable: np.ndarray, all_usable: bool) -> tuple[list[float], list[float]]:
    """Per-band sum and sum of squares of the usable pixels of a (C, H, W) image."""
    # one float64 copy of the usable pixels of all bands; sums of uint16 values stay exact integers
    pixels = (image.reshape(image.shape[0], -1) if all_usable else image[:, usable]).astype(np.float64)
    return [float(v) for v in pixels.sum(axis=1)], [float(v) for v in np.einsum("ij,ij->i", pixels, pixels)]


# --- GeoParquet -------------------------------------------------------------------------------


def _geo_metadata(geometry: pa.Array) -> bytes:
    geoms = shapely.from_wkb(geometry.to_numpy(zero_copy_only=False))
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": ProjCRS.from_epsg(4326).to_json_dict(),
    }
    if len(geoms):
        column["bbox"] = [float(v) for v in shapely.total_bounds(geoms)]
    meta = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
    return json.dumps(meta, sort_keys=True).encode("utf-8")


def _write_table(table: pa.Table, path: Path) -> None:
    """Write a table of :data:`SCHEMA` as GeoParquet, atomically and byte-reproducibly."""
    table = table.replace_schema_metadata({"geo": _geo_metadata(table.column("geometry"))})
    with atomic_output(path, overwrite=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def records_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Tile records -> an Arrow table of :data:`SCHEMA` (geometry as WKB)."""
    rows = []
    for record in records:
        missing = set(COLUMNS) - set(record)
        if missing:
            raise ValueError(
                f"record {record.get('tile_id')} lacks {sorted(missing)}; build records with tile_record()"
            )
        geometry = record["geometry"]
        rows.append(
            {
                **record,
                "geometry": shapely.to_wkb(geometry, byte_order=1)
                if isinstance(geometry, shapely.Geometry)
                else geometry,
            }
        )
    names = list(dict.fromkeys(n for record in records for n in record))
    return pa.Table.from_pylist(rows, schema=part_schema(names))


def write_scene_part(records: list[dict[str, Any]], path: Path) -> None:
    """Write one scene's tile records (maybe none) as a GeoParquet part, atomically."""
    _write_table(records_table(records), Path(path))


# --- finalize ---------------------------------------------------------------------------------


def _read_parts(part_paths: Sequence[Path]) -> pa.Table:
    tables = []
    for path in part_paths:
        path = Path(path)
        try:
            table = pq.read_table(path)
        except FileNotFoundError as exc:
            raise DatasetError(
                f"catalog part {path} is missing; re-run `landcover ingest` to process its scene again"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(
                f"catalog part {path} cannot be read ({exc}); delete it and re-run "
                "`landcover ingest` to process its scene again"
            ) from exc
        if not _known_schema(table.schema.remove_metadata()):
            raise DatasetError(
                f"catalog part {path} has columns {table.schema.names}, expected "
                f"{list(COLUMNS)} (written by another landcover version?); "
                "re-run `landcover ingest --overwrite`"
            )
        tables.append(table.replace_schema_metadata(None))
    table = pa.concat_tables(tables, promote_options="default") if tables else SCHEMA.empty_table()
    table = table.sort_by([("scene_id", "ascending"), ("row", "ascending"), ("col", "ascending")])
    dupes = sorted(i for i, n in Counter(table.column("tile_id").to_pylist()).items() if n > 1)
    if dupes:
        raise DatasetError(
            f"tiles {dupes[:5]} appear in more than one catalog part (the same scene "
            "ingested twice?); pass each scene once and re-run `landcover ingest`"
        )
    return table


def assign_splits(table: pa.Table, cfg: SplitConfig, tile_size_m: float) -> pa.Table:
    """``table`` with ``split`` and ``buffer`` computed from each tile's bounds, CRS and scene
    (:func:`landcover.dataset.splits.tile_split`; ``tile_size_m`` is the nominal tile side)."""
    columns = [table.column(c).to_pylist() for c in ("xmin", "ymin", "xmax", "ymax", "crs", "scene_id")]
    pairs = [
        tile_split((x0, y0, x1, y1), crs, tile_size_m, cfg, scene)
        for x0, y0, x1, y1, crs, scene in zip(*columns, strict=True)
    ]
    splits = pa.array([p[0] for p in pairs], pa.string())
    buffers = pa.array([p[1] for p in pairs], pa.bool_())
    table = table.set_column(table.schema.get_field_index("split"), "split", splits)
    return table.set_column(table.schema.get_field_index("buffer"), "buffer", buffers)


def finalize(
    dataset_dir: Path, part_paths: list[Path], bands: list[str], split_cfg: SplitConfig, tile_size_m: float
) -> dict[str, Any]:
    """Merge scene parts into catalog.parquet and splits.gpkg, assigning every tile its split;
    return the train band statistics.

    Rows are sorted by (scene_id, row, col) and nothing time-dependent is written, so the same
    parts give byte-identical files. catalog.parquet is written last: when it exists, so does
    splits.gpkg. The statistics come from train tiles outside the buffer only.
    """
    dataset_dir = Path(dataset_dir)
    table = assign_splits(_read_parts(part_paths), split_cfg, tile_size_m)
    stats = band_statistics(table, bands)
    write_splits_gpkg(table, dataset_dir / SPLITS_GPKG_NAME)
    _write_table(table, dataset_dir / CATALOG_NAME)
    return stats


def lonlat_bounds(dataset_dir: Path) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) of every tile of a finalized catalog (None when it has none)."""
    meta = pq.read_schema(Path(dataset_dir) / CATALOG_NAME).metadata or {}
    bbox = json.loads(meta.get(b"geo", b"{}")).get("columns", {}).get("geometry", {}).get("bbox")
    return None if bbox is None else (bbox[0], bbox[1], bbox[2], bbox[3])


# --- reading ----------------------------------------------------------------------------------


def read_catalog(dataset_dir: Path, split: str | None = None, include_buffer: bool = False) -> gpd.GeoDataFrame:
    """The catalog of an ingested dataset, optionally one split; buffer tiles only if asked."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = Path(dataset_dir) / CATALOG_NAME
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist: {dataset_dir} is not an ingested dataset (or "
            "its ingest did not finish); run `landcover ingest` first"
        )
    try:
        catalog = gpd.read_parquet(path)
    except Exception as exc:
        raise DatasetError(f"cannot read {path} ({exc}); re-run `landcover ingest --overwrite`") from exc
    missing = set(COLUMNS) - set(catalog.columns)
    if missing:
        raise DatasetError(
            f"{path} lacks columns {sorted(missing)} (made by another landcover "
            "version?); re-run `landcover ingest --overwrite`"
        )
    keep = np.ones(len(catalog), bool)
    if split is not None:
        keep &= (catalog["split"] == split).to_numpy()
    if not include_buffer:
        keep &= ~catalog["buffer"].to_numpy(dtype=bool)
    return catalog[keep].reset_index(drop=True)
