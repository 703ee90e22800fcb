"""Issue 18: a model trained on a multi-date composite predicts from the raw products: predict builds the composite
of the recipe recorded with the checkpoint, and the map equals a prediction on the ingested composite stack."""

from __future__ import annotations

import json
import shutil

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.inference.checkpoint import load_checkpoint
from landcover.inference.predict import predict_scene
from landcover.training.train import train
from tests.helpers import ONE_BATCH, tiny_config
from tests.learnable import write_unet_checkpoint
from tests.s2_fixtures import ORIGIN
from tests.test_composite import BANDS, DATES, RECIPE, make_dated

SEED = 1  # a split seed that gives this small scene train, val and test blocks
SCENE = "T33UUP_20180301_20180831_composite"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Five dated products, their composite dataset (2 periods x 4 bands) and a model trained on it (1 batch)."""
    root = tmp_path_factory.mktemp("composite_model")
    products = [make_dated(root / f"d{i}", s, seed=i, size=384) for i, s in enumerate(DATES)]
    x0, y0 = ORIGIN  # two CORINE polygons over the products (as tests/test_composite.py's clc fixture)
    shapes = [box(x0 - 100, y0 - 4000, x0 + 1900, y0 + 100), box(x0 + 1900, y0 - 4000, x0 + 4000, y0 + 100)]
    labels = root / "clc.gpkg"
    gpd.GeoDataFrame({"CODE_18": ["311", "211"]}, geometry=shapes, crs="EPSG:32633").to_file(labels)
    cfg = IngestConfig(
        bands=list(BANDS),
        tile_size=32,
        nomenclature="level1",
        composite=RECIPE,
        split={"block_size_m": 1280, "min_valid_fraction": 0.0, "fractions": [0.4, 0.3, 0.3], "seed": SEED},
    )
    ingest(products, root / "ds", labels=labels, config=cfg)
    torch.manual_seed(0)
    train(tiny_config(root / "ds", *ONE_BATCH, "data.batch_size=2"), root / "run")
    return root, products, root / "run" / "checkpoints" / "last.ckpt"


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs, ds.tags()


def test_checkpoint_records_the_recipe_and_period_bands(trained):
    _, _, ckpt = trained
    lm = load_checkpoint(ckpt)
    assert lm.bands == RECIPE.band_names(BANDS)
    assert lm.composite == RECIPE.model_dump(mode="json")


def test_map_from_raw_products_equals_map_from_the_ingested_composite(trained, tmp_path):
    root, products, ckpt = trained
    from_stack = predict_scene(ckpt, root / "ds" / "scenes" / SCENE / "image.tif", tmp_path / "stack.tif")
    from_raw = predict_scene(ckpt, products, tmp_path / "raw.tif", quicklook=False)
    a, b = read(tmp_path / "stack.tif"), read(tmp_path / "raw.tif")
    assert a[1] == b[1] and a[2] == b[2]  # the same grid
    assert np.array_equal(a[0], b[0])
    assert (a[0] != 255).any() and (a[0] == 255).any()  # classes, and no data where no period has an observation
    assert from_raw.product_id == SCENE and from_stack.valid_fraction == from_raw.valid_fraction
    assert b[3]["INPUT"] == ", ".join(p.name for p in products)


def test_cli_predicts_one_map_per_composite(trained, tmp_path):
    _, products, ckpt = trained
    runner = CliRunner()
    args = ["predict", str(ckpt), *map(str, reversed(products)), "--no-quicklook"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "one.tif")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.tif")) == [f"{SCENE}.tif"]
    assert np.array_equal(read(tmp_path / "one.tif")[0], read(tmp_path / "maps" / f"{SCENE}.tif")[0])
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "maps")])  # finished: skipped, not redone
    assert again.exit_code == 0 and "skipped" in again.output.lower(), again.output


def test_a_period_without_products_is_refused_naming_it(trained, tmp_path):
    _, products, ckpt = trained
    result = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, products[:2]), "--out", str(tmp_path / "m.tif")])
    assert result.exit_code == 2
    assert "summer (2018-06-01/2018-08-31)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.tif").exists()


def test_several_products_for_one_map_need_a_composite_model(tmp_path):
    dated = [make_dated(tmp_path / f"d{i}", s, seed=i) for i, s in enumerate(DATES[:2])]
    ckpt = write_unet_checkpoint(tmp_path / "single.ckpt", bands=list(BANDS))
    result = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, dated[:2]), "--out", str(tmp_path / "m.tif")])
    assert result.exit_code == 2 and "trained on single dates" in result.output
    assert not (tmp_path / "m.tif").exists()


def test_products_of_two_tiles_make_two_maps(trained, tmp_path):
    _, products, ckpt = trained
    other = [shutil.copytree(p, tmp_path / f"o{i}") for i, p in enumerate(products)]
    for folder in other:
        for f in folder.iterdir():
            f.rename(f.with_name(f.name.replace("T33UUP", "T33UUQ")))
    result = CliRunner().invoke(
        app, ["predict", str(ckpt), *map(str, products + other), "--out", str(tmp_path / "maps"), "--no-quicklook"]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "maps").glob("*.tif"))
    assert names == [f"{SCENE}.tif", f"{SCENE.replace('T33UUP', 'T33UUQ')}.tif"]
    result = CliRunner().invoke(
        app, ["predict", str(ckpt), *map(str, products + other), "--out", str(tmp_path / "m.tif")]
    )
    assert result.exit_code == 2 and "2 MGRS tiles" in result.output


def test_composite_leaves_out_what_the_cloud_detector_masks(tmp_path):
    """L1C products (no SCL) with clouds.detector=auto: each date's s2cloudless mask is left out of its period."""
    from landcover.sources.clouds import CloudConfig
    from landcover.sources.composite import CompositeReader
    from landcover.sources.recipe import CompositeRecipe
    from landcover.sources.sentinel2 import open_product
    from tests.s2_fixtures import make_safe
    from tests.test_clouds import SIZE, cloudy_l1c, read_whole

    cloudy = open_product(cloudy_l1c(tmp_path / "a"))  # 2023-01-15: a thick cloud
    clear = open_product(make_safe(tmp_path / "b", level="L1C", sensing="20230125T101021", size=SIZE, seed=3))
    bands, clouds = ["B02", "B03", "B04", "B08"], CloudConfig(detector="auto")
    recipe = CompositeRecipe.model_validate({"periods": ["january=2023-01-01/2023-01-31"]})
    usable = []
    for product in (cloudy, clear):
        win = read_whole(product, bands, clouds=clouds)
        usable.append(win.valid & ~win.cloud)
    assert not usable[0].all() and usable[0].any()  # the detector found the cloud
    with CompositeReader([cloudy, clear], bands, recipe, clouds=clouds) as reader:
        win = reader.read(Window(0, 0, SIZE, SIZE))
        assert reader.provenance()["periods"][0]["inputs"][0]["clouds"]["detector"] == "s2cloudless"
    assert np.array_equal(win.counts[0], usable[0].astype(np.uint8) + usable[1])
    only_clear = ~usable[0] & usable[1]
    clear_image = read_whole(clear, bands, clouds=clouds).image
    assert np.array_equal(win.image[:, only_clear], clear_image[:, only_clear])


