"""CORINE labels onto any grid: alignment, nomenclatures, errors, styling, real data."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import box

from landcover.errors import NoOverlapError, OutputExistsError, UnknownCodeError
from landcover.io.grid import Grid
from landcover.nomenclature import IGNORE, corine_classes, nomenclature
from landcover.sources.label_files import load_label_mapping, map_values
from landcover.sources.labels import labels_like, open_label_source, write_labels
from tests.conftest import shared_data, write_raster

CODES = [c.code for c in corine_classes()]


def pixel_centres(grid: Grid, step: int = 1):
    cols, rows = np.meshgrid(np.arange(0, grid.width, step) + 0.5, np.arange(0, grid.height, step) + 0.5)
    xs, ys = grid.transform * (cols.ravel(), rows.ravel())
    return np.asarray(xs), np.asarray(ys)


def independent_codes(frame: gpd.GeoDataFrame, column: str, grid: Grid, step: int = 1) -> np.ndarray:
    """Level-3 code at each pixel centre by point-in-polygon in the *source* CRS (no rasterizer).

    ``step`` > 1 checks every step-th row and column only.
    """
    xs, ys = pixel_centres(grid, step)
    tx, ty = Transformer.from_crs(grid.crs, frame.crs, always_xy=True).transform(xs, ys)
    out = np.zeros(xs.size, dtype=np.int32)
    for geom, code in zip(frame.geometry, frame[column], strict=True):
        inside = shapely.contains_xy(geom, tx, ty)
        out[inside] = int(code)
    return out.reshape(len(range(0, grid.height, step)), len(range(0, grid.width, step)))


@pytest.fixture
def laea_polygons(tmp_path, utm_grid):
    """44 polygons, one per CLC code (text codes), in EPSG:3035 over the UTM reference grid."""
    grid = Grid.of(utm_grid)
    left, bottom, right, top = grid.bounds
    to_laea = Transformer.from_crs(grid.crs, "EPSG:3035", always_xy=True)
    cells = []
    width = (right - left) / 11
    height = (top - bottom) / 4
    for i, _ in enumerate(CODES):
        x0 = left + (i % 11) * width + 7.3  # off-grid edges so pixel-centre rules matter
        y0 = bottom + (i // 11) * height + 3.1
        ring = [(x0, y0), (x0 + width * 0.93, y0), (x0 + width * 0.93, y0 + height * 0.9), (x0, y0 + height * 0.9)]
        cells.append(shapely.Polygon([to_laea.transform(x, y) for x, y in ring]))
    frame = gpd.GeoDataFrame({"Code_18": [str(c) for c in CODES]}, geometry=cells, crs="EPSG:3035")
    path = tmp_path / "clc.gpkg"
    frame.to_file(path, layer="clc")
    return path, frame


def read(path):
    """(array, dataset) where the dataset is closed but keeps its profile, tags and colormap."""
    with rasterio.open(path) as src:
        src.cached = {"tags": src.tags(), "band_tags": src.tags(1), "colormap": src.colormap(1)}
        return src.read(1), src


def test_vector_labels_align_to_the_pixel(tmp_path, utm_grid, laea_polygons):
    path, frame = laea_polygons
    out = tmp_path / "labels.tif"
    labels_like(path, utm_grid, out)
    ids, src = read(out)
    assert (src.crs, src.transform, src.width, src.height) == (
        Grid.of(utm_grid).crs,
        Grid.of(utm_grid).transform,
        300,
        200,
    )
    expected_codes = independent_codes(frame, "Code_18", Grid.of(utm_grid))
    expected = nomenclature("level3").encode(expected_codes.astype(np.uint16))
    agreement = (ids == expected).mean()
    assert agreement > 0.999, agreement
    assert (ids == IGNORE).any(), "pixels between polygons must be ignore (255)"
    assert set(np.unique(ids)) == set(range(44)) | {IGNORE}


@pytest.mark.parametrize("name", ["level2", "level1", "ben19"])
def test_nomenclatures_remap_level3_output(tmp_path, utm_grid, laea_polygons, name):
    path, _ = laea_polygons
    labels_like(path, utm_grid, tmp_path / "l3.tif")
    labels_like(path, utm_grid, tmp_path / "other.tif", nomenclature_name=name)
    l3, _ = read(tmp_path / "l3.tif")
    other, src = read(tmp_path / "other.tif")
    codes = np.where(l3 == IGNORE, 0, np.array(CODES + [0] * 212)[l3]).astype(np.uint16)
    assert np.array_equal(other, nomenclature(name).encode(codes))
    assert json.loads(src.cached["tags"]["CLASS_NAMES"]) == list(nomenclature(name).class_names)


def test_output_is_styled_for_qgis(tmp_path, utm_grid, laea_polygons):
    out = tmp_path / "labels.tif"
    labels_like(laea_polygons[0], utm_grid, out, nomenclature_name="level1")
    with rasterio.open(out) as src:
        cmap = src.colormap(1)
        assert cmap[0][:3] == nomenclature("level1").colors[0]
        assert cmap[IGNORE][3] == 0
        assert src.nodata == IGNORE and src.dtypes[0] == "uint8"
        assert src.tags(1)["CLASS_4"] == "Water bodies"
        assert src.tags()["NOMENCLATURE"] == "level1"
        assert src.profile["tiled"]
    qml = out.with_suffix(".qml").read_text()
    assert 'label="5 Water bodies"' in qml and "paletted" in qml


def test_unknown_vector_codes_are_listed_with_their_rows(tmp_path, utm_grid, laea_polygons):
    _, frame = laea_polygons
    frame = frame.copy()
    frame.loc[3, "Code_18"] = "115"
    frame.loc[7, "Code_18"] = "forest"
    path = tmp_path / "bad.gpkg"
    frame.to_file(path)
    out = tmp_path / "labels.tif"
    with pytest.raises(UnknownCodeError, match=r"115 \(rows 3\).*forest \(rows 7\)|forest \(rows 7\).*115 \(rows 3\)"):
        labels_like(path, utm_grid, out)
    assert not out.exists() and list(tmp_path.glob("*.partial*")) == []


def test_code_column_is_found_case_insensitively_or_named(tmp_path, utm_grid, laea_polygons):
    _, frame = laea_polygons
    frame = frame.rename(columns={"Code_18": "clc"}).assign(CODE_18=0)
    frame["CODE_18"] = frame["clc"].astype(int) + 1  # a decoy with wrong codes in the default column
    path = tmp_path / "named.gpkg"
    frame.to_file(path)
    with pytest.raises(UnknownCodeError):
        labels_like(path, utm_grid, tmp_path / "a.tif")
    labels_like(path, utm_grid, tmp_path / "b.tif", code_column="CLC")
    assert len(np.unique(read(tmp_path / "b.tif")[0])) == 45


def test_non_overlapping_source_prints_both_extents(tmp_path, utm_grid):
    far = gpd.GeoDataFrame(
        {"CODE_18": ["311"]}, geometry=[box(2_000_000, 1_000_000, 2_010_000, 1_010_000)], crs="EPSG:3035"
    )
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(
        NoOverlapError, match=r"labels cover \(.*\) but the grid covers \(600000, 5338000, 603000, 5340000\)"
    ):
        labels_like(tmp_path / "far.gpkg", utm_grid, tmp_path / "out.tif")
    raster = write_raster(
        tmp_path / "far.tif", np.full((10, 10), 23, np.uint8), "EPSG:3035", from_origin(2_000_000, 1_000_000, 100, 100)
    )
    with pytest.raises(NoOverlapError):
        labels_like(raster, utm_grid, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def laea_index_raster(tmp_path, grid: Grid, res: float, rng, codes=False, nodata=None):
    """A CLC-like raster in EPSG:3035 covering ``grid`` with random classes, plus a 48 strip."""
    to_laea = Transformer.from_crs(grid.crs, "EPSG:3035", always_xy=True)
    xs, ys = to_laea.transform(np.array(grid.bounds)[[0, 2, 0, 2]], np.array(grid.bounds)[[1, 1, 3, 3]])
    left, top = np.floor(min(xs) / res) * res - res, np.ceil(max(ys) / res) * res + res
    w, h = int((max(xs) - left) / res) + 2, int((top - min(ys)) / res) + 2
    indices = rng.integers(1, 45, size=(h, w)).astype(np.uint8)
    indices[:, :2] = 48  # NODATA strip
    values = np.array([0] + CODES + [0] * 211, dtype=np.uint16)[indices] if codes else indices
    if codes:
        values[indices == 48] = 999
    transform = from_origin(left, top, res, res)
    path = write_raster(tmp_path / f"clc_{res}_{codes}.tif", values, "EPSG:3035", transform, nodata=nodata)
    return path, indices, transform


@pytest.mark.parametrize("codes", [False, True])
def test_raster_source_is_warped_with_nearest(tmp_path, utm_grid, rng, codes):
    grid = Grid.of(utm_grid)
    path, indices, transform = laea_index_raster(tmp_path, grid, 25.0, rng, codes=codes)
    out = tmp_path / "labels.tif"
    labels_like(path, utm_grid, out)
    ids, _ = read(out)
    # independent nearest lookup: each pixel centre -> source pixel that contains it
    xs, ys = pixel_centres(grid)
    tx, ty = Transformer.from_crs(grid.crs, "EPSG:3035", always_xy=True).transform(xs, ys)
    cols, rows = ~transform * (tx, ty)
    src_idx = indices[np.floor(rows).astype(int), np.floor(cols).astype(int)].reshape(grid.height, grid.width)
    lut = np.full(256, IGNORE, np.uint8)
    lut[1:45] = np.arange(44)
    expected = lut[src_idx]
    assert (ids == expected).mean() > 0.999


def test_raster_downsampling_uses_the_majority(tmp_path, rng):
    fine = np.repeat(np.repeat(rng.integers(1, 45, (20, 20)), 3, 0), 3, 1).astype(np.uint8)
    fine[::3, ::3] = 1  # one minority pixel per 3x3 block must not win
    path = write_raster(tmp_path / "fine.tif", fine, "EPSG:32633", from_origin(500_000, 5_000_000, 10, 10))
    ref = write_raster(
        tmp_path / "ref.tif", np.zeros((20, 20), np.uint8), "EPSG:32633", from_origin(500_000, 5_000_000, 30, 30)
    )
    labels_like(path, ref, tmp_path / "out.tif")
    ids, _ = read(tmp_path / "out.tif")
    assert np.array_equal(ids, fine[1::3, 1::3] - 1)


def test_unknown_raster_values_abort_without_output(tmp_path, utm_grid):
    data = np.full((40, 40), 23, np.uint8)
    data[5, 5] = 77
    path = write_raster(tmp_path / "bad.tif", data, "EPSG:32633", from_origin(600_000, 5_340_000, 100, 100))
    out = tmp_path / "labels.tif"
    with pytest.raises(UnknownCodeError, match="77"):
        labels_like(path, utm_grid, out)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_existing_output_is_kept_without_overwrite(tmp_path, utm_grid, laea_polygons):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        labels_like(laea_polygons[0], utm_grid, out)
    assert out.read_bytes() == b"keep me"
    labels_like(laea_polygons[0], utm_grid, out, overwrite=True)
    assert read(out)[1].width == 300


# --- real CORINE vector of Lanjarón ---------------------------------------------------------


def grid_over(frame: gpd.GeoDataFrame, crs: str, res: float, tmp_path, name: str) -> Grid:
    left, bottom, right, top = frame.to_crs(crs).total_bounds
    x0, y0 = np.floor(left / res) * res, np.ceil(top / res) * res
    w, h = int(np.ceil((right - x0) / res)), int(np.ceil((y0 - bottom) / res))
    path = write_raster(tmp_path / name, np.zeros((h, w), np.uint8), crs, from_origin(x0, y0, res, res))
    return path


@pytest.mark.parametrize(("crs", "res"), [("EPSG:3042", 25.0), ("EPSG:32630", 10.0)])
def test_real_corine_vector_matches_point_in_polygon(tmp_path, crs, res):
    gpkg = shared_data("corine-lanjaron", "clc_lanjaron.gpkg")
    frame = gpd.read_file(gpkg, layer="clc")
    ref = grid_over(frame, crs, res, tmp_path, "ref.tif")
    grid = Grid.of(ref)
    out = {}
    for name in ("level3", "level2", "level1", "ben19"):
        out[name] = tmp_path / f"{name}.tif"
        labels_like(gpkg, ref, out[name], nomenclature_name=name)
    ids, _ = read(out["level3"])
    step = 3 if res < 20 else 1
    expected = nomenclature("level3").encode(independent_codes(frame, "CODE_18", grid, step).astype(np.uint16))
    assert (ids[::step, ::step] == expected).mean() >= 0.999
    codes = np.where(ids == IGNORE, 0, np.array(CODES + [0] * 212)[ids]).astype(np.uint16)
    for name in ("level2", "level1", "ben19"):
        assert np.array_equal(read(out[name])[0], nomenclature(name).encode(codes))


def test_real_corine_raster_path_agrees_with_vector_path(tmp_path):
    """A CLC-style index raster (25 m, EPSG:3035) warped to 10 m UTM vs. the vector burnt at 10 m."""
    gpkg = shared_data("corine-lanjaron", "clc_lanjaron.gpkg")
    frame = gpd.read_file(gpkg, layer="clc")
    laea = grid_over(frame, "EPSG:3035", 25.0, tmp_path, "laea.tif")
    labels_like(gpkg, laea, tmp_path / "laea_l3.tif")
    l3, src = read(tmp_path / "laea_l3.tif")
    index = np.where(l3 == IGNORE, 48, l3 + 1).astype(np.uint8)  # class id -> CLC raster index
    official = write_raster(tmp_path / "clc_raster.tif", index, "EPSG:3035", src.transform, nodata=None)
    utm = grid_over(frame, "EPSG:32630", 10.0, tmp_path, "utm.tif")
    labels_like(official, utm, tmp_path / "from_raster.tif")
    labels_like(gpkg, utm, tmp_path / "from_vector.tif")
    a, b = read(tmp_path / "from_raster.tif")[0], read(tmp_path / "from_vector.tif")[0]
    valid = (a != IGNORE) | (b != IGNORE)
    assert (a[valid] == b[valid]).mean() >= 0.97


@pytest.mark.parametrize("suffix", [".parquet", ".geojson", ".shp"])
def test_other_vector_formats(tmp_path, utm_grid, laea_polygons, suffix):
    _, frame = laea_polygons
    path = tmp_path / f"clc{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_file(path)
    labels_like(path, utm_grid, tmp_path / "a.tif")
    labels_like(laea_polygons[0], utm_grid, tmp_path / "b.tif")
    assert np.array_equal(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0])


# --- overlapping polygons: the later feature in the file wins ------------------------------


def overlapping_polygons(tmp_path, grid: Grid, n: int = 400, seed: int = 7):
    """``n`` random, heavily overlapping boxes and discs of random CLC codes, in EPSG:3035, file order."""
    rng = np.random.default_rng(seed)
    left, bottom, right, top = grid.bounds
    to_laea = Transformer.from_crs(grid.crs, "EPSG:3035", always_xy=True)
    shapes = []
    for i in range(n):
        x, y = rng.uniform(left, right), rng.uniform(bottom, top)
        size = rng.uniform(0.05, 0.3) * (right - left)
        local = box(x, y, x + size, y + size * rng.uniform(0.5, 1.5)) if i % 2 else shapely.Point(x, y).buffer(size / 2)
        shapes.append(shapely.transform(local, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1]))))
    codes = rng.choice(CODES, size=n)
    frame = gpd.GeoDataFrame({"CODE_18": [str(c) for c in codes]}, geometry=shapes, crs="EPSG:3035")
    path = tmp_path / "overlapping.gpkg"
    frame.to_file(path, layer="clc")
    return path


@pytest.mark.parametrize("window_size", [64, 100, 256, 1024])
def test_overlapping_polygons_later_feature_wins_at_any_window_size(tmp_path, window_size):
    """Equal, pixel for pixel, to rasterio.features.rasterize of the whole layer in file order."""
    ref = write_raster(
        tmp_path / "ref.tif", np.zeros((500, 500), np.uint8), "EPSG:32633", from_origin(600_000, 5_340_000, 10, 10)
    )
    grid = Grid.of(ref)
    path = overlapping_polygons(tmp_path, grid)
    whole = gpd.read_file(path, layer="clc").to_crs(grid.crs)  # file order
    expected_codes = rasterio.features.rasterize(
        zip(whole.geometry, whole["CODE_18"].astype(int), strict=True),
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        fill=0,
        dtype="uint16",
    )
    expected = nomenclature("level3").encode(expected_codes)
    write_labels(open_label_source(path, grid), grid, tmp_path / "labels.tif", window_size=window_size)
    ids, _ = read(tmp_path / "labels.tif")
    assert (ids != IGNORE).mean() > 0.9
    assert int((ids != expected).sum()) == 0


def test_real_osm_overlaps_burn_in_file_order():
    """The OSM layer of T33UUU has overlapping polygons of different classes: file order decides."""
    folder = shared_data("s2-l1c-T33UUU-jp2")
    gpkg = next(folder.glob("gis_osm*.gpkg"))
    grid = Grid.of(next((folder / "IMG_DATA").glob("*_B04.jp2")))
    mapping = load_label_mapping(Path(__file__).parents[1] / "data_catalog" / "osm_fclass_to_clc_level1.csv", "level1")
    whole = gpd.read_file(gpkg).to_crs(grid.crs)
    codes = map_values(whole["fclass"], mapping, gpkg, "fclass")
    expected = rasterio.features.rasterize(
        zip(whole.geometry, codes, strict=True),
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        fill=0,
        dtype="uint16",
    )
    source = open_label_source(gpkg, grid, code_column="fclass", mapping=mapping)
    for size in (128, 1024):
        got = np.zeros_like(expected)
        for w in grid.windows(size):
            got[w.toslices()] = source.codes(grid, w)
        assert np.array_equal(got, expected), size
