"""BigEarthNet ingest: single patches copied exactly, mosaics of one product, patch labels; real data."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ConfigError, MissingBandError
from landcover.nomenclature import IGNORE, corine_classes, nomenclature
from landcover.sources.bigearthnet import bigearthnet_reference_map
from landcover.sources.bigearthnet_scenes import BigEarthNetProduct, open_inputs
from tests.s2_fixtures import make_bigearthnet_metadata, make_bigearthnet_patch, shared_data

SCENE = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
TEN_M = ("B02", "B03", "B04", "B08")


def read(path, *args, **kwargs):
    with rasterio.open(path) as src:
        return src.read(*args, **kwargs)


def band_of(patch: Path, band: str) -> Path:
    return next(f for f in patch.iterdir() if f.name.split(".")[0] == f"{patch.name}_{band}")


def bounds_of(patch: Path) -> rasterio.coords.BoundingBox:
    with rasterio.open(band_of(patch, "B02")) as src:
        return src.bounds


def offset_in(scene: dict, patch: Path) -> tuple[int, int]:
    """Row and column of the patch's upper-left pixel in the scene grid."""
    _, _, left, _, _, top = scene["grid"]["transform"]
    b = bounds_of(patch)
    return round((top - b.top) / 10), round((b.left - left) / 10)


def assert_patch_copied(ds_dir: Path, ds: dict, scene: dict, patch: Path) -> None:
    image = read(ds_dir / scene["image"])
    r, c = offset_in(scene, patch)
    for band in TEN_M:
        got = image[ds["bands"].index(band), r : r + 120, c : c + 120]
        assert np.array_equal(got, read(band_of(patch, band), 1)), (patch.name, band)


@pytest.mark.parametrize("nom", ["ben19", "level2"])
def test_single_v2_patch_with_reference_map_is_copied_exactly(tmp_path, monkeypatch, nom):
    """The acceptance check: 10 m bands bit for bit, labels = the reference map remapped."""
    patch = make_bigearthnet_patch(tmp_path / "ben", with_reference_map=True)
    names = ["Arable land", "Pastures"]
    make_bigearthnet_metadata(tmp_path / "ben" / "metadata.parquet", {patch.name: names}, {patch.name: "validation"})
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    result = CliRunner().invoke(app, ["ingest", str(patch), "--out", str(tmp_path / "ds"), "--nomenclature", nom])
    assert result.exit_code == 0, result.output
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    (scene,) = ds["scenes"]
    assert (scene["scene_id"], scene["grid"]["width"], scene["grid"]["height"], ds["tile_size"]) == (
        patch.name,
        120,
        120,
        120,
    )
    assert len(ds["bands"]) == 12
    assert_patch_copied(tmp_path / "ds", ds, scene, patch)
    reference = read(bigearthnet_reference_map(patch), 1)
    labels = read(tmp_path / "ds" / scene["labels"], 1)
    assert np.array_equal(labels, nomenclature(nom).encode(reference))
    assert len(np.unique(labels)) >= 6  # a varied map: an offset or a flip would show
    (row,) = read_catalog(tmp_path / "ds", include_buffer=True).itertuples()
    assert (row.patch_id, row.official_split, list(row.patch_label_names)) == (patch.name, "val", names)
    if nom == "ben19":
        assert list(row.patch_labels) == [2, 4] and "warning" not in result.output
    else:  # 19-class names cannot become level-2 ids: kept as names, with a warning
        assert list(row.patch_labels) == [] and "kept as names only" in result.output
    assert not list((tmp_path / "tmp").glob("landcover-*")), "temporary VRT folders must be removed"


