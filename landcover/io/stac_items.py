"""STAC Items of landcover's maps, built with pystac (never by hand), so that stackstac, odc-stac and QGIS's STAC
browser load them like any catalogued raster.

:func:`map_item` describes a predicted map: its grid's footprint in WGS84, the projection extension (``proj:code``,
``proj:shape``, ``proj:transform``, ``proj:bbox``), the raster extension (``raster:bands``: no data, data type,
resolution) and the classification extension (``classification:classes``: each class id with its name and colour,
and the no-data value 255 as a class with ``nodata: true``), the provenance of the map as ``landcover:*``
properties, and the map and its side files (probabilities, confidence, QGIS style, quick look) as assets with
relative hrefs. :func:`write_map_item` writes it as ``<map stem>.stac.json`` next to the map, whole or not at all.
The helpers here are shared with :mod:`landcover.dataset.stac_collection` (the collection ``ingest`` writes).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import shapely
from affine import Affine
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from landcover.io.outputs import write_text_atomic
from landcover.nomenclature import IGNORE, Nomenclature

ITEM_SUFFIX = ".stac.json"
"""A map's STAC Item is ``<map stem>.stac.json`` next to it."""

SIDECARS: dict[str, tuple[str, list[str], str, str]] = {
    # role in predict's outputs -> (file name after the map's stem, STAC roles, media type, title)
    "probabilities": ("_probabilities.tif", ["data"], pystac.MediaType.COG, "class probabilities x 255, one band each"),
    "confidence": ("_confidence.tif", ["data"], pystac.MediaType.COG, "confidence: max class probability x 255"),
    "qml": (".qml", ["metadata"], pystac.MediaType.XML, "QGIS layer style (palette and class names)"),
    "quicklook": (".png", ["overview"], pystac.MediaType.PNG, "quick look with a legend"),
}

PROVENANCE_TAGS = (  # tags of a map (predict's provenance) kept as landcover:<lower-case name> properties
    "PRODUCT_ID",
    "INPUT",
    "PROCESSING_LEVEL",
    "PROCESSING_BASELINE",
    "SENSING_TIME",
    "CHECKPOINT",
    "CHECKPOINT_SHA256",
    "CHECKPOINT_PROCESSING_LEVEL",
    "TASK",
    "NOMENCLATURE",
    "SOFTWARE",
)


def item_path(map_path: str | Path) -> Path:
    """Where the STAC Item of a map goes: ``<map stem>.stac.json`` next to it."""
    path = Path(map_path)
    return path.with_name(path.stem + ITEM_SUFFIX)


def footprint(crs: CRS, transform: Affine, width: int, height: int) -> tuple[dict[str, Any], list[float]]:
    """The grid's extent as a WGS84 GeoJSON polygon (edges densified before reprojection) and its bbox."""
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    box = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    box = shapely.segmentize(box, max(box.bounds[2] - box.bounds[0], box.bounds[3] - box.bounds[1]) / 4)
    geometry = transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(box))
    return dict(geometry), [float(v) for v in shapely.geometry.shape(geometry).bounds]


def add_projection(item: pystac.Item, crs: CRS, transform: Affine, width: int, height: int) -> None:
    """The projection extension of a raster grid: its CRS (EPSG code, else WKT2), shape, transform and bbox."""
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg else crs.to_wkt(),
        shape=[height, width],
        transform=[float(v) for v in list(transform)[:6]],
        bbox=[float(v) for v in rasterio.transform.array_bounds(height, width, transform)],
    )


def classes(
    codes: Sequence[str],
    names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    nodata: int = IGNORE,
    counts: np.ndarray | None = None,
) -> list[Classification]:
    """``classification:classes``: class id, name (a slug), title, ``code name`` description and colour of each
    class, then the no-data value as a class with ``nodata: true``; ``counts`` (pixels per value) when known."""

    def count(value: int) -> int | None:
        return int(counts[value]) if counts is not None and value < counts.size else None

    out = [
        Classification.create(
            value=i,
            name=re.sub(r"[^0-9A-Za-z]+", "_", f"{code}_{name}").strip("_").lower(),
            title=name,
            description=f"{code} {name}",
            color_hint=f"{r:02X}{g:02X}{b:02X}",
            count=count(i),
        )
        for i, (code, name, (r, g, b)) in enumerate(zip(codes, names, colors, strict=True))
    ]
    out.append(
        Classification.create(
            value=nodata,
            name="no_data",
            title="no data",
            description="no data: outside the input, no valid input pixel, or masked",
            nodata=True,
            count=count(nodata),
        )
    )
    return out


def sensing_datetime(text: str | None) -> dt.datetime | None:
    """A sensing time (ISO 8601, UTC when no zone is given) as a datetime; None if unknown."""
    if not text or text == "unknown":
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def set_datetime(item: pystac.Item, sensing: dt.datetime | None, created: dt.datetime) -> None:
    """``datetime`` = the sensing time when known, else ``created``, the time the file was made
    (``landcover:datetime`` says which)."""
    item.datetime = sensing or created
    item.properties["landcover:datetime"] = "sensing time" if sensing else "creation time (sensing time unknown)"


def add_platform(item: pystac.Item, product_id: str) -> None:
    """``constellation`` and ``platform`` of a Sentinel-2 product id (S2A_..., S2B_...)."""
    if (m := re.match(r"S2([A-D])_", product_id)) is not None:
        item.common_metadata.constellation = "sentinel-2"
        item.common_metadata.platform = f"sentinel-2{m.group(1).lower()}"


