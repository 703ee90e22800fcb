"""The STAC Collection of an ingested dataset: ``collection.json`` at the dataset's root and one Item per scene,
``scenes/<scene_id>/item.json``, built with pystac and saved self-contained (relative hrefs), each file whole or
not at all (:mod:`landcover.io.outputs`); the collection is written last.

A scene's Item has the projection extension of its grid, the ``image`` asset (``eo:bands`` with the Sentinel-2
band names, common names and wavelengths; ``raster:bands`` with scale 0.0001 and offset 0, since the stack is
harmonised reflectance x 10000, and no data 0), the ``labels`` asset (classification extension: class ids, names,
colours, 255 = no label) and the scene's QGIS style, catalog part and provenance. ``ingest`` writes it at finalize.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pystac
import shapely
from affine import Affine
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.layout import CustomLayoutStrategy
from pystac.stac_io import DefaultStacIO
from rasterio.crs import CRS

from landcover.errors import DatasetError
from landcover.io.outputs import write_text_atomic
from landcover.io.stac_items import add_platform, add_projection, classes, footprint, sensing_datetime, set_datetime
from landcover.nomenclature import IGNORE, sentinel2_bands
from landcover.sources.recipe import split_band
from landcover.sources.s2meta import parse_name

COLLECTION_FILE = "collection.json"
ITEM_FILE = "item.json"
REFLECTANCE_SCALE = 0.0001  # image.tif holds reflectance x 10000


class AtomicStacIO(DefaultStacIO):
    """pystac's file I/O, each file written under a temporary name and renamed when complete."""

    def write_text_to_href(self, href: str, txt: str) -> None:
        write_text_atomic(Path(href), txt)


def _eo_bands(bands: list[str]) -> list[Band]:
    info = sentinel2_bands()
    return [
        Band.create(
            name=b,
            common_name=info[split_band(b)[0]].common_name,
            description=info[split_band(b)[0]].description,
            center_wavelength=info[split_band(b)[0]].wavelength_nm / 1000,
            full_width_half_max=info[split_band(b)[0]].bandwidth_nm / 1000,
        )
        for b in bands
    ]


def scene_item(scene_dir: Path, dataset: dict[str, Any]) -> pystac.Item:
    """The Item of one complete scene folder (with scene.json) of a finalized dataset (``dataset``: dataset.json)."""
    meta = json.loads((scene_dir / "scene.json").read_text())
    grid = meta["grid"]
    crs, transform = CRS.from_user_input(grid["crs"]), Affine(*grid["transform"])
    width, height = int(grid["width"]), int(grid["height"])
    geometry, bbox = footprint(crs, transform, width, height)
    prov = meta.get("provenance") or {}
    created = dt.datetime.fromtimestamp((scene_dir / "scene.json").stat().st_mtime, dt.UTC)
    item = pystac.Item(meta["scene_id"], geometry, bbox, created, {})
    add_projection(item, crs, transform, width, height)
    named = parse_name(str(prov.get("product_id") or ""))  # datasets ingested before scene.json had sensing_time
    sensing = meta.get("sensing_time") or (named.sensing_time if named is not None else None)
    set_datetime(item, sensing_datetime(sensing), created)
    if prov.get("kind") == "composite":  # a composite covers its periods: start_datetime .. end_datetime
        periods = prov["composite"]["periods"]
        item.common_metadata.start_datetime = sensing_datetime(min(p["start"] for p in periods))
        item.common_metadata.end_datetime = sensing_datetime(max(p["end"] for p in periods) + "T23:59:59")
        item.properties["landcover:composite"] = prov["composite"]
    add_platform(item, str(prov.get("product_id") or ""))
    item.properties.update(
        {
            "landcover:product_id": prov.get("product_id"),
            "landcover:processing_level": prov.get("level"),
            "landcover:processing_baseline": prov.get("processing_baseline"),
            "landcover:offsets_applied": prov.get("offsets_applied"),
            "landcover:tiles": meta.get("tiles"),
            "landcover:valid_fraction": meta.get("valid_fraction"),
        }
    )
    _add_image(item, scene_dir, meta["bands"], dataset)
    _add_labels(item, scene_dir, dataset)
    for name, media_type, title in (
        ("labels.qml", pystac.MediaType.XML, "QGIS layer style of the labels"),
        ("tiles.parquet", pystac.MediaType.PARQUET, "the scene's tiles (landcover catalog part)"),
        ("scene.json", pystac.MediaType.JSON, "provenance of the scene (landcover ingest)"),
    ):
        if (scene_dir / name).is_file():
            item.add_asset(name.split(".")[0] if name != "labels.qml" else "labels_style",
                           pystac.Asset(str((scene_dir / name).resolve()), title, media_type=media_type,
                                        roles=["metadata"]))  # fmt: skip
    return item


