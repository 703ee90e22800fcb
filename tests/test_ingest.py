"""landcover ingest: synthetic SAFE products (both baselines, L1C/L2A, SCL) and real data."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset import ingest as ingest_mod
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import MissingBandError, NoOverlapError, OutputExistsError
from landcover.nomenclature import IGNORE, catalog_dir, default_scl_invalid, nomenclature
from landcover.sources.sentinel2 import open_product
from tests.s2_fixtures import ORIGIN, make_safe, shared_data

SMALL = IngestConfig(tile_size=16, overviews=False, split={"block_size_m": 640, "min_valid_fraction": 0.0})


@pytest.fixture
def clc(tmp_path):
    """Two CORINE polygons (EPSG:3035 codes as text) covering the synthetic tile's west and east."""
    x0, y0 = ORIGIN
    west = box(x0 - 100, y0 - 800, x0 + 320, y0 + 100)
    east = box(x0 + 320, y0 - 800, x0 + 800, y0 + 100)
    frame = gpd.GeoDataFrame({"CODE_18": ["311", "211"]}, geometry=[west, east], crs="EPSG:32633").to_crs(3035)
    path = tmp_path / "clc.gpkg"
    frame.to_file(path)
    return path


def read(path, *args, **kwargs):
    with rasterio.open(path) as src:
        return src.read(*args, **kwargs)


def band_path(product, band):
    return open_product(product).bands[band].path


def test_l2a_offset_applied_once_and_baselines_share_one_scale(tmp_path, clc):
    new = make_safe(tmp_path / "a", baseline="04.00", seed=3)
    old = make_safe(tmp_path / "b", baseline="02.14", sensing="20210115T101021", seed=3)
    ds = ingest([new, old], tmp_path / "ds", labels=clc, config=SMALL).dataset
    scenes = {s["provenance"]["processing_baseline"]: s for s in ds["scenes"]}
    img_new = read(tmp_path / "ds" / scenes["04.00"]["image"])
    img_old = read(tmp_path / "ds" / scenes["02.14"]["image"])
    raw_new = read(band_path(new, "B04"), 1).astype(int)
    assert np.array_equal(img_new[3], raw_new - 1000)  # B04 at 10 m: exact copy, offset once
    # same reflectance whatever the baseline (resampled bands: +-1 where bilinear rounds a .5 tie)
    assert np.array_equal(img_new[[1, 2, 3, 7]], img_old[[1, 2, 3, 7]])
    assert np.abs(img_new.astype(int) - img_old).max() <= 1
    assert scenes["04.00"]["provenance"]["offsets_applied"]["B04"] == -1000.0
    assert scenes["02.14"]["provenance"]["offsets_applied"]["B04"] == 0.0


def test_resampled_bands_equal_an_independent_rasterio_resampling(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="02.14", all_resolutions=False)
    ds = ingest([safe], tmp_path / "ds", labels=clc, config=SMALL).dataset
    image = read(tmp_path / "ds" / ds["scenes"][0]["image"])
    bands = ds["bands"]
    with rasterio.open(tmp_path / "ds" / ds["scenes"][0]["image"]) as stack:
        for band in ("B05", "B11", "B01", "B09"):
            expected = np.zeros((stack.height, stack.width), np.uint16)
            with rasterio.open(band_path(safe, band)) as src:
                reproject(
                    rasterio.band(src, 1),
                    expected,
                    dst_transform=stack.transform,
                    dst_crs=stack.crs,
                    resampling=Resampling.bilinear,
                    src_nodata=0,
                    dst_nodata=0,
                )
            got = image[bands.index(band)]
            assert np.array_equal(got, expected), band


