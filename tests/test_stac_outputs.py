"""STAC outputs: each predicted map's Item (``<map>.stac.json``) and the Collection ``ingest`` writes of its scenes,
read back with pystac (no schema validation: that would fetch the schemas over the network)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.warp import transform as warp_points

from landcover.dataset.ingest import finalize, ingest
from landcover.inference.predict import predict_scene
from landcover.io.stac_items import map_item
from landcover.nomenclature import IGNORE, nomenclature
from tests.s2_fixtures import make_safe
from tests.test_ingest import SMALL, clc  # noqa: F401  (clc: the labels fixture)
from tests.test_predict import Conv1x1, loaded, scene, write_stack

ESA_ID = "S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_20230115T120000"


def corners_lonlat(ds) -> tuple[list[float], list[float]]:
    w, s, e, n = ds.bounds
    return warp_points(ds.crs, "EPSG:4326", [w, e, e, w], [n, n, s, s])


def assert_contains(bbox, lons, lats, tol=1e-9):
    assert all(bbox[0] - tol <= x <= bbox[2] + tol for x in lons)
    assert all(bbox[1] - tol <= y <= bbox[3] + tol for y in lats)


def assert_hrefs_exist(item: pystac.Item) -> None:
    for key, asset in item.assets.items():
        assert not asset.href.startswith("/"), f"{key}: {asset.href} is not relative"
        path = asset.get_absolute_href()
        assert path is not None and Path(path).is_file(), (key, path)


def test_predicted_map_has_a_stac_item_with_grid_classes_and_side_files(tmp_path):
    image = scene(90, 110)
    image[:, :20, :15] = 0  # no data
    stack = write_stack(tmp_path / "scenes" / "s" / "image.tif", image, product_id=ESA_ID)
    out = tmp_path / "maps" / "s.tif"
    summary = predict_scene(loaded(Conv1x1()), stack, out, probabilities=True, confidence=True, tile=64)
    item_file = tmp_path / "maps" / "s.stac.json"
    assert summary.out["stac"] == str(item_file)
    item = pystac.Item.from_file(str(item_file))
    assert item.id == "s"
    for ext in (ProjectionExtension, RasterExtension, ClassificationExtension):
        assert ext.has_extension(item), ext.__name__
    proj = ProjectionExtension.ext(item)
    with rasterio.open(out) as ds:
        assert proj.code == "EPSG:32633"
        assert proj.shape == [ds.height, ds.width]
        assert proj.transform == list(ds.transform)[:6]
        assert proj.bbox == list(ds.bounds)
        assert_contains(item.bbox, *corners_lonlat(ds))
        counts = np.bincount(ds.read(1).ravel(), minlength=256)
    assert item.datetime == dt.datetime(2023, 1, 15, 10, 10, 21, tzinfo=dt.UTC)  # the product's sensing time
    assert item.properties["landcover:datetime"] == "sensing time"
    assert item.properties["landcover:product_id"] == ESA_ID and item.properties["platform"] == "sentinel-2b"
    assert item.properties["landcover:checkpoint_sha256"] == "none"  # an in-memory model
    assert item.properties["landcover:software"].startswith("landcover ")
    nom = nomenclature("level1")
    asset = item.assets["map"]
    assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
    (band,) = RasterExtension.ext(asset).bands or []
    assert (band.nodata, band.data_type, band.spatial_resolution) == (IGNORE, "uint8", 10.0)
    listed = ClassificationExtension.ext(asset).classes or []
    assert [c.value for c in listed] == [*range(nom.num_classes), IGNORE]
    assert [c.title for c in listed[:-1]] == list(nom.class_names)
    assert [c.color_hint for c in listed[:-1]] == [f"{r:02X}{g:02X}{b:02X}" for r, g, b in nom.colors]
    assert listed[-1].nodata is True and not any(c.nodata for c in listed[:-1])
    assert [c.count for c in listed] == [int(counts[c.value]) for c in listed] and listed[-1].count >= 20 * 15
    assert set(item.assets) == {"map", "probabilities", "confidence", "qml", "quicklook"}
    assert len(RasterExtension.ext(item.assets["probabilities"]).bands or []) == nom.num_classes
    assert_hrefs_exist(item)
    with rasterio.open(item.assets["map"].get_absolute_href()) as ds:
        assert ds.count == 1
    assert json.loads(item_file.read_text())["assets"]["map"]["href"] == "./s.tif"
    assert "links" not in json.loads(item_file.read_text()) or not any(
        link["rel"] == "self" for link in json.loads(item_file.read_text())["links"]
    )  # no path of this machine


def test_map_item_of_an_unknown_date_uses_the_creation_time_and_the_maps_own_tags(tmp_path):
    stack = write_stack(tmp_path / "in" / "x.tif", scene(40, 50), product_id="S2B_TEST_SCENE")
    out = tmp_path / "x.tif"
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    predict_scene(loaded(Conv1x1()), stack, out, quicklook=False)
    item = pystac.Item.from_file(str(tmp_path / "x.stac.json"))
    assert item.datetime is not None and before <= item.datetime <= dt.datetime.now(dt.UTC)
    assert item.properties["landcover:datetime"].startswith("creation time")
    assert "start_datetime" not in item.properties and "end_datetime" not in item.properties
    again = map_item(out)  # without the nomenclature: the map's class names, codes and colour table
    listed = ClassificationExtension.ext(again.assets["map"]).classes or []
    nom = nomenclature("level1")
    assert [(c.title, c.color_hint) for c in listed[:-1]] == [
        (n, f"{r:02X}{g:02X}{b:02X}") for n, (r, g, b) in zip(nom.class_names, nom.colors, strict=True)
    ]
    assert set(again.assets) == {"map", "qml"}


def test_ingest_writes_a_collection_of_its_scenes(tmp_path, clc):  # noqa: F811
    inputs = [make_safe(tmp_path / "a", seed=1), make_safe(tmp_path / "b", sensing="20230215T101021", seed=2)]
    dataset = ingest(inputs, tmp_path / "ds", labels=clc, config=SMALL).dataset
    collection = pystac.Collection.from_file(str(tmp_path / "ds" / "collection.json"))
    items = {item.id: item for item in collection.get_items(recursive=True)}
    assert sorted(items) == sorted(s["scene_id"] for s in dataset["scenes"])
    (extent,) = collection.extent.spatial.bboxes
    start, end = collection.extent.temporal.intervals[0]
    assert start is not None and end is not None
    assert {item.datetime for item in items.values()} == {  # PRODUCT_START_TIME of the products' metadata
        dt.datetime(2023, 1, 15, 10, 10, 21, 24000, tzinfo=dt.UTC),
        dt.datetime(2023, 2, 15, 10, 10, 21, 24000, tzinfo=dt.UTC),
    }
    for scene_id, item in items.items():
        assert item.get_self_href() == str(tmp_path / "ds" / "scenes" / scene_id / "item.json")
        assert (tmp_path / "ds" / "scenes" / scene_id / "item.json").is_file()
        assert start <= item.datetime <= end
        assert_contains(extent, [item.bbox[0], item.bbox[2]], [item.bbox[1], item.bbox[3]])
        assert ProjectionExtension.has_extension(item) and EOExtension.has_extension(item)
        assert_hrefs_exist(item)
        image = item.assets["image"]
        bands = EOExtension.ext(image).bands or []
        assert [b.name for b in bands] == dataset["bands"]
        assert [b.common_name for b in bands][:4] == ["coastal", "blue", "green", "red"]
        raster = RasterExtension.ext(image).bands or []
        assert {(b.scale, b.offset, b.nodata, b.data_type) for b in raster} == {(0.0001, 0.0, 0, "uint16")}
        with rasterio.open(image.get_absolute_href()) as ds:
            assert ds.count == len(dataset["bands"])
            assert ProjectionExtension.ext(item).shape == [ds.height, ds.width]
            assert_contains(item.bbox, *corners_lonlat(ds))
        labels = ClassificationExtension.ext(item.assets["labels"]).classes or []
        assert [c.value for c in labels] == [*range(44), IGNORE]
        with rasterio.open(item.assets["labels"].get_absolute_href()) as ds:
            assert ds.read(1).max() <= IGNORE


def test_sharded_ingest_gets_its_collection_at_finalize(tmp_path, clc):  # noqa: F811
    inputs = [make_safe(tmp_path / "a", seed=1), make_safe(tmp_path / "b", sensing="20230215T101021", seed=2)]
    for i in range(2):
        result = ingest(inputs, tmp_path / "ds", labels=clc, config=SMALL, shard=(i, 2))
        assert not result.finalized
    assert not (tmp_path / "ds" / "collection.json").exists()
    finalize(tmp_path / "ds")
    collection = pystac.Collection.from_file(str(tmp_path / "ds" / "collection.json"))
    assert len(list(collection.get_items(recursive=True))) == 2
    leftovers = [p.name for p in (tmp_path / "ds").rglob("*partial*")]
    assert leftovers == []


def test_a_stack_that_is_not_harmonised_has_no_reflectance_scale(tmp_path, clc):  # noqa: F811
    cfg = SMALL.model_copy(update={"harmonize": False})
    ingest([make_safe(tmp_path / "a", seed=1)], tmp_path / "ds", labels=clc, config=cfg)
    (item,) = pystac.Collection.from_file(str(tmp_path / "ds" / "collection.json")).get_items(recursive=True)
    raster = RasterExtension.ext(item.assets["image"]).bands or []
    assert {(b.scale, b.offset) for b in raster} == {(None, None)}