def test_touching_patches_of_one_product_become_one_mosaic(tmp_path):
    root = tmp_path / "ben"
    a = make_bigearthnet_patch(root, row=27, col=55, with_reference_map=True)
    b = make_bigearthnet_patch(root, row=27, col=56, with_reference_map=True)  # east of a
    c = make_bigearthnet_patch(root, row=28, col=57)  # touches b at a corner; no reference map
    d = make_bigearthnet_patch(root, row=30, col=59)  # d and e touch each other, not a, b, c
    e = make_bigearthnet_patch(root, row=30, col=60)
    lone = make_bigearthnet_patch(root, row=33, col=55)
    other = make_bigearthnet_patch(root, scene="S2B_MSIL2A_20180525T100029_N9999_R122_T33UUP", row=27, col=55)
    labels = {p.name: ["Arable land"] for p in (a, d, e, lone)} | {
        b.name: ["Pastures", "Mixed forest"],
        other.name: ["Urban fabric"],
    }
    make_bigearthnet_metadata(root / "metadata.parquet", labels, {b.name: "test"})
    with open_inputs([root], nomenclature="ben19") as products:
        by_id = {p.product_id: p for p in products}
        assert set(by_id) == {f"{a.name}_mosaic", f"{d.name}_mosaic", lone.name, other.name}
        mosaic = by_id[f"{a.name}_mosaic"]
        assert isinstance(mosaic, BigEarthNetProduct) and len(mosaic.patches) == 3
        for band, res, n in (("B02", 10, 120), ("B05", 20, 60), ("B01", 60, 20)):
            vrt = read(mosaic.bands[band].path, 1)
            assert vrt.shape == (2 * n, 3 * n) and mosaic.bands[band].resolution == res
            for patch, (r, col) in ((a, (0, 0)), (b, (0, 1)), (c, (1, 2))):
                block = vrt[r * n : (r + 1) * n, col * n : (col + 1) * n]
                assert np.array_equal(block, read(band_of(patch, band), 1)), (patch.name, band)
            assert not vrt[n:, : 2 * n].any() and not vrt[:n, 2 * n :].any()  # holes read as no data
    assert not Path(mosaic.bands["B02"].path).exists()  # VRTs gone once the block ends

    ds = ingest([root], tmp_path / "ds", config=IngestConfig(nomenclature="ben19")).dataset
    scene = next(s for s in ds["scenes"] if s["scene_id"] == f"{a.name}_mosaic")
    assert len(ds["scenes"]) == 4 and (scene["grid"]["width"], scene["grid"]["height"]) == (360, 240)
    assert scene["grid"]["transform"][2] == bounds_of(a).left and scene["grid"]["transform"][5] == bounds_of(a).top
    for patch in (a, b, c):
        assert_patch_copied(tmp_path / "ds", ds, scene, patch)
    image = read(tmp_path / "ds" / scene["image"])
    lab = read(tmp_path / "ds" / scene["labels"], 1)
    ben19 = nomenclature("ben19")
    for patch in (a, b):
        r, col = offset_in(scene, patch)
        assert np.array_equal(
            lab[r : r + 120, col : col + 120], ben19.encode(read(bigearthnet_reference_map(patch), 1))
        )
    assert (lab[120:, 240:] == IGNORE).all()  # c has no reference map: no pixel labels
    assert not image[:, 120:, :240].any() and (lab[120:, :240] == IGNORE).all()  # a hole: no data, ignored
    assert "1 patch(es) are not in" in " ".join(scene["provenance"]["warnings"])  # c lacks labels

    cat = read_catalog(tmp_path / "ds", include_buffer=True).set_index("patch_id")
    assert sorted(cat.index) == sorted(p.name for p in (a, b, c, d, e, lone, other))  # holes dropped
    assert list(cat.loc[a.name, "patch_labels"]) == [2] and cat.loc[a.name, "official_split"] == "train"
    assert list(cat.loc[b.name, "patch_labels"]) == [4, 10] and cat.loc[b.name, "official_split"] == "test"
    assert list(cat.loc[c.name, "patch_labels"]) == [] and cat.loc[c.name, "official_split"] == ""
    assert list(cat.loc[other.name, "patch_labels"]) == [0]
    assert cat.loc[a.name, "labelled_fraction"] > 0.5 and cat.loc[c.name, "labelled_fraction"] == 0

    before = (tmp_path / "ds" / "catalog.parquet").read_bytes()
    stages: list[str] = []
    ingest(
        [root],
        tmp_path / "ds",
        config=IngestConfig(nomenclature="ben19"),
        progress=lambda stage, done, total: stages.append(stage),
    )
    assert sum("done before" in s for s in stages) == 4  # resumed: nothing rebuilt
    assert (tmp_path / "ds" / "catalog.parquet").read_bytes() == before


def test_v1_patches_are_scenes_of_their_own_with_converted_labels(tmp_path):
    root = tmp_path / "v1"
    roads = make_bigearthnet_patch(root, version=1, labels=["Pastures", "Road and rail networks and associated land"])
    forest = make_bigearthnet_patch(root, version=1, col=56, labels=["Coniferous forest"])  # adjacent, same date
    ds = ingest([root], tmp_path / "ds", config=IngestConfig(nomenclature="ben19", bands=list(TEN_M))).dataset
    assert sorted(s["scene_id"] for s in ds["scenes"]) == sorted([roads.name, forest.name])
    cat = read_catalog(tmp_path / "ds", include_buffer=True).set_index("patch_id")
    assert list(cat.loc[roads.name, "patch_labels"]) == [4]  # roads have no 19-class label
    assert list(cat.loc[forest.name, "patch_labels"]) == [9]
    assert (cat["labelled_fraction"] == 0).all()  # no reference map, no --labels: patch labels only