def _add_image(item: pystac.Item, scene_dir: Path, bands: list[str], dataset: dict[str, Any]) -> None:
    """The image.tif asset: eo:bands and raster:bands (the reflectance scale when the stack is harmonised)."""
    harmonised = (dataset.get("config") or {}).get("harmonize", True)
    asset = pystac.Asset(
        str((scene_dir / "image.tif").resolve()),
        "Sentinel-2 reflectance x 10000" if harmonised else "Sentinel-2 digital numbers (not harmonised)",
        media_type=pystac.MediaType.GEOTIFF,
        roles=["data"],
    )
    item.add_asset("image", asset)
    EOExtension.ext(asset, add_if_missing=True).bands = _eo_bands(bands)
    res = float(dataset.get("resolution") or abs(item.properties["proj:transform"][0]))
    scale, offset = (REFLECTANCE_SCALE, 0.0) if harmonised else (None, None)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=0, data_type=DataType.UINT16, spatial_resolution=res, scale=scale, offset=offset)
        for _ in bands
    ]


def _add_labels(item: pystac.Item, scene_dir: Path, dataset: dict[str, Any]) -> None:
    """The labels.tif asset: class ids with the classification extension."""
    nom = dataset["nomenclature"]
    ordered = sorted(nom["classes"], key=lambda c: int(c["id"]))
    asset = pystac.Asset(
        str((scene_dir / "labels.tif").resolve()),
        f"CORINE Land Cover labels ({nom['name']} class ids, 255 = no label)",
        media_type=pystac.MediaType.GEOTIFF,
        roles=["data", "labels"],
    )
    item.add_asset("labels", asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(
            nodata=IGNORE, data_type=DataType.UINT8, spatial_resolution=float(dataset.get("resolution") or 10.0)
        )
    ]
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes(
        [str(c["code"]) for c in ordered],
        [str(c["name"]) for c in ordered],
        [(int(c["rgb"][0]), int(c["rgb"][1]), int(c["rgb"][2])) for c in ordered],
        int(nom.get("ignore_index", IGNORE)),
    )


def collection_id(dataset: dict[str, Any]) -> str:
    """``landcover-<8 hex>``: a digest of the scenes and settings, the same wherever the folder is (no path)."""
    key = json.dumps([sorted(s["scene_id"] for s in dataset["scenes"]), dataset.get("config")], sort_keys=True)
    return f"landcover-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def scenes_collection(dataset_dir: str | Path) -> pystac.Collection:
    """The Collection of a finalized dataset's complete scenes, its hrefs normalised to the dataset folder
    (``collection.json``, ``scenes/<id>/item.json``) and its asset hrefs relative."""
    root = Path(dataset_dir).resolve()
    if not (root / "dataset.json").is_file():
        raise DatasetError(f"{root} has no dataset.json; run landcover ingest (or ingest --finalize) first")
    dataset = json.loads((root / "dataset.json").read_text())
    items = [scene_item(root / "scenes" / s["scene_id"], dataset) for s in dataset["scenes"]]
    if not items:
        raise DatasetError(f"{root} has no complete scene; run landcover ingest first")
    boxes = [shapely.box(*item.bbox) for item in items if item.bbox]
    times = [item.datetime for item in items if item.datetime is not None]
    collection = pystac.Collection(
        id=collection_id(dataset),
        description=(
            f"landcover dataset: {len(items)} Sentinel-2 scene(s), bands {', '.join(dataset['bands'])}, "
            f"{dataset['nomenclature']['name']} labels from CORINE Land Cover"
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([list(shapely.union_all(boxes).bounds)]),
            pystac.TemporalExtent([[min(times), max(times)]]),
        ),
        license="other",
        extra_fields={"landcover:format": dataset.get("format"), "landcover:software": dataset.get("software")},
    )
    collection.add_items(items)
    strategy = CustomLayoutStrategy(
        item_func=lambda item, parent: str(Path(parent) / "scenes" / item.id / ITEM_FILE),
        collection_func=lambda col, parent, is_root: str(Path(parent) / COLLECTION_FILE),
    )
    collection.normalize_hrefs(str(root), strategy=strategy)
    collection.make_all_asset_hrefs_relative()
    return collection


def write_scenes_collection(dataset_dir: str | Path) -> Path:
    """Save :func:`scenes_collection` self-contained: the items first, ``collection.json`` last, each atomically."""
    collection = scenes_collection(dataset_dir)
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=AtomicStacIO())
    return Path(dataset_dir) / COLLECTION_FILE
