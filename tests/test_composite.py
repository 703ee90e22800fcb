"""Multi-date composites: synthetic dated products with synthetic clouds (SCL) against a numpy reference."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from pydantic import ValidationError
from rasterio.windows import Window
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ConfigError
from landcover.nomenclature import IGNORE, default_scl_invalid
from landcover.sources.composite import CompositeReader
from landcover.sources.recipe import CompositeRecipe, Period, period_band, split_band
from landcover.sources.reductions import best, quantile, time_stack, to_reflectance
from landcover.sources.sentinel2 import open_product
from tests.s2_fixtures import ORIGIN, write_s2_raster

BANDS = ("B02", "B03", "B04", "B08")
NAMING = "{tile}_{sensing}_{band}_{res}m.tif"
DATES = ("20180310T101021", "20180420T101021", "20180705T101021", "20180720T101021", "20180801T101021")
SIZE = 64
ALL_CLOUDY = (slice(10, 12), slice(20, 22))  # one 20 m SCL pixel: cloudy on every date


def make_dated(folder, sensing, seed, tile="T33UUP", size=SIZE):
    """A folder product: 4 bands at 10 m (GeoTIFF, date in the names) and an SCL at 20 m with random clouds;
    a 10 m band has a no-data hole on some dates; one SCL pixel is cloudy on every date."""
    rng = np.random.default_rng(seed)
    for band in BANDS:
        data = rng.integers(100, 5000, (size, size)).astype(np.uint16)
        if seed % 2:
            data[:3, :5] = 0  # no data here on odd seeds
        write_s2_raster(folder / NAMING.format(tile=tile, sensing=sensing, band=band, res=10), data, 10)
    scl = rng.choice(np.array([4, 5, 6, 8, 9, 3], np.uint8), (size // 2, size // 2), p=[0.3, 0.2, 0.1, 0.15, 0.15, 0.1])
    scl[ALL_CLOUDY[0].start // 2, ALL_CLOUDY[1].start // 2] = 9
    write_s2_raster(folder / NAMING.format(tile=tile, sensing=sensing, band="SCL", res=20), scl, 20)
    return folder


@pytest.fixture
def dated(tmp_path):
    return [make_dated(tmp_path / f"d{i}", s, seed=i) for i, s in enumerate(DATES)]


@pytest.fixture
def clc(tmp_path):
    x0, y0 = ORIGIN
    west = box(x0 - 100, y0 - 800, x0 + 320, y0 + 100)
    east = box(x0 + 320, y0 - 800, x0 + 800, y0 + 100)
    frame = gpd.GeoDataFrame({"CODE_18": ["311", "211"]}, geometry=[west, east], crs="EPSG:32633")
    path = tmp_path / "clc.gpkg"
    frame.to_file(path)
    return path


RECIPE = CompositeRecipe.model_validate(
    {
        "periods": [
            {"name": "spring", "start": "2018-03-01", "end": "2018-05-31"},
            {"name": "summer", "start": "2018-06-01", "end": "2018-08-31", "method": "quantile", "quantile": 0.25},
        ]
    }
)


def observations(folder):
    """(image (C, H, W) float64 with NaN where not usable, usable (H, W)) read with rasterio and numpy only."""
    files = {b: next(folder.glob(f"*_{b}_*m.tif")) for b in (*BANDS, "SCL")}
    image = np.stack([rasterio.open(files[b]).read(1) for b in BANDS]).astype(np.float64)
    scl = np.repeat(np.repeat(rasterio.open(files["SCL"]).read(1), 2, 0), 2, 1)
    usable = (image > 0).all(0) & ~np.isin(scl, default_scl_invalid()) & (scl != 0)
    return np.where(usable, image, np.nan), usable


def reference(folders, recipe=RECIPE):
    """The composite by np.nanmedian / np.nanquantile over each period's usable observations."""
    spring, summer = [observations(f) for f in folders[:2]], [observations(f) for f in folders[2:]]
    parts, counts = [], []
    for period, obs in zip(recipe.periods, (spring, summer), strict=True):
        stack = np.stack([o[0] for o in obs])
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # all-NaN pixels
            value = np.nanmedian(stack, 0) if period.method == "median" else np.nanquantile(stack, period.quantile, 0)
        parts.append(np.where(np.isnan(value), 0, np.clip(np.rint(value), 1, 65535)).astype(np.uint16))
        counts.append(np.sum([o[1] for o in obs], axis=0).astype(np.uint8))
    return np.concatenate(parts), np.stack(counts)