def test_tile_sizes_and_bad_inputs(tmp_path):
    a = make_bigearthnet_patch(tmp_path / "x", row=27, col=55)
    make_bigearthnet_patch(tmp_path / "x", row=27, col=56)
    ds = ingest([tmp_path / "x"], tmp_path / "ds", config=IngestConfig(tile_size=64, bands=list(TEN_M))).dataset
    cat = read_catalog(tmp_path / "ds", include_buffer=True)
    assert ds["tile_size"] == 64 and len(cat) == 3 and (cat["patch_id"] == "").all()  # tiles are not patches
    with pytest.raises(ValueError, match="multiple of 16"):
        IngestConfig(tile_size=100)
    assert IngestConfig(tile_size=120).tile_size == 120
    copy = tmp_path / "y" / a.name
    shutil.copytree(a, copy)
    with pytest.raises(ConfigError, match="given twice"), open_inputs([a, copy]):
        pass
    next((tmp_path / "x" / "BigEarthNet-S2").glob("*/*_27_56/*_B8A.tif")).unlink()
    with pytest.raises(MissingBandError, match="B8A"), open_inputs([tmp_path / "x"]):
        pass


# --- real data (../shared/data; skipped when absent) --------------------------------------------------


def test_real_t33uup_block_mosaics_into_one_scene(tmp_path):
    root = shared_data("bigearthnet-v2")
    names = [f"{SCENE}_{n}" for n in ("37_88", "37_89", "37_90", "38_87", "38_88", "38_89", "38_90")]
    patches = [root / "BigEarthNet-S2" / SCENE / n for n in names]
    table = pq.read_table(
        root / "metadata.parquet", columns=["patch_id", "labels", "split"], filters=[("patch_id", "in", names)]
    )
    official = {r["patch_id"]: (r["labels"], r["split"]) for r in table.to_pylist()}
    extra = {
        p["patch_id"]: (p["labels_19class"], p["split"])
        for p in json.loads((root / "patches.json").read_text())
        if p["patch_id"] in set(names) - set(official)
    }
    assert list(extra) == [f"{SCENE}_38_87"]
    expected = official | extra

    with open_inputs(patches, nomenclature="ben19") as (product,):  # metadata.parquet found above
        assert "1 patch(es) are not in" in product.warnings[-1]
        assert {p.patch_id for p in product.patches.values() if p.label_names} == set(official)

    metadata = make_bigearthnet_metadata(
        tmp_path / "metadata.parquet", {k: v[0] for k, v in expected.items()}, {k: v[1] for k, v in expected.items()}
    )
    cfg = IngestConfig(nomenclature="ben19", bigearthnet_metadata=metadata)
    ds = ingest(patches, tmp_path / "ds", config=cfg).dataset
    (scene,) = ds["scenes"]
    lefts, tops = [bounds_of(p).left for p in patches], [bounds_of(p).top for p in patches]
    grid = scene["grid"]
    assert (scene["scene_id"], grid["transform"][2], grid["transform"][5]) == (SCENE, min(lefts), max(tops))
    assert (grid["width"], grid["height"]) == (240, 480)  # 2 x 4 patches (37_87 is missing: a gap)
    for patch in patches:
        assert_patch_copied(tmp_path / "ds", ds, scene, patch)
    cat = read_catalog(tmp_path / "ds", include_buffer=True)
    assert sorted(cat["patch_id"]) == sorted(names) and not scene["provenance"]["warnings"]
    ben19 = nomenclature("ben19")
    split_name = {"train": "train", "validation": "val", "test": "test"}
    for row in cat.itertuples():
        labels, split = expected[row.patch_id]
        assert sorted(row.patch_label_names) == sorted(labels)
        assert list(row.patch_labels) == sorted(ben19.class_names.index(n) for n in labels)
        assert row.official_split == split_name[split]
        assert (row.row, row.col) == offset_in(scene, root / "BigEarthNet-S2" / SCENE / row.patch_id)


def test_real_v1_patches_ingest_one_scene_each(tmp_path):
    root = shared_data("bigearthnet-v1")
    ds = ingest([root], tmp_path / "ds", config=IngestConfig(bands=list(TEN_M))).dataset
    assert len(ds["scenes"]) == 6 and ds["tile_size"] == 120
    level3 = nomenclature("level3")
    code_of = {c.ben43_name: str(c.code) for c in corine_classes() if c.ben43_name}
    cat = read_catalog(tmp_path / "ds", include_buffer=True).set_index("patch_id")
    for scene in ds["scenes"]:
        patch = root / scene["scene_id"]
        assert (scene["grid"]["width"], scene["grid"]["height"]) == (120, 120)
        assert_patch_copied(tmp_path / "ds", ds, scene, patch)
        names = json.loads((patch / f"{patch.name}_labels_metadata.json").read_text())["labels"]
        assert list(cat.loc[patch.name, "patch_label_names"]) == names
        assert list(cat.loc[patch.name, "patch_labels"]) == sorted(level3.codes.index(code_of[n]) for n in names)


