"""Areas of interest: --aoi/--bbox parsing, the scene grid's window over an AOI, AOI reads equal to the whole
scene's, ingest/predict/evaluate on an AOI, scenes outside it, and mosaics across two UTM zones."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point, Polygon, box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import AOIError
from landcover.inference.batch import predict_many
from landcover.inference.mosaic import mosaic_maps
from landcover.inference.predict import predict_scene
from landcover.io.aoi import AOI, AOIMask, aoi_window, parse_bbox, read_aoi, sub_grid
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.style import class_map_profile, style_class_map
from landcover.nomenclature import IGNORE, nomenclature
from landcover.sources.reader import SceneReader, strips
from landcover.sources.sentinel2 import open_product
from tests.s2_fixtures import ORIGIN, make_band_folder
from tests.test_predict import Conv1x1, loaded, scene, write_stack

GRID = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(300000, 5400000, 10, 10), 640, 480)


def test_bbox_parsing_and_errors():
    aoi = parse_bbox("300105,5396003,300400,5399000,EPSG:32633")
    assert aoi.crs == "EPSG:32633" and aoi.geometry.bounds == (300105, 5396003, 300400, 5399000)
    assert parse_bbox("14.9,48.7,15.0,48.8").crs == "EPSG:4326"
    for bad, match in [
        ("1,2,3", "minx,miny,maxx,maxy"),
        ("a,2,3,4", "numbers"),
        ("3,2,1,4", "empty"),
        ("1,2,3,4,EPSG:99999999", "unknown CRS"),
    ]:
        with pytest.raises(AOIError, match=match):
            parse_bbox(bad)


def test_aoi_files_any_crs_and_bad_files(tmp_path):
    poly = Polygon([(14.90, 48.70), (14.95, 48.70), (14.93, 48.74)])
    gpd.GeoDataFrame(geometry=[poly, poly.buffer(0.001)], crs="EPSG:4326").to_file(tmp_path / "a.gpkg")
    aoi = read_aoi(tmp_path / "a.gpkg")
    assert aoi.crs == "EPSG:4326" and aoi.source == "a.gpkg" and aoi.geometry.covers(poly)
    with pytest.warns(UserWarning, match="crs"):
        gpd.GeoDataFrame(geometry=[poly]).to_file(tmp_path / "nocrs.shp")  # a shapefile without .prj
    with pytest.raises(AOIError, match="no CRS"):
        read_aoi(tmp_path / "nocrs.shp")
    gpd.GeoDataFrame(geometry=[Point(14.9, 48.7)], crs="EPSG:4326").to_file(tmp_path / "pts.gpkg")
    with pytest.raises(AOIError, match=r"Point.*Buffer"):
        read_aoi(tmp_path / "pts.gpkg")
    (tmp_path / "junk.gpkg").write_text("not a vector")
    with pytest.raises(AOIError, match="cannot read"):
        read_aoi(tmp_path / "junk.gpkg")


@settings(max_examples=60, deadline=None)
@given(x0=st.floats(299000, 306000), y0=st.floats(5394000, 5401000), w=st.floats(1, 4000), h=st.floats(1, 4000))
def test_window_is_the_grid_over_the_aoi_bounds_in_whole_pixels(x0, y0, w, h):
    aoi = AOI(box(x0, y0, x0 + w, y0 + h), "EPSG:32633", "box")
    window = aoi_window(GRID, aoi)
    left, bottom, right, top = GRID.bounds
    if x0 >= right or x0 + w <= left or y0 >= top or y0 + h <= bottom:
        assert window is None
        return
    assert window is not None
    sub = sub_grid(GRID, window)
    assert float(window.col_off).is_integer() and float(window.row_off).is_integer()
    assert sub.transform == GRID.transform * GRID.transform.translation(window.col_off, window.row_off)
    sl, sb, sr, stop = sub.bounds
    # covers the AOI's bounds (clipped to the grid) with less than one pixel to spare on each side
    assert sl <= max(x0, left) + 1e-6 and sr >= min(x0 + w, right) - 1e-6
    assert sb <= max(y0, bottom) + 1e-6 and stop >= min(y0 + h, top) - 1e-6
    assert sl > max(x0, left) - 10 and sr < min(x0 + w, right) + 10
    assert sb > max(y0, bottom) - 10 and stop < min(y0 + h, top) + 10


def test_aoi_in_another_crs_and_polygon_mask():
    # a lon/lat triangle over the grid: the window holds its bounds, the mask its pixel centres
    grid_ll = rasterio.warp.transform_bounds("EPSG:32633", "EPSG:4326", 300500, 5396000, 304000, 5399000)
    tri = Polygon([(grid_ll[0], grid_ll[1]), (grid_ll[2], grid_ll[1]), (grid_ll[0], grid_ll[3])])
    aoi = AOI(tri, "EPSG:4326", "tri")
    window = aoi_window(GRID, aoi)
    sub = sub_grid(GRID, window)
    mask = AOIMask(aoi, sub).inside(Window(0, 0, sub.width, sub.height))
    assert mask.mean() == pytest.approx(0.5, abs=0.05)
    cols, rows = np.meshgrid(np.arange(sub.width) + 0.5, np.arange(sub.height) + 0.5)
    xs, ys = sub.transform * (cols, rows)
    np.testing.assert_array_equal(mask, shapely.contains_xy(aoi.in_crs(GRID.crs), xs, ys))  # pixel centres


def _product(tmp_path):
    bands = ("B02", "B03", "B04", "B08", "B05", "B11", "B8A")
    return open_product(make_band_folder(tmp_path / "scene", bands, size=96, seed=3))


def _read_all(reader: SceneReader) -> tuple[np.ndarray, np.ndarray]:
    wins = [reader.read(s) for s in strips(reader.grid, 16, 32)]
    return np.concatenate([w.image for w in wins], axis=1), np.concatenate([w.valid for w in wins])


@pytest.mark.parametrize(
    "bbox", [(300000, 5399040, 300960, 5400000), (300130, 5399210, 300610, 5399740), (300457, 5399043, 300960, 5399513)]
)
def test_aoi_read_equals_the_whole_scene_read(tmp_path, bbox):
    """10 m bands are copied and 20 m bands resampled from the same source rows: the AOI's pixels are exactly
    the whole scene's (no resampling of the window, no edge effects of the clipped read)."""
    product = _product(tmp_path)
    bands = list(product.bands)
    with rasterio.Env(**GDAL_ENV), SceneReader(product, bands) as full:
        whole, _ = _read_all(full)
    aoi = AOI(box(*bbox), "EPSG:32633", "box")
    with rasterio.Env(**GDAL_ENV), SceneReader(product, bands, aoi=aoi) as part:
        image, valid = _read_all(part)
        w = part.window
        assert part.grid == sub_grid(part.scene_grid, w)
    crop = whole[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
    np.testing.assert_array_equal(image, crop)
    cols, rows = np.meshgrid(np.arange(w.width) + 0.5, np.arange(w.height) + 0.5)
    xs, ys = part.grid.transform * (cols, rows)
    np.testing.assert_array_equal(valid, shapely.contains_xy(box(*bbox), xs, ys))  # pixel centres in the box


def _stack(tmp_path, h=96, w=128, origin=(500_000, 5_300_000), crs="EPSG:32633", seed=0, name="image.tif"):
    path = write_stack(tmp_path / name, scene(h, w, seed))
    if (origin, crs) != ((500_000, 5_300_000), "EPSG:32633"):
        with rasterio.open(path, "r+") as ds:
            ds.crs, ds.transform = rasterio.crs.CRS.from_string(crs), from_origin(*origin, 10, 10)
    return path


def test_predict_on_an_aoi_is_the_whole_map_clipped_with_no_data_outside(tmp_path):
    """A per-pixel model: the AOI's map equals the whole scene's map inside the polygon, 255 outside, on the
    scene grid's window over the polygon's bounds."""
    stack = _stack(tmp_path)
    lm = loaded(Conv1x1())
    predict_scene(lm, stack, tmp_path / "full.tif", tile=32, overlap=8, quicklook=False)
    tri = Polygon([(500_105, 5_299_105), (500_905, 5_299_105), (500_105, 5_299_805)])
    aoi = AOI(tri, "EPSG:32633", "tri.gpkg")
    result = predict_scene(lm, stack, tmp_path / "aoi.tif", tile=32, overlap=8, quicklook=False, aoi=aoi)
    with rasterio.open(tmp_path / "full.tif") as f, rasterio.open(tmp_path / "aoi.tif") as a:
        window = rasterio.windows.from_bounds(*a.bounds, transform=f.transform)
        assert window.col_off == 10 and window.row_off == 19 and (a.width, a.height) == (81, 71)
        assert a.transform == f.window_transform(window) and a.crs == f.crs
        whole, part = f.read(1, window=window), a.read(1)
        assert a.tags()["AOI"] == "tri.gpkg" and result.grid["width"] == 81
    inside = AOIMask(aoi, Grid(a.crs, a.transform, a.width, a.height)).inside(Window(0, 0, 81, 71))
    assert 0.3 < inside.mean() < 0.7
    np.testing.assert_array_equal(part[inside], whole[inside])
    assert (part[~inside] == IGNORE).all()


def test_scenes_outside_the_aoi_are_skipped_and_an_aoi_outside_all_is_an_error(tmp_path):
    lm = loaded(Conv1x1())
    a = _stack(tmp_path / "a", name="a.tif")
    b = _stack(tmp_path / "b", origin=(600_000, 5_300_000), name="b.tif")
    aoi = AOI(box(500_100, 5_299_100, 500_500, 5_299_500), "EPSG:32633", "box")
    results = predict_many(lm, [a, b], tmp_path / "maps", tile=32, overlap=8, quicklook=False, aoi=aoi)
    assert [r.outside_aoi for r in results] == [False, True]
    assert (tmp_path / "maps" / "a.tif").exists() and not (tmp_path / "maps" / "b.tif").exists()
    far = parse_bbox("2,2,3,3")  # lon/lat in the Gulf of Guinea
    with pytest.raises(
        AOIError,
        match=r"2, 2, 3, 3 in EPSG:4326; .* overlaps none of the inputs .*a\.tif: 500000, 5299040, 501280, 5300000 in EPSG:32633",
    ):
        predict_many(lm, [a, b], tmp_path / "none", tile=32, overlap=8, quicklook=False, aoi=far)
    assert not (tmp_path / "none").exists()


def _map(path, crs, origin, classes, conf, nom):
    grid = Grid(rasterio.crs.CRS.from_string(crs), from_origin(*origin, 10, 10), classes.shape[1], classes.shape[0])
    with rasterio.open(path, "w", **class_map_profile(grid)) as ds:
        ds.write(classes, 1)
        style_class_map(ds, nom)
    profile = class_map_profile(grid) | {"nodata": None}
    with rasterio.open(path.with_name(path.stem + "_confidence.tif"), "w", **profile) as ds:
        ds.write(conf, 1)
    return path


def test_two_zone_mosaic_takes_the_most_confident_valid_map(tmp_path):
    """Scenes in UTM 30N and 31N on both sides of 0 deg E: the mosaic (in 31N) equals the 31N map pixel on pixel
    where only it is valid, the other map (nearest) where only that one is, the more confident where both are."""
    nom = nomenclature("level1")
    rng = np.random.default_rng(0)
    # 31N: x 300000..306400, about 0.46-0.54 deg E at 45 N; the 30N map reaches from 295 km of 31N eastwards
    east = _map(
        tmp_path / "east.tif", "EPSG:32631", (300_000, 5_000_000),
        rng.integers(0, 5, (300, 640)).astype(np.uint8), rng.integers(0, 256, (300, 640)).astype(np.uint8), nom,
    )  # fmt: skip
    west_cls = rng.integers(0, 5, (340, 700)).astype(np.uint8)
    west_cls[:, :20] = IGNORE
    x30, y30 = rasterio.warp.transform("EPSG:32631", "EPSG:32630", [295_000], [5_000_200])  # 30N, up to 0.4 deg E
    west = _map(
        tmp_path / "west.tif", "EPSG:32630", (round(x30[0], -1), round(y30[0], -1)),
        west_cls, rng.integers(0, 256, (340, 700)).astype(np.uint8), nom,
    )  # fmt: skip
    lon_lat = rasterio.warp.transform_bounds("EPSG:32631", "EPSG:4326", 296_000, 4_998_000, 302_000, 4_999_500)
    aoi = AOI(box(*lon_lat), "EPSG:4326", "two zones")
    assert aoi.utm_crs == "EPSG:32631"
    result = mosaic_maps([east, west], aoi, tmp_path / "mosaic.tif")
    with rasterio.open(tmp_path / "mosaic.tif") as m:
        mosaic = m.read(1)
        assert m.crs.to_epsg() == 32631 and m.res == (10, 10) and m.overviews(1)
        assert json.loads(m.tags()["CLASS_NAMES"]) == list(nom.class_names) and m.colormap(1)[0][:3] == nom.colors[0]
        grid = Grid(m.crs, m.transform, m.width, m.height)
    assert result.valid_fraction > 0.8  # the lon/lat box is a little rotated on the UTM grid
    assert (tmp_path / "mosaic.qml").exists()
    item = pystac.Item.from_file(tmp_path / "mosaic.stac.json")
    assert item.properties["proj:shape"] == [grid.height, grid.width] and "map" in item.assets
    layers = []
    for path in (east, west):
        with rasterio.open(path) as src, rasterio.open(path.with_name(path.stem + "_confidence.tif")) as conf:
            warp = {"crs": grid.crs, "transform": grid.transform, "width": grid.width, "height": grid.height}
            with rasterio.vrt.WarpedVRT(src, **warp) as v, rasterio.vrt.WarpedVRT(conf, **warp) as c:
                layers.append((v.read(1), c.read(1)))
    (e_cls, e_conf), (w_cls, w_conf) = layers
    inside = AOIMask(aoi, grid).inside(Window(0, 0, grid.width, grid.height))
    e_ok, w_ok = (e_cls != IGNORE) & inside, (w_cls != IGNORE) & inside
    only_e, only_w, both = e_ok & ~w_ok, w_ok & ~e_ok, e_ok & w_ok
    assert only_e.sum() > 1000 and only_w.sum() > 1000 and both.sum() > 100
    np.testing.assert_array_equal(mosaic[only_e], e_cls[only_e])
    np.testing.assert_array_equal(mosaic[only_w], w_cls[only_w])
    pick = np.where(w_conf > e_conf, w_cls, e_cls)
    np.testing.assert_array_equal(mosaic[both], pick[both])
    assert (mosaic[~(e_ok | w_ok)] == IGNORE).all()
    # the 31N map lands pixel on pixel: no resampling of its grid
    with rasterio.open(east) as src:
        col, row = ~src.transform * (grid.transform.c, grid.transform.f)
        assert float(col).is_integer() and float(row).is_integer()


def test_cli_ingest_predict_evaluate_on_a_bbox(tmp_path):
    """The three commands take --bbox; ingest records the AOI in its settings and skips nothing here; a bbox
    outside the scene is exit 2 with one line naming both extents; --mosaic without an AOI is refused."""
    folder = make_band_folder(tmp_path / "scene", ("B02", "B03", "B04", "B08"), size=96, seed=1)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"CODE_18": ["211", "311"]}, geometry=[box(*ORIGIN, ORIGIN[0] + 480, ORIGIN[1] - 960).buffer(0),
                     box(ORIGIN[0] + 480, ORIGIN[1] - 960, ORIGIN[0] + 960, ORIGIN[1])], crs="EPSG:32633").to_file(labels)  # fmt: skip
    bbox = f"{ORIGIN[0] + 200},{ORIGIN[1] - 700},{ORIGIN[0] + 900},{ORIGIN[1] - 60},EPSG:32633"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["ingest", str(folder), "--labels", str(labels), "--out", str(tmp_path / "ds"), "--bbox", bbox,
         "--tile-size", "16", "--nomenclature", "level1", "--split-by-scene"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    settings_ = json.loads((tmp_path / "ds" / "ingest_settings.json").read_text())
    assert settings_["config"]["aoi"]["crs"] == "EPSG:32633"
    (scene_dir,) = (tmp_path / "ds" / "scenes").iterdir()
    with rasterio.open(scene_dir / "image.tif") as img:
        assert (img.width, img.height) == (70, 64) and img.transform.c == ORIGIN[0] + 200
    far = make_band_folder(
        tmp_path / "far", ("B02", "B03", "B04", "B08"), size=96, seed=2, origin=(600_000, 5_400_000), tile="T33UVP"
    )
    res = runner.invoke(
        app,
        ["ingest", str(folder), str(far), "--labels", str(labels), "--out", str(tmp_path / "ds3"), "--bbox", bbox,
         "--tile-size", "16", "--nomenclature", "level1", "--split-by-scene"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        "does not overlap the area of interest" in res.output
        and len(list((tmp_path / "ds3" / "scenes").iterdir())) == 1
    )
    res = runner.invoke(
        app, ["ingest", str(folder), "--out", str(tmp_path / "ds2"), "--bbox", "2,2,3,3", "--nomenclature", "level1"]
    )
    assert res.exit_code == 2 and "overlaps none of the inputs" in res.output and "EPSG:32633" in res.output
    assert not (tmp_path / "ds2").exists()
    res = runner.invoke(app, ["predict", str(tmp_path / "x.ckpt"), str(folder), "--out", str(tmp_path / "m.tif"),
                              "--mosaic", str(tmp_path / "mo.tif")])  # fmt: skip
    assert res.exit_code == 2 and "--mosaic needs an area of interest" in res.output


def test_evaluate_on_an_aoi_scores_only_its_pixels(tmp_path):
    nom = nomenclature("level1")
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 5, (64, 64)).astype(np.uint8)
    ref = pred.copy()
    ref[:, 32:] = (ref[:, 32:] + 1) % 5  # the right half is wrong
    _map(tmp_path / "pred.tif", "EPSG:32633", (500_000, 5_300_000), pred, pred, nom)
    _map(tmp_path / "ref.tif", "EPSG:32633", (500_000, 5_300_000), ref, ref, nom)
    runner = CliRunner()
    left = "500000,5299360,500320,5300000,EPSG:32633"
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.tif"), "--out",
                              str(tmp_path / "r1"), "--bbox", left, "--tile-size", "16", "--replicates", "50"])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert metrics["pixels"]["evaluated"] == 32 * 64 and metrics["scores"]["overall_accuracy"] == 1.0
    assert metrics["options"]["aoi"]["crs"] == "EPSG:32633"
    res = runner.invoke(app, ["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "ref.tif"), "--out",
                              str(tmp_path / "r2"), "--tile-size", "16", "--replicates", "50"])  # fmt: skip
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["scores"]["overall_accuracy"] == pytest.approx(
        0.5
    )


