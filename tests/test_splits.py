"""Spatial splits on one grid shared by every scene whatever its CRS (neighbouring UTM zones,
overlapping products, several dates): the same ground is always in the same split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import finalize, ingest
from landcover.dataset.settings import IngestConfig
from landcover.dataset.splits import SCHEME_VERSION, SPLITS, SplitConfig, scene_split, tile_split
from landcover.errors import ConfigError, DatasetError
from tests.s2_fixtures import pixels, write_s2_raster

CENTRE = (12.0, 47.5)  # lon, lat: on the boundary of UTM zones 32 and 33 (Austria/Bavaria)


def origin_in(crs: str, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """A 10 m-aligned upper-left corner in ``crs`` of ground near CENTRE (moved by ``offset`` m)."""
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(*CENTRE)
    return round((x + offset[0]) / 10) * 10, round((y + offset[1]) / 10) * 10


def grid_tiles(crs: str, origin: tuple[float, float], n: int, tile_m: float) -> list[tuple]:
    x0, y0 = origin
    return [
        (x0 + c * tile_m, y0 - (r + 1) * tile_m, x0 + (c + 1) * tile_m, y0 - r * tile_m)
        for r in range(n)
        for c in range(n)
    ]


def footprints(bounds: list[tuple], crs: str, target: str = "EPSG:32632") -> np.ndarray:
    """Tile boxes of ``crs`` as densified polygons in ``target`` (a metric CRS to compare in)."""
    boxes = shapely.segmentize(shapely.box(*np.asarray(bounds).T), 40.0)
    t = Transformer.from_crs(crs, target, always_xy=True)
    return shapely.transform(boxes, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def leaks(tiles: dict[str, list[tuple]], min_distance: float) -> tuple[int, dict[str, int]]:
    """(pairs of non-buffer tiles of different splits closer than ``min_distance``, tiles kept per
    split) over tiles {crs: [(bounds, split, buffer), ...]} of possibly different CRSs."""
    geoms, names = [], []
    for crs, rows in tiles.items():
        kept = [(b, s) for b, s, buffer in rows if not buffer]
        geoms.extend(footprints([b for b, _ in kept], crs))
        names.extend(s for _, s in kept)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(np.asarray(geoms), predicate="dwithin", distance=min_distance)
    names_arr = np.asarray(names)
    close = int((names_arr[left] != names_arr[right]).sum()) // 2
    return close, {s: int((names_arr == s).sum()) for s in SPLITS}


def test_neighbouring_utm_zones_and_overlapping_products_share_one_split_grid():
    """36 x 36 tiles of 1280 m in zone 32, the same ground in zone 33, and a zone-33 product on a
    grid shifted by a fraction of a tile: no non-buffer tile of one split may come within the
    buffer distance of a non-buffer tile of another split, whatever the CRSs (with per-CRS blocks
    most val/test tiles of zone 33 lay on train ground of zone 32)."""
    cfg = SplitConfig(seed=1)
    tile_m, n = 1280.0, 36
    scenes = {
        "EPSG:32632": grid_tiles("EPSG:32632", origin_in("EPSG:32632", (-n * 640, n * 640)), n, tile_m),
        "EPSG:32633": grid_tiles("EPSG:32633", origin_in("EPSG:32633", (-n * 640, n * 640)), n, tile_m),
    }
    shifted = grid_tiles("EPSG:32633", origin_in("EPSG:32633", (-n * 640 + 570, n * 640 - 330)), n, tile_m)
    rows = {
        crs: [(b, *tile_split(b, crs, tile_m, cfg, f"scene_{crs}")) for b in bounds] for crs, bounds in scenes.items()
    }
    rows["EPSG:32633"] += [(b, *tile_split(b, "EPSG:32633", tile_m, cfg, "shifted")) for b in shifted]
    close, kept = leaks(rows, 0.99 * cfg.buffer_tiles * tile_m)
    assert close == 0
    assert all(kept[s] > 20 for s in SPLITS), kept  # every split keeps tiles: the check is not vacuous
    buffered = sum(r[2] for rs in rows.values() for r in rs) / sum(len(rs) for rs in rows.values())
    assert 0.05 < buffered < 0.6


def test_different_dates_of_a_tile_get_identical_splits():
    cfg = SplitConfig(seed=4)
    bounds = grid_tiles("EPSG:32633", origin_in("EPSG:32633"), 12, 1280.0)
    first = [tile_split(b, "EPSG:32633", 1280.0, cfg, "S2A_MSIL2A_20230115_T33UUP") for b in bounds]
    again = [tile_split(b, "EPSG:32633", 1280.0, cfg, "S2B_MSIL2A_20230720_T33UUP") for b in bounds]
    assert first == again


def test_by_scene_keeps_every_date_of_an_mgrs_tile_in_one_split():
    cfg = SplitConfig(by_scene=True)
    dates = [
        f"S2{s}_MSIL2A_2023{m:02d}15T101021_N0509_R022_T33UUP_2023{m:02d}15T120000" for s in "AB" for m in range(1, 13)
    ]
    assert len({scene_split(d, cfg) for d in dates}) == 1
    tiles = [
        f"S2A_MSIL2A_20230115T101021_N0509_R022_T{z}{b}_20230115T120000"
        for z in (32, 33)
        for b in ("UNU", "UPU", "UQU", "UUP", "UVP", "UWP", "TPT", "TQT")
    ]
    assert len({scene_split(t, cfg) for t in tiles}) > 1  # other tiles are drawn independently


def test_grid_crs_must_be_a_projected_crs_in_metres():
    from landcover.errors import ConfigError

    for bad in ("EPSG:4326", "not a crs"):
        with pytest.raises(ConfigError, match="grid_crs"):
            SplitConfig(grid_crs=bad)
    assert SplitConfig(grid_crs="EPSG:6933").grid_crs == "EPSG:6933"


# --- end to end: two scenes of neighbouring zones ingested into one dataset ----------------------


def write_scene(folder, crs: str, origin: tuple[float, float], size: int, seed: int):
    data = np.stack([pixels((size, size), seed + i) for i in range(4)])
    return write_s2_raster(
        folder / f"T{crs[-2:]}XXX_20230115T101021_stack.tif",
        data,
        crs=crs,
        origin=origin,
        descriptions=["B02", "B03", "B04", "B08"],
    )


CFG = IngestConfig(tile_size=32, overviews=False, split={"block_size_m": 1280, "seed": 2, "fractions": (0.4, 0.3, 0.3)})


@pytest.fixture
def two_zones(tmp_path):
    size = 480  # 4.8 km x 4.8 km of the same ground in both zones
    a = write_scene(tmp_path / "a", "EPSG:32632", origin_in("EPSG:32632", (-2400, 2400)), size, 0)
    b = write_scene(tmp_path / "b", "EPSG:32633", origin_in("EPSG:32633", (-2400, 2400)), size, 10)
    out = tmp_path / "ds"
    dataset = ingest([a, b], out, config=CFG).dataset
    return out, dataset


def catalog_rows(out) -> dict[str, list]:
    cat = read_catalog(out, include_buffer=True)
    rows: dict[str, list] = {}
    for r in cat.itertuples():
        rows.setdefault(r.crs, []).append(((r.xmin, r.ymin, r.xmax, r.ymax), r.split, r.buffer))
    return rows


def test_ingest_of_neighbouring_zones_gives_no_val_or_test_tile_on_train_ground(two_zones):
    out, dataset = two_zones
    rows = catalog_rows(out)
    assert sorted(rows) == ["EPSG:32632", "EPSG:32633"]
    close, kept = leaks(rows, 0.99 * 320.0)
    assert close == 0
    assert kept["train"] > 0 and kept["val"] + kept["test"] > 0, kept
    scheme = dataset["split_scheme"]
    assert scheme["version"] == SCHEME_VERSION
    assert scheme["grid_crs"] == "EPSG:3035" and scheme["block_size_m"] == 1280 and scheme["seed"] == 2
    assert json.loads((out / "dataset.json").read_text())["split_scheme"] == scheme


def test_dataset_of_the_old_scheme_is_refused_by_train_until_finalize_resplits_it(two_zones):
    from landcover.training.datamodule import DataConfig, LandcoverDataModule

    out, _ = two_zones
    meta = json.loads((out / "dataset.json").read_text())
    del meta["split_scheme"]  # what an ingest before the shared grid wrote
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"landcover ingest --finalize --out"):
        LandcoverDataModule(DataConfig(dataset=out))
    # finalize re-splits from the catalog alone: no image is read
    for image in out.glob("scenes/*/image.tif"):
        image.unlink()
    resplit = finalize(out, split=SplitConfig(block_size_m=1280, seed=7, fractions=(0.4, 0.3, 0.3)))
    assert resplit["split_scheme"]["seed"] == 7
    LandcoverDataModule(DataConfig(dataset=out))  # accepted now
    rows = catalog_rows(out)
    cfg = SplitConfig(block_size_m=1280, seed=7, fractions=(0.4, 0.3, 0.3))
    for crs, tiles in rows.items():
        for bounds, split, buffer in tiles:
            assert (split, buffer) == tile_split(bounds, crs, 320.0, cfg, "")
    assert leaks(rows, 0.99 * 320.0)[0] == 0
    settings = json.loads((out / "ingest_settings.json").read_text())
    assert settings["config"]["split"]["seed"] == 7  # a later ingest into it uses the new split


def test_cli_finalize_resplits_and_refuses_other_settings(two_zones):
    from typer.testing import CliRunner

    from landcover.cli import app

    out, _ = two_zones
    before = read_catalog(out, include_buffer=True)["split"].tolist()
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "--finalize", "--out", str(out), "--seed", "9"])
    assert result.exit_code == 0, result.output
    after = json.loads((out / "dataset.json").read_text())
    assert after["split_scheme"]["seed"] == 9 and after["split_scheme"]["block_size_m"] == 1280
    assert read_catalog(out, include_buffer=True)["split"].tolist() != before
    result = runner.invoke(app, ["ingest", "--finalize", "--out", str(out), "--set", "tile_size=64"])
    assert result.exit_code == 2 and "re-splits only" in result.output
    result = runner.invoke(app, ["ingest", "--finalize", "--out", str(out), "--set", "split.min_valid_fraction=0.9"])
    assert result.exit_code == 2 and "min_valid_fraction" in result.output


def test_tiles_outside_the_grid_area_of_use_get_a_warning():
    from landcover.dataset.splits import grid_area_warning

    assert grid_area_warning((11.5, 47.0, 12.5, 48.0), SplitConfig()) is None
    vietnam = grid_area_warning((105.0, 20.0, 106.0, 21.0), SplitConfig())
    assert vietnam is not None and "EPSG:6933" in vietnam and "--finalize" in vietnam
    assert grid_area_warning((105.0, 20.0, 106.0, 21.0), SplitConfig(grid_crs="EPSG:6933")) is None


def test_ingest_resumes_a_dataset_of_the_old_scheme_and_resplits_it(tmp_path, two_zones):
    out, _ = two_zones
    settings = json.loads((out / "ingest_settings.json").read_text())
    del settings["config"]["split"]["grid_crs"]  # as written before the shared grid existed
    (out / "ingest_settings.json").write_text(json.dumps(settings))
    meta = json.loads((out / "dataset.json").read_text())
    del meta["split_scheme"]
    (out / "dataset.json").write_text(json.dumps(meta))
    inputs = sorted((tmp_path / d / f) for d in ("a", "b") for f in [p.name for p in (tmp_path / d).iterdir()])
    dataset = ingest(inputs, out, config=CFG).dataset  # same settings: resumed (nothing re-read), re-split
    assert dataset["split_scheme"]["version"] == SCHEME_VERSION
    assert leaks(catalog_rows(out), 0.99 * 320.0)[0] == 0


def test_spatial_k_fold_tests_every_block_exactly_once(two_zones):
    from landcover.dataset.splits import block_split

    blocks = [(ix, iy) for ix in range(-20, 20) for iy in range(-20, 20)]
    by_fold = [[block_split(ix, iy, SplitConfig(folds=5, fold=k, seed=3)) for ix, iy in blocks] for k in range(5)]
    for i in range(len(blocks)):
        column = [by_fold[k][i] for k in range(5)]
        assert column.count("test") == 1 and column.count("val") == 1 and column.count("train") == 3
    shares = [by_fold[k].count("test") / len(blocks) for k in range(5)]
    assert all(0.15 < s < 0.25 for s in shares), shares
    with pytest.raises(ConfigError, match="folds must be >= 3"):
        SplitConfig(folds=2)
    with pytest.raises(ConfigError, match=r"fold in 0\.\.folds-1"):
        SplitConfig(folds=4, fold=4)
    out, _ = two_zones  # a fold of an ingested dataset: re-split without reading imagery, no leak
    for image in out.glob("scenes/*/image.tif"):
        image.unlink()
    cfg = SplitConfig(block_size_m=1280, seed=2, folds=3, fold=1)
    finalize(out, split=cfg)
    rows = catalog_rows(out)
    for crs, tiles in rows.items():
        for bounds, split, buffer in tiles:
            assert (split, buffer) == tile_split(bounds, crs, 320.0, cfg, "")
    assert leaks(rows, 0.99 * 320.0)[0] == 0