def test_exported_composite_model_maps_the_raw_products_like_the_checkpoint(trained, tmp_path):
    """The recipe travels inside the ONNX file: predict model.onnx PRODUCTS builds the same composite."""
    _, products, ckpt = trained
    onnx = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(onnx)])
    assert result.exit_code == 0, result.output
    predict_scene(ckpt, products, tmp_path / "ckpt.tif", quicklook=False, device="cpu")
    predict_scene(onnx, products, tmp_path / "onnx.tif", quicklook=False)
    a, b = read(tmp_path / "ckpt.tif")[0], read(tmp_path / "onnx.tif")[0]
    assert np.array_equal(a == 255, b == 255) and (a == b).mean() >= 0.9999


def test_stac_items_of_three_dates_ingest_and_predict_as_one_composite(tmp_path):
    """Several dates usually come from a catalogue search: Earth Search items of three dates make one composite
    scene, and predict from the items equals predict on that ingested composite."""
    from landcover.sources.recipe import CompositeRecipe
    from tests.test_stac_input import item_dict, save

    docs = []
    for i, day in enumerate(("2023-01-15", "2023-02-04", "2023-04-20")):
        item = item_dict("earth_search_l2a.json", datetime=f"{day}T10:10:21Z")
        compact = day.replace("-", "")
        item["id"] = f"S2B_33UUP_{compact}_0_L2A"
        item["properties"]["s2:product_uri"] = f"S2B_MSIL2A_{compact}T101021_N0509_R022_T33UUP_{compact}T120000.SAFE"
        docs.append(save(item, tmp_path / f"item{i}", seed=i))
    recipe = CompositeRecipe.model_validate(
        {"periods": ["winter=2023-01-01/2023-02-28", "spring=2023-03-01/2023-05-31"]}
    )
    bands = ["B02", "B03", "B04", "B08"]
    cfg = IngestConfig(bands=bands, tile_size=32, composite=recipe, split={"by_scene": True, "min_valid_fraction": 0})
    result = ingest(docs, tmp_path / "ds", config=cfg)
    (scene,) = result.scenes
    assert scene == "T33UUP_20230101_20230531_composite"
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    periods = ds["scenes"][0]["provenance"]["periods"]
    assert [[i["product_id"] for i in p["inputs"]] for p in periods] == [
        [
            "S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_20230115T120000",
            "S2B_MSIL2A_20230204T101021_N0509_R022_T33UUP_20230204T120000",
        ],
        ["S2B_MSIL2A_20230420T101021_N0509_R022_T33UUP_20230420T120000"],
    ]
    meta_bands = recipe.band_names(bands)
    ckpt = write_unet_checkpoint(tmp_path / "m.ckpt", bands=meta_bands, mean=900.0, std=600.0)
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["landcover"]["dataset_settings"] = {"composite": recipe.model_dump(mode="json")}
    torch.save(checkpoint, ckpt)
    predict_scene(ckpt, tmp_path / "ds" / "scenes" / scene / "image.tif", tmp_path / "stack.tif", quicklook=False)
    predict_scene(ckpt, docs, tmp_path / "items.tif", quicklook=False)
    assert np.array_equal(read(tmp_path / "stack.tif")[0], read(tmp_path / "items.tif")[0])


