"""The DataModule's loaders deliver exactly the batches of the per-sample formula: windows of image.tif and
labels.tif (random crops drawn in sampler order from the dataset's seeded generator), ``(x - mean) / std`` in
float32, no-data pixels 0 in the image and IGNORE in the mask, targets from the window's labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from landcover.dataset.catalog import read_catalog
from landcover.nomenclature import IGNORE
from landcover.training.config import DataConfig
from landcover.training.datamodule import LandcoverDataModule
from tests.learnable import make_learnable_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learnable dataset with a block of no-data pixels in one train tile and one val tile (and zeros in
    single bands next to it)."""
    root = tmp_path_factory.mktemp("batches")
    dataset = make_learnable_dataset(root / "made", tile_size=64)
    copy = root / "dataset"
    shutil.copytree(dataset, copy)
    for split in ("train", "val"):
        tile = read_catalog(copy, split).iloc[1]
        with rasterio.open(copy / "scenes" / tile.scene_id / "image.tif", "r+") as dst:
            dst.write(np.zeros((4, 6, 5), np.uint16), window=Window(tile.col + 3, tile.row + 7, 5, 6))
            # zeros in some bands only are data
            dst.write(np.zeros((3, 3), np.uint16), 1, window=Window(tile.col + 20, tile.row + 20, 3, 3))
            dst.write(np.zeros((2, 2), np.uint16), 3, window=Window(tile.col + 30, tile.row + 21, 2, 2))
    return copy


def reference_sample(dm: LandcoverDataModule, tile, window: Window) -> dict:
    """One sample as the per-sample path computed it before batched reads (the formula pinned here)."""
    scene = dm.dataset_dir / "scenes" / tile.scene_id
    with rasterio.open(scene / "image.tif") as img, rasterio.open(scene / "labels.tif") as lab:
        raw, mask = img.read(window=window), lab.read(1, window=window).astype(np.int64)
    mean, std = dm.mean.numpy().reshape(-1, 1, 1), dm.std.numpy().reshape(-1, 1, 1)
    nodata = ~raw.any(axis=0)
    image = (raw.astype(np.float32) - mean) / std
    image[:, nodata] = 0.0
    mask[nodata] = IGNORE
    k = dm.num_classes
    counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=k)[:k]
    if dm.cfg.label_mode == "single":
        label = torch.tensor(int(np.argmax(counts)) if counts.sum() else IGNORE, dtype=torch.int64)
    else:
        threshold = dm.cfg.present_threshold or dm.ingest_present_threshold
        label = torch.from_numpy(((counts / max(counts.sum(), 1) >= threshold) & (counts > 0)).astype(np.float32))
    return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "label": label, "tile_id": tile.tile_id}


def reference_batches(dm: LandcoverDataModule, split: str, indices: list[int], crop: int | None) -> list[dict]:
    """The batches of ``indices``; random crops draw (row, col) offsets per sample from the dataset's
    generator ``default_rng([seed, rank 0, worker seed 0])`` in sampler order, as 0 workers do."""
    tiles, rng = dm.split_tiles(split), np.random.default_rng([dm.seed, 0, 0])
    samples = []
    for i in indices:
        tile = tiles.iloc[i]
        dr = dc = 0
        if crop is not None and crop < tile.height:
            dr, dc = int(rng.integers(0, tile.height - crop + 1)), int(rng.integers(0, tile.width - crop + 1))
        size = crop or tile.height
        samples.append(reference_sample(dm, tile, Window(tile.col + dc, tile.row + dr, size, size)))
    batches, n = [], dm.cfg.batch_size
    for start in range(0, len(samples), n):
        chunk = samples[start : start + n]
        batch = {key: torch.stack([s[key] for s in chunk]) for key in ("image", "mask", "label")}
        batches.append({**batch, "tile_id": [s["tile_id"] for s in chunk]})
    return batches


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 1
    for g, e in zip(got, expected, strict=True):
        assert set(g) == {"image", "mask", "label", "tile_id"} and g["tile_id"] == e["tile_id"]
        for key in ("image", "mask", "label"):
            assert g[key].dtype == e[key].dtype and g[key].shape == e[key].shape, key
            assert torch.equal(g[key], e[key]), key


@pytest.mark.parametrize(
    ("task", "cfg"),
    [
        ("segmentation", {"crop_size": 32, "batch_size": 8}),
        ("segmentation", {"batch_size": 16}),
        ("classification", {"crop_size": 20, "batch_size": 8, "label_mode": "single"}),
        ("classification", {"batch_size": 5}),
    ],
)
def test_train_batches_equal_the_per_sample_formula(dataset: Path, task: str, cfg: dict) -> None:
    dm = LandcoverDataModule(DataConfig(dataset=dataset, num_workers=0, **cfg), task=task, seed=11)
    loader = dm.train_dataloader()
    indices = list(loader.sampler)
    got = list(loader)
    n = len(indices) // dm.cfg.batch_size * dm.cfg.batch_size  # drop_last
    assert_same_batches(got, reference_batches(dm, "train", indices[:n], cfg.get("crop_size")))
    nodata_tile = dm.split_tiles("train").iloc[1].tile_id
    assert any(nodata_tile in b["tile_id"] for b in got)


def test_eval_batches_equal_the_per_sample_formula(dataset: Path) -> None:
    dm = LandcoverDataModule(DataConfig(dataset=dataset, num_workers=0, crop_size=32, batch_size=5), seed=2)
    got = list(dm.val_dataloader())
    assert_same_batches(got, reference_batches(dm, "val", list(range(len(dm.split_tiles("val")))), None))
    assert (got[0]["mask"][1, 7:13, 3:8] == IGNORE).all() and (got[0]["image"][1, :, 7:13, 3:8] == 0).all()
    assert (got[0]["mask"][1, 20:23, 20:23] != IGNORE).all() and (got[0]["image"][1, 1:, 20:23, 20:23] != 0).all()


def test_worker_batches_equal_the_per_sample_formula(dataset: Path) -> None:
    """Worker processes fill batches in shared memory: the main process gets the same tensors."""
    dm = LandcoverDataModule(DataConfig(dataset=dataset, num_workers=2, batch_size=4), seed=2)
    got = list(dm.val_dataloader())
    assert_same_batches(got, reference_batches(dm, "val", list(range(len(dm.split_tiles("val")))), None))


def test_batch_memory_is_reused_only_when_nothing_refers_to_it(dataset: Path) -> None:
    """Batches come from a pool of arrays; one is filled again only when no batch, tensor or view of it lives."""
    dm = LandcoverDataModule(DataConfig(dataset=dataset, num_workers=0, batch_size=2), seed=2)
    loader = dm.val_dataloader()
    expected = reference_batches(dm, "val", list(range(len(dm.split_tiles("val")))), None)
    assert len(expected) >= 4
    kept_image, kept_mask, pointers = None, None, []
    for k, batch in enumerate(loader):
        assert torch.equal(batch["image"], expected[k]["image"]) and torch.equal(batch["mask"], expected[k]["mask"])
        pointers.append(batch["image"].data_ptr())
        if k == 0:  # views of the first batch outlive it
            kept_image, kept_mask = batch["image"][1], batch["mask"][2:]
        del batch
    assert torch.equal(kept_image, expected[0]["image"][1]) and torch.equal(kept_mask, expected[0]["mask"][2:])
    assert pointers[0] not in pointers[1:]  # held through its views: never filled again
    assert len(set(pointers[1:])) < len(pointers) - 1  # the others were reused
