"""The tiles catalog: spatial splits with buffers, per-tile records, parts, finalize, reading."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio.windows
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.dataset.catalog import (
    COLUMNS,
    SPLITS,
    SplitConfig,
    assign_splits,
    block_split,
    read_catalog,
    records_table,
    scene_split,
    tile_record,
    tile_split,
    write_scene_part,
)
from landcover.dataset.catalog import finalize as finalize_catalog
from landcover.dataset.catalog_stats import band_statistics, class_pixel_totals
from landcover.errors import ConfigError, DatasetError
from landcover.io.grid import Grid
from landcover.nomenclature import IGNORE, nomenclature

CRS_TEXT = "EPSG:32633"
NOM = nomenclature("level1")  # 5 classes
BANDS = ["B02", "B03", "B04"]


def make_grid(width: int, height: int, x0: float = 600_013.0, y0: float = 5_340_007.0) -> Grid:
    """A 10 m grid near Vienna whose origin is not aligned to the split blocks."""
    return Grid(CRS.from_string(CRS_TEXT), from_origin(x0, y0, 10, 10), width, height)


def scene_records(scene_id: str, grid: Grid, cfg: SplitConfig, tile: int = 4, value=None, seed: int = 0) -> list[dict]:
    """Records of every tile of a fully valid scene, with the split finalize() will assign;
    ``value(split, buffer)`` fills the image."""
    rng = np.random.default_rng(seed)
    records = []
    for window in grid.windows(tile):
        shape = (window.height, window.width)
        image = rng.integers(0, 10_000, (len(BANDS), *shape)).astype(np.uint16)
        labels = rng.integers(0, NOM.num_classes, shape).astype(np.uint8)
        bounds = rasterio.windows.bounds(window, grid.transform)
        split, buffer = tile_split(bounds, CRS_TEXT, tile * 10.0, cfg, scene_id)
        if value is not None:
            image[:] = value(split, buffer)
        record = tile_record(
            scene_id=scene_id,
            grid=grid,
            window=window,
            labels=labels,
            valid=np.ones(shape, bool),
            cloud=None,
            image=image,
            nomenclature=NOM,
            split_cfg=cfg,
        )
        assert record["split"] == "" and record["buffer"] is False  # assigned by finalize
        records.append({**record, "split": split, "buffer": buffer})
    return records


def one_tile(labels, valid=None, cloud=None, image=None, cfg=None, **kw):
    shape = labels.shape
    grid = make_grid(shape[1], shape[0])
    return tile_record(
        scene_id="S",
        grid=grid,
        window=Window(0, 0, shape[1], shape[0]),
        labels=np.asarray(labels, np.uint8),
        valid=np.ones(shape, bool) if valid is None else valid,
        cloud=cloud,
        image=np.ones((2, *shape), np.uint16) if image is None else image,
        nomenclature=NOM,
        split_cfg=cfg or SplitConfig(block_size_m=1e6),
        **kw,
    )


# --- configuration and block splits -----------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"fractions": (0.5, 0.3, 0.3)},
        {"fractions": (1.2, -0.1, -0.1)},
        {"buffer_tiles": 0},
        {"block_size_m": 0},
        {"min_valid_fraction": 1.5},
    ],
)
def test_invalid_split_settings_raise_config_error(settings):
    with pytest.raises(ConfigError, match="invalid split settings"):
        SplitConfig(**settings)


def test_from_mapping_turns_unknown_keys_into_config_error():
    with pytest.raises(ConfigError, match="block_size"):
        SplitConfig.from_mapping({"blocksize": 100})
    assert SplitConfig.from_mapping({"seed": 3}).seed == 3


def test_block_split_is_deterministic_and_depends_on_seed_and_grid():
    cfg0, cfg1 = SplitConfig(seed=0), SplitConfig(seed=1)
    blocks = list(itertools.product(range(-10, 20), range(30)))
    first = [block_split(ix, iy, cfg0) for ix, iy in blocks]
    assert first == [block_split(ix, iy, SplitConfig(seed=0, grid_crs="epsg:3035")) for ix, iy in blocks]
    other_seed = [block_split(ix, iy, cfg1) for ix, iy in blocks]
    other_crs = [block_split(ix, iy, SplitConfig(seed=0, grid_crs="EPSG:6933")) for ix, iy in blocks]
    for other in (other_seed, other_crs):
        assert sum(a != b for a, b in zip(first, other, strict=True)) > len(blocks) // 4


def test_block_split_respects_fractions():
    cfg = SplitConfig(fractions=(0.6, 0.3, 0.1), seed=7)
    counts = Counter(block_split(ix, iy, cfg) for ix in range(150) for iy in range(150))
    total = sum(counts.values())
    for name, share in zip(SPLITS, cfg.fractions, strict=True):
        assert abs(counts[name] / total - share) < 0.015
    no_test = SplitConfig(fractions=(0.5, 0.5, 0.0))
    assert {block_split(ix, 0, no_test) for ix in range(2000)} == {"train", "val"}


def test_block_size_that_cannot_hold_a_non_buffer_tile_is_refused():
    with pytest.raises(ConfigError, match="block_size_m"):
        tile_split((0, 0, 2560, 2560), CRS_TEXT, 2560, SplitConfig(block_size_m=5120), "S")
    tile_split((0, 0, 1280, 1280), CRS_TEXT, 1280, SplitConfig(block_size_m=5120), "S")


# --- buffers ----------------------------------------------------------------------------------


TO_GRID = Transformer.from_crs(CRS_TEXT, "EPSG:3035", always_xy=True)


def reference_is_buffer(bounds, tile_m, cfg, split):
    """A lattice of points (every 5 m) over the grown tile, and its outline, mapped into the grid:
    any point in a block of another split makes the tile a buffer tile (it may miss slivers)."""
    xmin, ymin, xmax, ymax = bounds
    d, size = cfg.buffer_tiles * tile_m, cfg.block_size_m
    xs, ys = np.meshgrid(np.arange(xmin - d, xmax + d + 1e-6, 5.0), np.arange(ymin - d, ymax + d + 1e-6, 5.0))
    gx, gy = TO_GRID.transform(xs.ravel(), ys.ravel())
    blocks = set(zip(np.floor(gx / size).astype(int).tolist(), np.floor(gy / size).astype(int).tolist(), strict=True))
    return any(block_split(ix, iy, cfg) != split for ix, iy in blocks)


@pytest.mark.parametrize(("buffer_tiles", "block_size_m"), [(1, 200.0), (2, 250.0)])
def test_no_non_buffer_tiles_of_different_splits_within_buffer_distance(buffer_tiles, block_size_m):
    cfg = SplitConfig(block_size_m=block_size_m, buffer_tiles=buffer_tiles, seed=3)
    tile_m = 40.0
    # two overlapping scenes on grids offset from each other: they must agree on their own
    records = scene_records("A", make_grid(160, 160), cfg) + scene_records(
        "B", make_grid(160, 160, 600_013.0 + 570, 5_340_007.0 - 330), cfg, seed=1
    )
    assert len(records) == 3200
    for r in records:
        bounds = (r["xmin"], r["ymin"], r["xmax"], r["ymax"])
        if reference_is_buffer(bounds, tile_m, cfg, r["split"]):
            assert r["buffer"], bounds
    kept = {
        s: np.array(
            [[r["xmin"], r["ymin"], r["xmax"], r["ymax"]] for r in records if r["split"] == s and not r["buffer"]]
        )
        for s in SPLITS
    }
    assert all(len(boxes) > 0 for boxes in kept.values()), "every split keeps some tiles"
    assert sum(r["buffer"] for r in records) < len(records)
    for a, b in itertools.combinations(SPLITS, 2):
        p, q = kept[a][:, None, :], kept[b][None, :, :]
        dx = np.maximum(0, np.maximum(p[..., 0] - q[..., 2], q[..., 0] - p[..., 2]))
        dy = np.maximum(0, np.maximum(p[..., 1] - q[..., 3], q[..., 1] - p[..., 3]))
        assert np.hypot(dx, dy).min() > buffer_tiles * tile_m


def test_by_scene_puts_whole_scenes_in_one_split_without_buffer():
    cfg = SplitConfig(by_scene=True, block_size_m=50.0)  # block size is irrelevant by scene
    grid = make_grid(40, 40)
    splits = {}
    for scene in (f"S2A_{i:03d}" for i in range(30)):
        records = scene_records(scene, grid, cfg)
        assert {r["split"] for r in records} == {scene_split(scene, cfg)}
        assert not any(r["buffer"] for r in records)
        splits[scene] = records[0]["split"]
    assert set(splits.values()) == set(SPLITS)


# --- records ----------------------------------------------------------------------------------


def test_records_match_the_grid_windows_and_footprints():
    grid = make_grid(10, 7)
    records = scene_records("S", grid, SplitConfig(block_size_m=1000.0))
    windows = list(grid.windows(4))
    assert len(records) == len(windows) == 6
    to_lonlat = Transformer.from_crs(CRS_TEXT, "EPSG:4326", always_xy=True)
    for r, w in zip(records, windows, strict=True):
        assert (r["row"], r["col"], r["height"], r["width"]) == (w.row_off, w.col_off, w.height, w.width)
        assert r["tile_id"] == f"S_r{w.row_off:05d}_c{w.col_off:05d}"
        assert (r["xmin"], r["ymin"], r["xmax"], r["ymax"]) == rasterio.windows.bounds(w, grid.transform)
        assert r["crs"] == CRS_TEXT
        geom = r["geometry"]
        assert geom.is_valid and len(geom.exterior.coords) > 5  # densified edges
        corners = to_lonlat.transform([r["xmin"], r["xmax"]], [r["ymin"], r["ymax"]])
        assert np.allclose(geom.bounds, [corners[0][0], corners[1][0], corners[0][1], corners[1][1]], atol=1e-6)
    assert records[-1]["width"] == 2 and records[-1]["height"] == 3  # the edge tile


def test_class_counts_dominant_and_present_classes():
    labels = np.full((4, 4), IGNORE, np.uint8)
    labels.flat[:10] = 2
    labels.flat[10:13] = 4
    r = one_tile(labels, present_threshold=0.25)
    assert r["class_counts"] == [0, 0, 10, 0, 3]
    assert sum(r["class_counts"]) == 13 and r["labelled_fraction"] == 13 / 16
    assert r["dominant_class"] == 2 and r["present_classes"] == [2]
    assert one_tile(labels, present_threshold=0.2)["present_classes"] == [2, 4]
    empty = one_tile(np.full((4, 4), IGNORE))
    assert empty["dominant_class"] == -1 and empty["present_classes"] == []
    assert empty["class_counts"] == [0] * NOM.num_classes
    with pytest.raises(DatasetError, match="not class ids"):
        one_tile(np.full((4, 4), NOM.num_classes))


def test_valid_and_cloud_fractions_band_sums_and_dropping():
    valid = np.ones((4, 4), bool)
    valid[0] = False  # 12 pixels with data
    cloud = np.zeros((4, 4), bool)
    cloud[0, 0] = True  # a cloud pixel without data: not counted as cloud
    cloud[1, :3] = True
    image = np.arange(32, dtype=np.uint16).reshape(2, 4, 4)
    r = one_tile(np.zeros((4, 4)), valid=valid, cloud=cloud, image=image)
    usable = valid & ~cloud
    assert r["valid_fraction"] == 9 / 16 and r["cloud_fraction"] == 3 / 16
    assert r["band_count"] == 9
    assert r["band_sum"] == [float(image[b][usable].sum()) for b in range(2)]
    assert r["band_sumsq"] == [float((image[b][usable].astype(float) ** 2).sum()) for b in range(2)]
    strict = SplitConfig(block_size_m=1e6, min_valid_fraction=0.6)
    assert one_tile(np.zeros((4, 4)), valid=valid, cloud=cloud, cfg=strict) is None


# --- parts, finalize, reading -----------------------------------------------------------------


DATASET_SPLIT = SplitConfig(block_size_m=200.0, seed=3)


def finalize(out, parts, bands):
    """catalog.finalize with the split settings the ``dataset`` fixture's records were made with."""
    return finalize_catalog(out, parts, bands, DATASET_SPLIT, 40.0)