def test_real_neighbouring_tiles_composite_on_one_grid(tmp_path):
    """Real L2A products of two overlapping MGRS tiles (T30SVF, T30SVG, 2023-09-05, aggregated to 1 km) in one
    composite (group: all): on the first's grid, where both tiles have a usable observation the period's value is
    their median (the rounded mean of two), where one has it is that one's, elsewhere no data."""
    from landcover.sources.composite import CompositeReader
    from landcover.sources.reader import SceneReader
    from landcover.sources.recipe import CompositeRecipe
    from landcover.sources.sentinel2 import open_product
    from tests.s2_fixtures import shared_data

    root = shared_data("corine-lanjaron", "s2-l2a-T30SVF-T30SVG-aggregated")
    products = [open_product(root / sub).select(list(BANDS)) for sub in ("f", "g")]
    recipe = CompositeRecipe.model_validate({"periods": ["autumn=2023-09-01/2023-11-30"], "group": "all"})
    with CompositeReader(products, BANDS, recipe, resolution=1000.0) as reader:
        grid = reader.grid
        win = reader.read(Window(0, 0, grid.width, grid.height))
        assert reader.product.tile == "30SVF" and reader.bands == [f"{b}@autumn" for b in BANDS]
    obs = []
    for product in products:  # each tile alone on the composite's grid
        with SceneReader(product, list(BANDS), resolution=1000.0, grid=grid, prefetch=False) as single:
            one = single.read(Window(0, 0, grid.width, grid.height))
        obs.append((one.image.astype(np.float64), one.valid & ~one.cloud))
    both = obs[0][1] & obs[1][1]
    assert both.sum() > 50 and (obs[0][1] & ~obs[1][1]).any()  # the tiles overlap, and SVF reaches beyond SVG
    mean = np.clip(np.round((obs[0][0] + obs[1][0]) / 2), 1, 65535)
    assert np.array_equal(win.image[:, both], mean[:, both])
    only = obs[0][1] & ~obs[1][1]
    assert np.array_equal(win.image[:, only], obs[0][0][:, only])
    assert np.array_equal(win.counts[0], obs[0][1].astype(np.uint8) + obs[1][1])
    assert (win.image[:, ~(obs[0][1] | obs[1][1])] == 0).all()