def class_counts(ds: rasterio.io.DatasetReader) -> np.ndarray:
    """Pixels per value of band 1 of a class map, read block by block."""
    counts = np.zeros(1 << (8 * np.dtype(ds.dtypes[0]).itemsize), np.int64)
    for _, window in ds.block_windows(1):
        counts += np.bincount(ds.read(1, window=window).ravel(), minlength=counts.size)
    return counts


def map_classes(ds: rasterio.io.DatasetReader, nom: Nomenclature | None) -> tuple[list[str], list[str], list[Any]]:
    """Codes, names and colours of a map's classes: the nomenclature's, else the map's tags and colour table."""
    if nom is not None:
        return list(nom.codes), list(nom.class_names), list(nom.colors)
    tags = ds.tags()
    names = [str(n) for n in json.loads(tags.get("CLASS_NAMES", "[]"))]
    codes = [str(c) for c in json.loads(tags.get("CLASS_CODES", "[]"))] or [str(i) for i in range(len(names))]
    colormap = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
    colors = [tuple(colormap.get(i, (128, 128, 128, 255))[:3]) for i in range(len(names))]
    return codes, names, colors


def provenance_properties(tags: Mapping[str, str]) -> dict[str, Any]:
    """A map's provenance tags as ``landcover:*`` properties (valid fraction a number, warnings a list)."""
    props: dict[str, Any] = {f"landcover:{k.lower()}": tags[k] for k in PROVENANCE_TAGS if k in tags}
    if "VALID_FRACTION" in tags:
        props["landcover:valid_fraction"] = float(tags["VALID_FRACTION"])
    if tags.get("WARNINGS", "none") != "none":
        props["landcover:warnings"] = tags["WARNINGS"].split(" | ")
    return props


def map_item(
    map_path: str | Path,
    nom: Nomenclature | None = None,
    *,
    raster: str | Path | None = None,
    sidecars: Mapping[str, str | Path] | None = None,
    created: dt.datetime | None = None,
) -> pystac.Item:
    """The STAC Item of the class map ``map_path`` (see the module doc); its self href is :func:`item_path`.

    ``raster``: the file to read (default ``map_path``; predict passes the COG under its temporary name).
    ``nom``: the classes (default: the map's CLASS_NAMES / CLASS_CODES tags and colour table). ``sidecars``: role
    (probabilities, confidence, qml, quicklook) -> path of side files; default: those next to the map.
    """
    map_path = Path(map_path)
    created = created or dt.datetime.now(dt.UTC)
    with rasterio.open(raster or map_path) as ds:
        geometry, bbox = footprint(ds.crs, ds.transform, ds.width, ds.height)
        tags, res, dtype = ds.tags(), float(ds.res[0]), ds.dtypes[0]
        nodata = int(ds.nodata) if ds.nodata is not None else IGNORE
        codes, names, colors = map_classes(ds, nom)
        counts = class_counts(ds)
        item = pystac.Item(map_path.stem, geometry, bbox, created, {})
        add_projection(item, ds.crs, ds.transform, ds.width, ds.height)
    set_datetime(item, sensing_datetime(tags.get("SENSING_TIME")), created)
    item.common_metadata.created = created
    item.properties.update(provenance_properties(tags))
    add_platform(item, tags.get("PRODUCT_ID", ""))
    asset = pystac.Asset(str(map_path.resolve()), f"land-cover classes ({tags.get('NOMENCLATURE', 'classes')})",
                         media_type=pystac.MediaType.COG, roles=["data"])  # fmt: skip
    item.add_asset("map", asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=nodata, data_type=DataType(dtype), spatial_resolution=res)
    ]
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes(codes, names, colors, nodata, counts)
    _add_sidecars(item, map_path, sidecars, res)
    item.set_self_href(str(item_path(map_path).resolve()))
    item.make_asset_hrefs_relative()
    return item


def _add_sidecars(item: pystac.Item, map_path: Path, sidecars: Mapping[str, str | Path] | None, res: float) -> None:
    """The side files of a map as assets (probability and confidence rasters with their scale)."""
    if sidecars is None:
        found = {role: map_path.with_name(map_path.stem + spec[0]) for role, spec in SIDECARS.items()}
        sidecars = {role: path for role, path in found.items() if path.is_file()}
    for role, path in sidecars.items():
        if role not in SIDECARS:
            continue
        _, roles, media_type, title = SIDECARS[role]
        asset = pystac.Asset(str(Path(path).resolve()), title, media_type=media_type, roles=roles)
        item.add_asset(role, asset)
        if role in ("probabilities", "confidence"):
            with rasterio.open(path) as ds:
                count = ds.count
            RasterExtension.ext(asset, add_if_missing=True).bands = [
                RasterBand.create(data_type=DataType.UINT8, spatial_resolution=res, scale=1 / 255, offset=0.0)
                for _ in range(count)
            ]


def write_map_item(
    map_path: str | Path,
    nom: Nomenclature | None = None,
    *,
    raster: str | Path | None = None,
    sidecars: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write :func:`map_item` as ``<map stem>.stac.json`` next to the map (atomically; no self link, so no path of
    this machine is in it; asset hrefs are relative)."""
    item = map_item(map_path, nom, raster=raster, sidecars=sidecars)
    path = item_path(map_path)
    write_text_atomic(path, json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return path