def test_torch_is_not_needed_for_aoi_and_mosaic():
    import subprocess
    import sys

    code = "import landcover.io.aoi, landcover.inference.mosaic, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_predict_with_a_bbox_and_a_mosaic(tmp_path):
    """Two ingested stacks side by side, one --bbox over both: one map per scene on its window, and the mosaic
    in the CRS asked for, with its STAC Item; both maps' valid pixels appear in it."""
    import torch

    from landcover.models.build import build_model
    from landcover.models.config import ModelConfig
    from tests.test_predict import BANDS, K, meta

    model, _ = build_model(ModelConfig(), BANDS, K, load_weights=False)
    ckpt = tmp_path / "best.ckpt"
    torch.save({"landcover": meta(), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    a = _stack(tmp_path / "a", name="image.tif", seed=1)
    b = _stack(tmp_path / "b", origin=(501_280, 5_300_000), name="image.tif", seed=2)
    bbox = "500800,5299300,501800,5299900,EPSG:32633"
    res = CliRunner().invoke(
        app,
        ["predict", str(ckpt), str(a), str(b), "--out", str(tmp_path / "maps"), "--bbox", bbox, "--mosaic",
         str(tmp_path / "mosaic.tif"), "--mosaic-crs", "EPSG:32633", "--no-quicklook"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "mosaic of 2 map(s), 100 x 60 px in EPSG:32633" in res.output
    with rasterio.open(tmp_path / "mosaic.tif") as m:
        mosaic = m.read(1)
        assert m.transform.c == 500_800 and m.transform.f == 5_299_900
    for name, cols in (("a", slice(0, 48)), ("b", slice(48, 100))):
        with rasterio.open(tmp_path / "maps" / f"{name}.tif") as s:
            part = s.read(1)
        np.testing.assert_array_equal(mosaic[:, cols], part)  # each scene alone on its side
    assert pystac.Item.from_file(tmp_path / "mosaic.stac.json").properties["proj:shape"] == [60, 100]