def test_scl_invalid_pixels_are_ignored(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="04.00")
    ds = ingest([safe], tmp_path / "ds", labels=clc, config=SMALL).dataset
    labels = read(tmp_path / "ds" / ds["scenes"][0]["labels"], 1)
    scl_path = open_product(safe).scl.path
    with rasterio.open(tmp_path / "ds" / ds["scenes"][0]["labels"]) as lab, rasterio.open(scl_path) as scl:
        scl10 = np.zeros(labels.shape, np.uint8)
        reproject(
            rasterio.band(scl, 1), scl10, dst_transform=lab.transform, dst_crs=lab.crs, resampling=Resampling.nearest
        )
    invalid = np.isin(scl10, default_scl_invalid())
    assert invalid.any() and (~invalid).any()
    assert (labels[invalid] == IGNORE).all()
    l3 = nomenclature("level3")
    assert set(np.unique(labels[~invalid])) <= {l3.codes.index("311"), l3.codes.index("211")}


def test_catalog_matches_rasters_and_splits_do_not_touch(tmp_path, clc):
    safe = make_safe(tmp_path, level="L1C", baseline="02.07", size=128)
    ds = ingest([safe], tmp_path / "ds", labels=clc, config=SMALL).dataset
    labels = read(tmp_path / "ds" / ds["scenes"][0]["labels"], 1)
    cat = read_catalog(tmp_path / "ds", include_buffer=True)
    assert len(cat) == (128 // 16) ** 2
    for row in cat.itertuples():
        window = labels[row.row : row.row + row.height, row.col : row.col + row.width]
        counts = np.bincount(window[window != IGNORE], minlength=44)
        assert list(counts) == list(row.class_counts)
    kept = cat[~cat["buffer"]]
    for split in ("train", "val", "test"):
        mine = kept[kept.split == split]
        others = kept[kept.split != split]
        if len(mine) and len(others):
            d = np.hypot(
                mine.xmin.to_numpy()[:, None] - others.xmin.to_numpy()[None],
                mine.ymin.to_numpy()[:, None] - others.ymin.to_numpy()[None],
            )
            assert d.min() > 160, split  # at least one whole tile (16 px x 10 m) apart


def test_band_statistics_come_from_train_tiles_only(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="04.00", size=128, with_scl=False)
    ds = ingest([safe], tmp_path / "ds", labels=clc, config=SMALL).dataset
    image = read(tmp_path / "ds" / ds["scenes"][0]["image"]).astype(np.float64)
    train = read_catalog(tmp_path / "ds", split="train")
    assert 0 < len(train) < len(read_catalog(tmp_path / "ds", include_buffer=True))
    pixels = np.concatenate(
        [image[:, r.row : r.row + 16, r.col : r.col + 16].reshape(len(ds["bands"]), -1) for r in train.itertuples()],
        axis=1,
    )
    assert np.allclose(ds["normalization"]["mean"], pixels.mean(axis=1))
    assert np.allclose(ds["normalization"]["std"], pixels.std(axis=1))


def test_resume_after_interruption_is_byte_identical(tmp_path, clc, monkeypatch):
    inputs = [make_safe(tmp_path / "a", seed=1), make_safe(tmp_path / "b", sensing="20230215T101021", seed=2)]
    ingest(inputs, tmp_path / "clean", labels=clc, config=SMALL)
    real = ingest_mod.ingest_scene
    calls = []

    def interrupted(product, *args, **kwargs):
        calls.append(product.product_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(product, *args, **kwargs)

    monkeypatch.setattr(ingest_mod, "ingest_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(inputs, tmp_path / "resumed", labels=clc, config=SMALL)
    monkeypatch.setattr(ingest_mod, "ingest_scene", real)
    assert not (tmp_path / "resumed" / "dataset.json").exists()
    ingest(inputs, tmp_path / "resumed", labels=clc, config=SMALL)
    clean = sorted(p.relative_to(tmp_path / "clean") for p in (tmp_path / "clean").rglob("*") if p.is_file())
    resumed = sorted(p.relative_to(tmp_path / "resumed") for p in (tmp_path / "resumed").rglob("*") if p.is_file())
    assert clean == resumed
    for rel in clean:
        if rel.suffix != ".gpkg":
            assert (tmp_path / "clean" / rel).read_bytes() == (tmp_path / "resumed" / rel).read_bytes(), rel


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="04.00")
    with pytest.raises(MissingBandError, match="B10"):
        ingest([safe], tmp_path / "ds1", labels=clc, config=IngestConfig(bands=["B02", "B10"]))
    far = gpd.GeoDataFrame({"CODE_18": ["311"]}, geometry=[box(0, 0, 1000, 1000)], crs="EPSG:3035")
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(NoOverlapError):
        ingest([safe], tmp_path / "ds2", labels=tmp_path / "far.gpkg", config=SMALL)
    assert not list((tmp_path / "ds2" / "scenes").iterdir())
    ingest([safe], tmp_path / "ds3", labels=clc, config=SMALL)
    with pytest.raises(OutputExistsError, match="tile_size"):
        ingest([safe], tmp_path / "ds3", labels=clc, config=IngestConfig(tile_size=32, overviews=False))
    ingest([safe], tmp_path / "ds3", labels=clc, config=IngestConfig(tile_size=32, overviews=False), overwrite=True)
    assert json.loads((tmp_path / "ds3" / "dataset.json").read_text())["tile_size"] == 32


def test_safe_without_metadata_is_ingested_with_a_warning(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="04.00", with_mtd=False)
    ds = ingest([safe], tmp_path / "ds", labels=clc, config=SMALL).dataset
    prov = ds["scenes"][0]["provenance"]
    assert prov["warnings"], "a SAFE without MTD xml must record a warning"


def test_cli_ingest(tmp_path, clc):
    safe = make_safe(tmp_path, baseline="04.00", zipped=True)
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            str(safe),
            "--labels",
            str(clc),
            "--out",
            str(tmp_path / "ds"),
            "--bands",
            "B02,B03,B04,B08",
            "--tile-size",
            "16",
            "--nomenclature",
            "level1",
            "--set",
            "overviews=false",
            "--set",
            "split.min_valid_fraction=0",
        ],
    )
    assert result.exit_code == 0, result.output
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert ds["bands"] == ["B02", "B03", "B04", "B08"] and ds["nomenclature"]["name"] == "level1"
    result = CliRunner().invoke(app, ["ingest", str(safe), "--out", str(tmp_path / "ds2"), "--set", "tile_size=17"])
    assert result.exit_code == 2 and "multiple of 16" in result.output