def test_composite_equals_numpy_reference_counts_and_all_cloudy_pixel(dated):
    products = [open_product(f) for f in dated]
    with CompositeReader(products, BANDS, RECIPE) as reader:
        assert reader.bands == [f"{b}@{p}" for p in ("spring", "summer") for b in BANDS]
        whole = reader.read(Window(0, 0, SIZE, SIZE))
        strips = [reader.read(Window(0, r, SIZE, 16)) for r in range(0, SIZE, 16)]
        prov = reader.provenance()
    image, counts = reference(dated)
    assert np.array_equal(whole.image, image)
    assert np.array_equal(whole.counts, counts)
    assert whole.cloud is None and np.array_equal(whole.valid, counts.any(0))
    assert (whole.image[:, ALL_CLOUDY[0], ALL_CLOUDY[1]] == 0).all() and not whole.valid[ALL_CLOUDY].any()
    assert 0 < whole.valid.mean() < 1 and (counts == 0).any() and (counts >= 2).any()
    # strip by strip equals whole
    assert np.array_equal(np.concatenate([s.image for s in strips], 1), whole.image)
    assert np.array_equal(np.concatenate([s.counts for s in strips], 1), whole.counts)
    periods = {p["name"]: [i["product_id"] for i in p["inputs"]] for p in prov["periods"]}
    assert [len(v) for v in periods.values()] == [2, 3] and prov["composite"]["periods"][1]["quantile"] == 0.25


def test_product_of_another_grid_is_warped_onto_the_first(tmp_path):
    first = make_dated(tmp_path / "a", DATES[0], seed=0)
    shifted = tmp_path / "b"
    make_dated(shifted, DATES[1], seed=2)
    for path in shifted.glob("*.tif"):  # the same pixels, 10 m further east: another grid
        with rasterio.open(path) as src:
            data, res = src.read(1), src.res[0]
        write_s2_raster(path, data, res, origin=(ORIGIN[0] + 10, ORIGIN[1]))
    recipe = CompositeRecipe(periods=["2018-03-01/2018-05-31"])
    with CompositeReader([open_product(shifted), open_product(first)], BANDS, recipe) as reader:
        assert reader.product.product_id == open_product(first).product_id  # the grid of the first by date
        win = reader.read(Window(0, 0, SIZE, SIZE))
    assert win.counts[0, :, 0].max() <= 1  # the first column lies outside the shifted product
    assert win.counts[0, :, 1:].max() == 2


def test_quantile_and_best_match_numpy():
    rng = np.random.default_rng(5)
    data = rng.integers(1, 9000, (4, 3, 20, 30)).astype(np.float32)
    data = np.where(rng.random((4, 1, 20, 30)) < 0.4, np.nan, data).astype(np.float32)  # unusable observations
    data[:, :, 0, 0] = np.nan  # no usable observation at all
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            expected = np.nanquantile(data.astype(np.float64), q, axis=0)
        assert np.array_equal(to_reflectance(quantile(data, q)), to_reflectance(expected.astype(np.float32)))
    probability = rng.random((4, 20, 30)).astype(np.float32)
    picked = best(data, probability)
    score = np.where(np.isnan(data).any(1), np.inf, probability)
    for y, x in [(0, 0), (5, 7), (19, 29), (10, 3)]:
        if np.isinf(score[:, y, x]).all():
            assert np.isnan(picked[:, y, x]).all()
        else:
            assert np.array_equal(picked[:, y, x], data[np.argmin(score[:, y, x]), :, y, x])


def test_time_stack_is_labelled():
    image = np.full((2, 3, 4), 7, np.uint16)
    usable = np.ones((3, 4), bool)
    usable[0, 0] = False
    stack = time_stack([image, image], [usable, usable], [np.datetime64("2018-03-02")] * 2, ["B02", "B03"])
    assert stack.dims == ("time", "band", "y", "x") and stack.dtype == np.float32
    assert np.isnan(stack.sel(band="B03").values[:, 0, 0]).all() and list(stack.band.values) == ["B02", "B03"]


def test_band_names():
    assert period_band("B04", "spring") == "B04@spring" and period_band("B04", RECIPE.periods[1]) == "B04@summer"
    assert split_band("B04@spring") == ("B04", "spring") and split_band("B04") == ("B04", None)
    assert RECIPE.band_names(["B02", "B03"]) == ["B02@spring", "B03@spring", "B02@summer", "B03@summer"]
    short = CompositeRecipe(periods=["2018-03-01/2018-05-31", "2018-06-01/2018-08-31"])
    assert short.names == ["p1", "p2"] and short.periods[1].start.isoformat() == "2018-06-01"