@pytest.fixture
def dataset(tmp_path: Path):
    """Two scenes and an empty one; val/test tiles and buffer tiles hold wild pixel values."""
    cfg = DATASET_SPLIT
    wild = {"val": 60_000, "test": 50_000}

    def value(split, buffer):
        return 40_000 if buffer else wild.get(split, 1000)

    records = scene_records("A", make_grid(80, 80), cfg, value=value) + scene_records(
        "B", make_grid(80, 80, 600_893.0), cfg, value=value
    )
    parts = []
    for name, part in (("B", records[400:]), ("A", records[:400]), ("C", [])):
        parts.append(tmp_path / "parts" / f"{name}.parquet")
        write_scene_part(part, parts[-1])
    return tmp_path / "ds", parts, records


def test_empty_scene_part_has_the_schema(dataset):
    _, parts, _ = dataset
    empty = gpd.read_parquet(parts[2])
    assert len(empty) == 0 and tuple(empty.columns) == COLUMNS and empty.crs.to_epsg() == 4326


def test_band_statistics_come_from_train_tiles_only(dataset):
    out, parts, records = dataset
    stats = finalize(out, parts, BANDS)
    train = [r for r in records if r["split"] == "train" and not r["buffer"]]
    assert {r["split"] for r in records if not r["buffer"]} == set(SPLITS)
    assert any(r["buffer"] for r in records)
    assert stats["count"] == sum(r["band_count"] for r in train) > 0
    assert stats["mean"] == pytest.approx([1000.0] * 3)
    assert stats["std"] == pytest.approx([0.0] * 3, abs=1e-3)
    assert stats["from"] == "train tiles (buffer excluded)" and stats["bands"] == BANDS


