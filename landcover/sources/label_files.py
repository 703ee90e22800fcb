"""Reading CORINE label files, before anything is burnt onto a grid.

Owns what is read from the files themselves: which layer of a multi-layer vector file and which
attribute hold the codes (:data:`CODE_COLUMNS`, or the one the user names), the codes parsed from
text, integers or floats, attribute values turned into codes through a label-mapping CSV, the
features inside a grid's bounding box (pyogrio's bbox filter; GeoParquet through geopandas), and
the check that a source overlaps the grid at all. :mod:`landcover.sources.labels` burns the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.warp

from landcover.errors import LabelSourceError, NoOverlapError, UnknownCodeError
from landcover.io.grid import Grid
from landcover.nomenclature import IGNORE, corine_classes, nomenclature, special_codes

CODE_COLUMNS = ("CODE_18", "CODE_12", "CODE_06", "CODE_00", "CODE_90", "CLC_CODE")


def known_codes() -> set[int]:
    """Every CORINE level-3 code and the special codes (no data, unclassified...)."""
    return {c.code for c in corine_classes()} | set(special_codes())


def check_overlap(grid: Grid, src_crs: rasterio.crs.CRS, src_bounds: tuple, what: str) -> None:
    """Raise :class:`NoOverlapError` when ``src_bounds`` (in ``src_crs``) miss ``grid``."""
    left, bottom, right, top = rasterio.warp.transform_bounds(src_crs, grid.crs, *src_bounds, densify_pts=21)
    g = grid.bounds
    if left >= g[2] or right <= g[0] or bottom >= g[3] or top <= g[1]:
        fmt = "({:.0f}, {:.0f}, {:.0f}, {:.0f})"
        raise NoOverlapError(
            f"{what} does not overlap the grid: labels cover {fmt.format(left, bottom, right, top)} "
            f"but the grid covers {fmt.format(*g)} (left, bottom, right, top in {grid.crs.to_string()}); "
            "use a label source for the same region, or check both files' CRS"
        )


def find_code_column(columns: list[str], requested: str | None, path: Path) -> str:
    """The code attribute: ``requested`` or the first of :data:`CODE_COLUMNS`, case-insensitive."""
    by_lower = {c.lower(): c for c in columns}
    wanted = [requested] if requested else list(CODE_COLUMNS)
    for name in wanted:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    attrs = ", ".join(c for c in columns if c != "geometry")
    if requested:
        raise LabelSourceError(f"{path} has no column {requested!r} (columns: {attrs}); pass --code-column NAME")
    raise LabelSourceError(
        f"{path} has no CORINE code column ({'/'.join(CODE_COLUMNS)}; columns: {attrs}); pass --code-column NAME"
    )


def pick_layer(path: Path, code_column: str | None) -> str | None:
    """The layer holding CORINE codes in a multi-layer source (GPKG), or None for single-layer ones."""
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
    except Exception as exc:
        raise LabelSourceError(f"cannot read {path} as a vector file ({exc}); check the file") from exc
    if len(layers) <= 1:
        return None
    for name, geometry_type in layers:
        if geometry_type is None or "Polygon" not in str(geometry_type):
            continue
        fields = list(pyogrio.read_info(path, layer=name)["fields"])
        try:
            find_code_column(fields, code_column, path)
        except LabelSourceError:
            continue
        return str(name)
    raise LabelSourceError(
        f"no polygon layer of {path} has a CORINE code column (layers: {', '.join(layers[:, 0])}); "
        "pass --code-column NAME"
    )


def parse_codes(values, path: Path, column: str) -> np.ndarray:
    """Codes stored as text ('211'), integers or floats -> uint16; unknown codes are an error."""
    import pandas as pd

    series = pd.Series(values)
    numeric = pd.to_numeric(series.astype("string").str.strip(), errors="coerce")
    ok = numeric.notna() & (numeric == numeric.round()) & numeric.isin(sorted(known_codes()))
    if not ok.all():
        bad = series[~ok]
        examples = []
        for value, rows in bad.groupby(bad.astype("string").fillna("<empty>")).groups.items():
            idx = list(rows)
            examples.append(f"{value!s} (rows {', '.join(map(str, idx[:5]))}{', ...' if len(idx) > 5 else ''})")
        raise UnknownCodeError(
            f"{path}, column {column}: {len(bad)} feature(s) with codes not in the CLC nomenclature: "
            f"{'; '.join(examples[:10])}; fix these features or choose another column with --code-column"
        )
    return numeric.to_numpy().astype(np.uint16)


def load_label_mapping(path: str | Path, nomenclature_name: str) -> dict[str, int]:
    """A CSV ``value,<nomenclature>`` mapping attribute values onto classes of a nomenclature.

    The second column's header names the nomenclature (level1, level2, level3 or ben19) and its
    cells hold that nomenclature's class codes (e.g. ``forest,3``); an empty cell means ignore.
    Each value becomes a level-3 code of that class, so the one CORINE lookup table still does
    the final encoding. The mapping must target the dataset's nomenclature.
    """
    import csv

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(line for line in fh if not line.startswith("#")))
    except OSError as exc:
        raise LabelSourceError(f"cannot read label mapping {path}: {exc}") from exc
    if not rows or len(rows[0]) < 2:
        raise LabelSourceError(f"{path} must be a CSV with a header 'value,<nomenclature>'")
    target = rows[0][1].strip()
    if target != nomenclature_name:
        raise LabelSourceError(
            f"{path} maps onto {target!r} but the nomenclature is {nomenclature_name!r}; "
            f"use --nomenclature {target} or a mapping onto {nomenclature_name}"
        )
    nom = nomenclature(target)
    representative: dict[str, int] = {}
    for c in corine_classes():  # first level-3 code of each class of the target nomenclature
        cid = int(nom.encode(np.array([c.code]))[0])
        if cid != IGNORE:
            representative.setdefault(nom.codes[cid], c.code)
    mapping: dict[str, int] = {}
    for row in rows[1:]:
        value, cls = row[0].strip(), row[1].strip()
        if cls and cls not in representative:
            raise UnknownCodeError(
                f"{path}: {value!r} maps to {cls!r}, which is not a {target} class code ({', '.join(representative)})"
            )
        mapping[value] = representative[cls] if cls else 0
    return mapping


def map_values(values, mapping: dict[str, int], path: Path, column: str) -> np.ndarray:
    """Attribute values -> level-3 codes through a mapping; unmapped values are an error."""
    text = values.astype("string").fillna("<empty>").str.strip()
    missing = sorted(set(text) - set(mapping))
    if missing:
        raise UnknownCodeError(
            f"{path}, column {column}: value(s) {', '.join(missing[:20])} are not in the label mapping; "
            "add them to the mapping file (an empty class means ignore)"
        )
    return text.map(mapping).to_numpy().astype(np.uint16)


def read_vector(path: Path, grid: Grid, layer: str | None, code_column: str | None):
    """The features of ``path`` inside ``grid``'s bounds: (frame, code column, source CRS).

    OGR formats go through pyogrio with a bounding-box filter (only the grid's region is read);
    GeoParquet through geopandas.
    """
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import box

    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
            geometry = json.loads(schema.metadata[b"geo"])["primary_column"]
        except Exception as exc:
            raise LabelSourceError(f"cannot read {path} as GeoParquet ({exc}); check the file") from exc
        column = find_code_column([n for n in schema.names if n != geometry], code_column, path)
        frame = gpd.read_parquet(path, columns=[column, geometry])
        if frame.crs is None:
            raise LabelSourceError(f"{path} has no CRS; write it with one (GeoDataFrame.set_crs)")
        src_crs = rasterio.crs.CRS.from_user_input(frame.crs.to_wkt())
        total = tuple(frame.total_bounds) if len(frame) else None
        bbox = rasterio.warp.transform_bounds(grid.crs, src_crs, *grid.bounds, densify_pts=21)
        frame = frame[frame.intersects(box(*bbox))]
    else:
        if layer is None:
            layer = pick_layer(path, code_column)
        try:
            info = pyogrio.read_info(path, layer=layer, force_total_bounds=True)
        except Exception as exc:  # pyogrio raises several DataSourceError types
            raise LabelSourceError(f"cannot read {path} as a vector layer ({exc}); check the file") from exc
        if not info["crs"]:
            raise LabelSourceError(f"{path} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:3035)")
        src_crs = rasterio.crs.CRS.from_user_input(info["crs"])
        column = find_code_column(list(info["fields"]), code_column, path)
        total = tuple(info["total_bounds"]) if info.get("total_bounds") is not None else None
        bbox = rasterio.warp.transform_bounds(grid.crs, src_crs, *grid.bounds, densify_pts=21)
        # A bbox read may return features in spatial-index order: sort by feature id (file order).
        frame = gpd.read_file(
            path, layer=layer, bbox=tuple(bbox), columns=[column], engine="pyogrio", fid_as_index=True
        ).sort_index()
    if frame.empty:
        if total is not None and all(np.isfinite(total)):
            check_overlap(grid, src_crs, total, str(path))
        raise NoOverlapError(f"{path} has no features inside the grid; use labels for this region")
    return frame, column, src_crs