def test_real_jp2_clip_with_osm_labels(tmp_path):
    folder = shared_data("s2-l1c-T33UUU-jp2")
    cfg = IngestConfig(
        nomenclature="level1",
        tile_size=64,
        labels={"code_column": "fclass", "mapping": str(catalog_dir() / "osm_fclass_to_clc_level1.csv")},
        split={"block_size_m": 2560, "min_valid_fraction": 0.0},
    )
    ds = ingest([folder / "IMG_DATA"], tmp_path / "ds", labels=next(folder.glob("gis_osm*.gpkg")), config=cfg).dataset
    scene = ds["scenes"][0]
    assert len(ds["bands"]) == 13 and scene["grid"]["width"] == 1536 and scene["grid"]["height"] == 768
    image = read(tmp_path / "ds" / scene["image"])
    valid = image.all(axis=0)  # the clip has one DN-0 (no-data) pixel in B8A
    assert (~valid).sum() < 10
    assert np.array_equal(image[1][valid], read(next((folder / "IMG_DATA").glob("*_B02.jp2")), 1)[valid])
    labels = read(tmp_path / "ds" / scene["labels"], 1)
    labelled = (labels != IGNORE).mean()
    assert 0.2 < labelled < 0.45  # OSM covers about 31 % of the clip
    assert set(np.unique(labels)) - {IGNORE} <= set(range(5))
    with (
        rasterio.open(tmp_path / "ds" / scene["labels"]) as lab,
        rasterio.open(tmp_path / "ds" / scene["image"]) as img,
    ):
        assert lab.overviews(1) == [2]  # labels always (cheap); image.tif only with overviews=true
        assert img.overviews(1) == []
        assert img.profile["compress"] == "zstd" and img.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