def test_band_statistics_pool_pixels():
    grid = make_grid(8, 4)
    cfg = SplitConfig(block_size_m=1e6, fractions=(1, 0, 0))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 5000, (3, 4, 8)).astype(np.uint16)
    records = [
        tile_record(
            scene_id="S",
            grid=grid,
            window=w,
            labels=np.zeros((4, 4), np.uint8),
            valid=np.ones((4, 4), bool),
            cloud=None,
            image=pixels[:, :, w.col_off : w.col_off + 4],
            nomenclature=NOM,
            split_cfg=cfg,
        )
        for w in grid.windows(4)
    ]
    assert len(records) == 2
    flat = pixels.reshape(3, -1).astype(float)
    stats = band_statistics(assign_splits(records_table(records), cfg, 40.0), BANDS)
    assert stats["mean"] == pytest.approx(flat.mean(axis=1).tolist())
    assert stats["std"] == pytest.approx(flat.std(axis=1).tolist())


def test_finalize_is_byte_identical_and_sorted(dataset):
    out, parts, _ = dataset
    stats = finalize(out, parts, BANDS)
    digests = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("catalog.parquet", "splits.gpkg")}
    assert finalize(out, list(reversed(parts)), BANDS) == stats
    assert digests == {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in digests}
    assert sorted(p.name for p in out.iterdir()) == ["catalog.parquet", "splits.gpkg"]
    catalog = read_catalog(out, include_buffer=True)
    keys = list(zip(catalog.scene_id, catalog.row, catalog.col, strict=True))
    assert keys == sorted(keys) and len(keys) == 800
    assert catalog.crs.to_epsg() == 4326 and tuple(catalog.columns) == COLUMNS