def test_real_v2_root_splits_into_products_and_touching_groups():
    root = shared_data("bigearthnet-v2")
    with open_inputs([root], ["B02"], nomenclature="ben19") as products:
        ids = {p.product_id: sorted(x.patch_id[len(SCENE) + 1 :] for x in p.patches.values()) for p in products}
    assert ids == {
        f"{SCENE}_27_55_mosaic": ["27_55", "27_56", "27_57", "27_58", "27_59"],  # a column of 5
        f"{SCENE}_33_69_mosaic": ["33_69", "33_70", "34_69", "34_70", "34_71", "35_69"],
        f"{SCENE}_37_88_mosaic": ["37_88", "37_89", "37_90", "38_87", "38_88", "38_89", "38_90"],
        **{f"{SCENE}_{n}": [n] for n in ("38_58", "70_40", "75_43", "89_18")},  # lone patches
        "S2A_MSIL2A_20180526T100031_N9999_R122_T34WFU_14_23": ["14_23"],  # another product (.tiff files)
    }


def test_real_official_split_is_whole_and_normalised_from_its_own_train_tiles(tmp_path):
    """data.split_column=official_split: no spatial buffer tile is dropped (every official test patch
    is scored exactly once) and the band mean/std come from the official train patches."""
    import torch

    from landcover.config import load_config
    from landcover.training.datamodule import DataConfig, LandcoverDataModule
    from landcover.training.train import TrainConfig, train

    root = shared_data("bigearthnet-v2", "BigEarthNet-S2")
    # small spatial blocks (4 patches wide), so that the spatial buffer cuts official patches
    ingest(
        [root],
        tmp_path / "ben",
        config=IngestConfig(nomenclature="ben19", overviews=False, split={"block_size_m": 4800}),
    )
    full = read_catalog(tmp_path / "ben", include_buffer=True)
    official = {s: full[(full["official_split"] == s) & (full["band_count"] > 0)] for s in ("train", "val", "test")}
    assert official["test"]["buffer"].any() and official["train"]["buffer"].any()  # the spatial buffer cuts them
    data = LandcoverDataModule(
        DataConfig(dataset=tmp_path / "ben", split_column="official_split", num_workers=0, batch_size=2),
        task="classification",
    )
    data.setup(None)
    assert sorted(t[0] for t in data.datasets["train"].tiles) == sorted(official["train"]["tile_id"])
    for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
        seen = [tile for batch in loader for tile in batch["tile_id"]]
        assert sorted(seen) == sorted(official[split]["tile_id"]), split  # each exactly once
    train_tiles = official["train"]
    count = train_tiles["band_count"].sum()
    sums, sumsqs = np.stack(train_tiles["band_sum"]).sum(0), np.stack(train_tiles["band_sumsq"]).sum(0)
    mean = sums / count
    std = np.sqrt(sumsqs / count - mean**2)
    norm = data.normalization
    assert norm["split_column"] == "official_split" and "official_split" in norm["from"]
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-6)
    np.testing.assert_allclose(data.mean.numpy(), mean, rtol=1e-6)  # what the tiles are normalised with
    # the run records where its statistics came from: checkpoint and the run's dataset.json
    cfg = load_config(
        TrainConfig,
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        [
            f"data.dataset={tmp_path / 'ben'}",
            "model.task=classification",
            "trainer.max_epochs=1",
            "data.batch_size=4",
            "data.split_column=official_split",
        ],
    )
    train(cfg, tmp_path / "run")
    meta = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)["landcover"]
    run_info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    for recorded in (meta["normalization"], run_info["normalization"]):
        assert recorded["split_column"] == "official_split"
        np.testing.assert_allclose(recorded["mean"], mean, rtol=1e-9)


def test_real_patch_level_labels_refuse_single_label_classification(tmp_path):
    """BigEarthNet without reference maps has no pixel labels: no dominant class, so `single` is refused."""
    from landcover.training.datamodule import DataConfig, LandcoverDataModule

    root = shared_data("bigearthnet-v2", "BigEarthNet-S2")
    ingest([root], tmp_path / "ben", config=IngestConfig(nomenclature="ben19", overviews=False))
    assert (read_catalog(tmp_path / "ben", include_buffer=True)["labelled_fraction"] == 0).all()
    data = LandcoverDataModule(
        DataConfig(dataset=tmp_path / "ben", split_column="official_split", label_mode="single", num_workers=0),
        task="classification",
    )
    with pytest.raises(ConfigError, match="label_mode=multilabel"):
        data.setup("fit")