@pytest.mark.parametrize(
    ("periods", "message"),
    [
        (["2018-03-01/2018-05-31", "2018-05-01/2018-08-31"], "overlap"),
        (["2018-05-31/2018-03-01"], "starts (2018-05-31) after it ends"),
        ([{"name": "a", "start": "2018-01-01", "end": "2018-02-01"}] * 2, "period names repeat (a)"),
        ([{"name": "sp ring", "start": "2018-01-01", "end": "2018-02-01"}], "cannot be part of a band name"),
        ([{"name": "q", "start": "2018-01-01", "end": "2018-02-01", "method": "quantile"}], "without quantile"),
        (["March to May"], "is not START/END"),
    ],
)
def test_recipe_validation(periods, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CompositeRecipe(periods=periods)
    with pytest.raises(ValidationError, match="extra"):
        Period(name="x", start="2018-01-01", end="2018-01-02", cloud=0.5)


def test_period_without_products_is_refused_naming_it(dated):
    recipe = CompositeRecipe(periods=["spring=2018-03-01/2018-05-31", "winter=2018-12-01/2018-12-31"])
    with pytest.raises(ConfigError, match=r"period winter \(2018-12-01/2018-12-31\) has 0 product\(s\).*2018-03-10"):
        recipe.assign([open_product(f) for f in dated])
    strict = CompositeRecipe(periods=["2018-03-01/2018-05-31"], min_observations=3)
    with pytest.raises(ConfigError, match="has 2 product"):
        strict.assign([open_product(f) for f in dated])


def test_best_without_cloud_probability_is_refused(dated, tmp_path):
    recipe = CompositeRecipe(periods=[{"name": "b", "start": "2018-03-01", "end": "2018-05-31", "method": "best"}])
    cfg = IngestConfig(tile_size=16, composite=recipe, bands=list(BANDS), split={"min_valid_fraction": 0})
    with pytest.raises(ConfigError, match=r"method 'best'.*gives no cloud probability"):
        ingest(dated[:2], tmp_path / "ds", config=cfg)
    assert not list((tmp_path / "ds" / "scenes").glob("*/scene.json"))


def test_cli_ingest_of_a_composite(dated, clc, tmp_path):
    config = tmp_path / "ingest.yaml"
    config.write_text(
        "bands: [B02, B03, B04, B08]\n"
        "tile_size: 16\n"
        "split: {block_size_m: 640, min_valid_fraction: 0.0}\n"
        "composite:\n"
        "  periods:\n"
        "    - {name: spring, start: 2018-03-01, end: 2018-05-31}\n"
        "    - {name: summer, start: 2018-06-01, end: 2018-08-31, method: quantile, quantile: 0.25}\n"
    )
    out = tmp_path / "ds"
    inputs = [str(f) for f in dated[:4]] + [str(dated[4])]
    result = CliRunner().invoke(
        app, ["ingest", *inputs, "--labels", str(clc), "--out", str(out), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["bands"] == RECIPE.band_names(BANDS) and ds["composite"]["periods"][0]["name"] == "spring"
    assert ds["band_info"][4] == {**ds["band_info"][4], "band": "B02@summer", "period": "summer", "source_band": "B02"}
    (scene,) = ds["scenes"]
    assert scene["scene_id"] == "T33UUP_20180301_20180831_composite"
    assert [len(p["inputs"]) for p in scene["provenance"]["periods"]] == [2, 3]
    folder = out / "scenes" / scene["scene_id"]
    image, counts = reference(dated)
    with rasterio.open(folder / "image.tif") as img, rasterio.open(folder / "counts.tif") as cnt:
        assert list(img.descriptions) == RECIPE.band_names(BANDS) and list(cnt.descriptions) == ["spring", "summer"]
        assert np.array_equal(img.read(), image) and np.array_equal(cnt.read(), counts)
    labels = rasterio.open(folder / "labels.tif").read(1)
    nothing = ~counts.any(0)
    assert nothing.any() and (labels[nothing] == IGNORE).all() and (labels[~nothing] != IGNORE).all()
    catalog = read_catalog(out)
    assert len(catalog) > 8
    for _, row in catalog.iterrows():
        window = counts[:, row.row : row.row + 16, row.col : row.col + 16]
        assert row["valid_fraction@spring"] == pytest.approx((window[0] > 0).mean())
        assert row["valid_fraction@summer"] == pytest.approx((window[1] > 0).mean())


def test_bad_recipe_in_yaml_is_one_line_exit_2(dated, tmp_path):
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump({"composite": {"periods": ["2018-03-01/2018-05-31", "2018-04-01/2018-06-01"]}}))
    result = CliRunner().invoke(app, ["ingest", str(dated[0]), "--out", str(tmp_path / "ds"), "--config", str(config)])
    assert result.exit_code == 2 and "overlap" in result.output
    assert not (tmp_path / "ds").exists()


def test_best_takes_the_observation_with_the_lowest_cloud_probability(dated, monkeypatch):
    """Products with a cloud probability (the detector's field of SceneWindow, stubbed here): "best" equals
    a per-pixel numpy pick among the usable observations."""
    from landcover.sources import reader as reader_mod

    rng = np.random.default_rng(9)
    chances = {open_product(f).product_id: rng.random((SIZE, SIZE)).astype(np.float32) for f in dated[:2]}
    real_read = reader_mod.SceneReader.read

    def read(self, window):
        win = real_read(self, window)
        rows, cols = window.toslices()
        win.cloud_probability = chances[self.product.product_id][rows, cols]
        return win

    monkeypatch.setattr(reader_mod.SceneReader, "read", read)
    recipe = CompositeRecipe(periods=[{"name": "b", "start": "2018-03-01", "end": "2018-05-31", "method": "best"}])
    with CompositeReader([open_product(f) for f in dated[:2]], BANDS, recipe) as reader:
        reader.check_best()
        win = reader.read(Window(0, 0, SIZE, SIZE))
    obs = [observations(f) for f in dated[:2]]
    score = np.stack(
        [np.where(o[1], chances[open_product(f).product_id], np.inf) for o, f in zip(obs, dated, strict=False)]
    )
    pick = np.argmin(score, 0)
    expected = np.where(pick == 0, obs[0][0], obs[1][0])
    expected = np.where(np.isinf(score).all(0), 0, np.nan_to_num(expected)).astype(np.uint16)
    assert np.array_equal(win.image, expected) and (pick == 1).any() and (pick == 0).any()


def test_groups_per_tile_or_all(tmp_path):
    from landcover.dataset.composite_scene import composite_groups, composite_scene_id

    products = [
        open_product(make_dated(tmp_path / f"{tile}{i}", DATES[i], seed=i, tile=tile, size=48))
        for tile in ("T33UUP", "T32TQT")
        for i in (1, 0)
    ]
    recipe = CompositeRecipe(periods=["2018-03-01/2018-05-31"])
    groups = composite_groups(products, recipe)
    assert [[p.tile for p in g] for g in groups] == [["32TQT", "32TQT"], ["33UUP", "33UUP"]]
    assert [p.sensing_time[:10] for p in groups[0]] == ["2018-03-10", "2018-04-20"]  # by date
    assert composite_scene_id(groups[1], recipe) == "T33UUP_20180301_20180531_composite"
    everything = recipe.model_copy(update={"group": "all"})
    (group,) = composite_groups(products, everything)
    assert len(group) == 4 and composite_scene_id(group, everything).startswith("all_T")


def test_period_band_names_pass_band_matching():
    """Models match bands by name: a period's bands keep their period, and single-date values apply to them."""
    from landcover.models.config import FeatureRecipe
    from landcover.models.input_transform import InputTransform
    from landcover.models.weight_files import band_key

    assert band_key("b4@spring") == "B04@spring" and band_key("B8a") == "B8A"
    transform = InputTransform(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), bands=("B02", "B03", "B04"), source="w")
    picked = transform.for_bands(["B04@spring", "B02@spring", "B04@summer"])
    assert picked["mean"] == [3.0, 1.0, 3.0] and picked["std"] == [6.0, 4.0, 6.0]
    assert FeatureRecipe().index_names(RECIPE.band_names(["B03", "B04", "B08"])) == [
        "NDVI@spring", "NDWI@spring", "NDVI@summer", "NDWI@summer"
    ]  # fmt: skip


def test_composite_scene_item_spans_its_periods(dated, tmp_path):
    import pystac

    cfg = IngestConfig(tile_size=16, composite=RECIPE, bands=list(BANDS), split={"min_valid_fraction": 0})
    ds = ingest(dated, tmp_path / "ds", config=cfg).dataset
    item = pystac.Item.from_file(str(tmp_path / "ds" / "scenes" / ds["scenes"][0]["scene_id"] / "item.json"))
    assert item.common_metadata.start_datetime.isoformat().startswith("2018-03-01")
    assert item.common_metadata.end_datetime.isoformat().startswith("2018-08-31T23:59:59")
    assert [b["name"] for b in item.assets["image"].extra_fields["eo:bands"]][:2] == ["B02@spring", "B03@spring"]