def test_splits_gpkg_has_split_and_tile_layers(dataset):
    out, parts, records = dataset
    finalize(out, parts, BANDS)
    layers = dict(pyogrio.list_layers(out / "splits.gpkg"))
    assert layers == {"splits": "MultiPolygon", "tiles": "Polygon"}
    splits = gpd.read_file(out / "splits.gpkg", layer="splits")
    assert list(splits["split"]) == [*SPLITS, "buffer"]
    assert splits["tiles"].sum() == len(records) and (splits["area_km2"] > 0).all()
    # 40 m tiles: the dissolved area matches the tile count (scenes A and B do not overlap)
    assert splits["area_km2"].to_numpy() == pytest.approx(splits["tiles"] * 0.0016, rel=0.01)
    tiles = gpd.read_file(out / "splits.gpkg", layer="tiles")
    assert len(tiles) == len(records) and {"split", "buffer", "valid_fraction"} <= set(tiles.columns)
    assert tiles["buffer"].sum() == sum(r["buffer"] for r in records)


def test_read_catalog_filters_splits_and_buffer(dataset):
    out, parts, records = dataset
    finalize(out, parts, BANDS)
    assert len(read_catalog(out, include_buffer=True)) == len(records)
    assert not read_catalog(out)["buffer"].any()
    for split in SPLITS:
        expected = sum(r["split"] == split and not r["buffer"] for r in records)
        chosen = read_catalog(out, split)
        assert len(chosen) == expected > 0 and set(chosen["split"]) == {split}
        with_buffer = read_catalog(out, split, include_buffer=True)
        assert len(with_buffer) == sum(r["split"] == split for r in records)
    with pytest.raises(ConfigError, match="unknown split"):
        read_catalog(out, "validation")


def test_read_catalog_missing_says_to_ingest(tmp_path):
    with pytest.raises(DatasetError, match="landcover ingest"):
        read_catalog(tmp_path)


def test_class_pixel_totals(dataset):
    out, parts, records = dataset
    finalize(out, parts, BANDS)
    totals = class_pixel_totals(read_catalog(out, include_buffer=True), "val")
    expected = np.sum([r["class_counts"] for r in records if r["split"] == "val" and not r["buffer"]], axis=0)
    assert totals.dtype == np.int64 and totals.tolist() == expected.tolist()
    empty = read_catalog(out).iloc[:0]
    assert class_pixel_totals(empty, num_classes=5).tolist() == [0] * 5


def test_finalize_refuses_bad_parts(dataset, tmp_path):
    out, parts, _ = dataset
    with pytest.raises(DatasetError, match="more than one catalog part"):
        finalize(out, [*parts, parts[0]], BANDS)
    with pytest.raises(DatasetError, match="is missing"):
        finalize(out, [tmp_path / "nope.parquet"], BANDS)
    with pytest.raises(DatasetError, match="band sums"):
        finalize(out, parts, ["B02"])
    assert not out.exists() or not any(out.iterdir())
    stats = finalize(out, [parts[2]], BANDS)  # no train tile: a dataset without statistics
    assert stats["mean"] is None and stats["count"] == 0 and "none of the 0 tiles" in stats["from"]
