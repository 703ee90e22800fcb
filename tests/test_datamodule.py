"""landcover.training.datamodule on a real (tiny) ingested dataset: reads, splits, targets, augmentation."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader

from landcover.dataset.catalog import read_catalog
from landcover.errors import ConfigError, DatasetError
from landcover.nomenclature import IGNORE
from landcover.training.config import DataConfig
from landcover.training.datamodule import LandcoverDataModule, auto_num_workers
from landcover.training.samplers import EpochSampler, ShardSampler
from landcover.training.tiles import TileDataset, class_weights_from_tiles, rare_class_weights
from tests.learnable import make_learnable_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_learnable_dataset(tmp_path_factory.mktemp("learnable"))


def module(dataset: Path, task: str = "segmentation", seed: int = 0, **cfg) -> LandcoverDataModule:
    cfg.setdefault("num_workers", 0)
    return LandcoverDataModule(DataConfig(dataset=dataset, **cfg), task=task, seed=seed)


def read_window(dataset: Path, tile, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    window = window or Window(tile.col, tile.row, tile.width, tile.height)
    scene = dataset / "scenes" / tile.scene_id
    with rasterio.open(scene / "image.tif") as img, rasterio.open(scene / "labels.tif") as lab:
        return img.read(window=window), lab.read(1, window=window)


def test_sample_keys_dtypes_shapes(dataset: Path) -> None:
    dm = module(dataset)
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    assert set(sample) == {"image", "mask", "label", "tile_id"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (4, 32, 32)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (32, 32)
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == (5,)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 4, 32, 32) and batch["mask"].shape == (16, 32, 32)
    assert len(batch["tile_id"]) == 16 and isinstance(batch["tile_id"][0], str)
    single = module(dataset, task="classification", label_mode="single")
    label = single.val_dataloader().dataset[0]["label"]
    assert label.dtype == torch.int64 and label.shape == ()
    assert dm.bands == ["B02", "B03", "B04", "B08"] and dm.num_classes == 5 == len(dm.class_names)
    assert dm.normalization["mean"] == pytest.approx(dm.info["normalization"]["mean"])


def test_image_and_mask_equal_independent_reads(dataset: Path) -> None:
    dm = module(dataset)
    dm.setup(None)
    stats = json.loads((dataset / "dataset.json").read_text())["normalization"]
    mean, std = np.array(stats["mean"])[:, None, None], np.array(stats["std"])[:, None, None]
    for split in ("train", "val", "test"):
        ds, tiles = dm.datasets[split], dm.split_tiles(split)
        for i in (0, len(ds) - 1):
            raw, labels = read_window(dataset, tiles.iloc[i])
            sample = ds[i]
            assert sample["tile_id"] == tiles.iloc[i]["tile_id"]
            np.testing.assert_allclose(sample["image"].numpy(), (raw - mean) / std, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(sample["mask"].numpy(), labels)


def test_nodata_pixels_are_zero_and_ignored(dataset: Path, tmp_path: Path) -> None:
    tile = read_catalog(dataset, "train").iloc[0]
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    with rasterio.open(copy / "scenes" / tile.scene_id / "image.tif", "r+") as dst:
        dst.write(np.zeros((4, 4, 4), np.uint16), window=Window(tile.col + 3, tile.row + 5, 4, 4))
    ds = TileDataset(copy, read_catalog(copy, "train").iloc[:1], mean=[1, 2, 3, 4], std=[1, 1, 1, 1], num_classes=5)
    sample = ds[0]
    assert (sample["image"][:, 5:9, 3:7] == 0).all() and (sample["mask"][5:9, 3:7] == IGNORE).all()
    assert (sample["mask"] != IGNORE).sum() == 32 * 32 - 16


def test_splits_come_from_catalog_without_buffer(dataset: Path) -> None:
    dm = module(dataset)
    dm.setup(None)
    full = read_catalog(dataset, include_buffer=True)
    buffer_ids = set(full.loc[full["buffer"], "tile_id"])
    assert buffer_ids
    seen = set()
    for split in ("train", "val", "test"):
        ids = [t[0] for t in dm.datasets[split].tiles]
        expected = full[(full["split"] == split) & ~full["buffer"]]["tile_id"]
        assert ids == list(expected) and not set(ids) & buffer_ids
        seen |= set(ids)
    assert len(seen) == (~full["buffer"]).sum()


def test_min_labelled_fraction_filters_training_tiles_only(dataset: Path) -> None:
    dm = module(dataset)
    cat = dm.catalog.copy()
    train = cat.index[cat["split"] == "train"]
    cat.loc[train[:10], "labelled_fraction"] = 0.01
    dm._catalog = cat
    assert len(dm.split_tiles("train")) == len(train) - 10
    dm.cfg.min_labelled_fraction = 0.0
    assert len(dm.split_tiles("train")) == len(train)


def test_random_crops_inside_tile_and_reproducible(dataset: Path) -> None:
    tiles = read_catalog(dataset, "train").iloc[:6]

    def crops(seed: int) -> list[torch.Tensor]:
        ds = TileDataset(
            dataset, tiles, mean=[0] * 4, std=[1] * 4, crop_size=16, random_crop=True, num_classes=5, seed=seed
        )
        return [ds[i % 6]["image"] for i in range(24)]

    first, again, other = crops(0), crops(0), crops(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    offsets = set()
    for i, crop in enumerate(first):
        assert crop.shape == (4, 16, 16)
        full = torch.from_numpy(read_window(dataset, tiles.iloc[i % 6])[0].astype(np.float32))
        found = [(r, c) for r in range(17) for c in range(17) if torch.equal(full[:, r : r + 16, c : c + 16], crop)]
        assert found, "a crop is not a window of its tile"
        offsets.add(found[0])
    assert len(offsets) > 5  # crops move around
    # through the DataModule: the same seed gives the same batches
    batches = [
        next(iter(module(dataset, "classification", seed=s, crop_size=16).train_dataloader())) for s in (3, 3, 4)
    ]
    assert batches[0]["tile_id"] == batches[1]["tile_id"] != batches[2]["tile_id"]
    assert torch.equal(batches[0]["image"], batches[1]["image"])
    assert batches[0]["image"].shape[-2:] == (16, 16)


def test_eval_loaders_are_whole_tiles_in_order(dataset: Path) -> None:
    dm = module(dataset, "classification", crop_size=16)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[-2:] == (32, 32)
    assert batch["tile_id"] == list(dm.split_tiles("val")["tile_id"][:16])


def test_classification_targets_match_catalog(dataset: Path) -> None:
    multi = module(dataset, "classification").val_dataloader().dataset
    single = module(dataset, "classification", label_mode="single").val_dataloader().dataset
    tiles = read_catalog(dataset, "val")
    for i in range(len(tiles)):
        expected = np.zeros(5, np.float32)
        expected[np.asarray(tiles.iloc[i]["present_classes"], dtype=int)] = 1
        np.testing.assert_array_equal(multi[i]["label"].numpy(), expected)
        assert int(single[i]["label"]) == tiles.iloc[i]["dominant_class"]
    strict = module(dataset, "classification", present_threshold=0.25).val_dataloader().dataset
    counts = np.asarray(tiles.iloc[0]["class_counts"], dtype=float)
    np.testing.assert_array_equal(strict[0]["label"].numpy(), (counts / counts.sum() >= 0.25).astype(np.float32))


def aligned_batch(n: int = 8, size: int = 32) -> dict:
    """A batch whose mask can be read off the image: channel 0 = mask, 1/2 = row/col index."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 5, (n, size, size), generator=gen)
    mask[:, :4, :7] = IGNORE
    rows = torch.arange(size, dtype=torch.float32).view(1, -1, 1).expand(n, size, size)
    image = torch.stack([mask.float(), rows, rows.transpose(1, 2), torch.ones(n, size, size)], 1)
    return {"image": image, "mask": mask, "label": torch.zeros(n, 5), "tile_id": [str(i) for i in range(n)]}


def test_flips_and_rot90_move_image_and_mask_together(dataset: Path) -> None:
    dm = module(dataset)
    batch = aligned_batch()
    torch.manual_seed(0)
    out = dm.augment(batch)
    assert out["mask"].dtype == torch.int64
    # kornia turns the image by an affine warp (exact to 1e-5), the mask by nearest: the same pixels
    assert torch.equal(out["mask"], out["image"][:, 0].round().long())
    assert (out["mask"] == IGNORE).sum() == (batch["mask"] == IGNORE).sum()
    moved = [not torch.equal(out["image"][i, 1:3], batch["image"][i, 1:3]) for i in range(8)]
    assert sum(moved) >= 4  # most samples are transformed (identity has probability 1/8)
    assert out["tile_id"] == batch["tile_id"] and out["label"] is batch["label"]


def test_resized_crop_keeps_alignment_and_integer_mask(dataset: Path) -> None:
    dm = module(dataset, augment={"hflip": True, "resized_crop": True, "crop_scale": (0.3, 0.6)})
    batch = aligned_batch()
    size = 32
    cols = torch.arange(size).view(1, 1, -1).expand(8, size, size)
    batch["mask"] = cols.clone()  # mask = column index, image channel 2 = column index as float
    torch.manual_seed(1)
    out = dm.augment(batch)
    assert out["mask"].dtype == torch.int64
    assert not torch.equal(out["mask"], batch["mask"])
    # bilinear (image) and nearest (mask) sample nearly the same points: the mask's id is the nearest
    # pixel's (kornia's mask path samples within 0.15 px of the image's point, so within 0.65 px here)
    assert (out["image"][:, 2] - out["mask"].float()).abs().max() <= 0.75
    ignore = aligned_batch()
    out = dm.augment(ignore)
    assert set(out["mask"].unique().tolist()) <= set(ignore["mask"].unique().tolist())


def test_photometric_jitter_changes_image_only(dataset: Path) -> None:
    dm = module(dataset, augment={"hflip": False, "vflip": False, "rot90": False, "brightness": 0.2, "contrast": 0.2})
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    batch["image"][:, :, :2, :] = 0  # no-data rows
    out = dm.augment({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
    assert torch.equal(out["mask"], batch["mask"])
    assert not torch.allclose(out["image"], batch["image"])
    assert (out["image"][:, :, :2, :] == 0).all()
    raw_in = batch["image"] * dm.std.view(1, -1, 1, 1) + dm.mean.view(1, -1, 1, 1)
    raw_out = out["image"] * dm.std.view(1, -1, 1, 1) + dm.mean.view(1, -1, 1, 1)
    ratio = raw_out[:, :, 2:].mean((-2, -1)) / raw_in[:, :, 2:].mean((-2, -1))
    assert ((ratio > 0.79) & (ratio < 1.21)).all()


def test_augmentation_only_while_training(dataset: Path) -> None:
    dm = module(dataset)
    batch = aligned_batch()
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer attached
    for state in ({"training": False}, {"training": False, "validating": True}):
        dm.trainer = SimpleNamespace(**state)
        assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True, current_epoch=0)
    torch.manual_seed(0)
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)["mask"], batch["mask"])


def crafted_tiles(counts: list[list[int]], labelled: list[float] | None = None) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "class_counts": counts,
            "split": "train",
            "buffer": False,
            "present_classes": [[i for i, c in enumerate(row) if c] for row in counts],
            "labelled_fraction": labelled or [1.0] * len(counts),
        }
    )


def test_rare_class_sampling_weights() -> None:
    common = [[500, 500, 0]] * 18
    tiles = crafted_tiles([*common, [400, 500, 100], [500, 400, 100], [500, 500, 0]], [1.0] * 20 + [0.2])
    w = rare_class_weights(tiles, 3)
    assert w[18] == w[19] == pytest.approx(np.sqrt(21 / 2))  # class 2 in 2 of 21 tiles
    assert w[0] == pytest.approx(1.0) and w[20] == pytest.approx(0.2)  # mostly ignored: less
    # a threshold makes a trace of a class not count as 'present'
    assert rare_class_weights(tiles, 3, threshold=0.2)[18] == pytest.approx(1.0)


def test_rare_classes_sampler_on_dataset(dataset: Path) -> None:
    dm = module(dataset, sampling="rare_classes", max_train_tiles_per_epoch=40)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.weights is not None
    assert len(loader.sampler) == 40
    tiles = dm.split_tiles("train")
    w = rare_class_weights(tiles, 5)
    freq = np.array([[c in p for c in range(5)] for p in tiles["present_classes"]])
    rarest = freq.mean(0).argmin()
    assert w[freq[:, rarest]].mean() > w[~freq[:, rarest]].mean()
    uniform = module(dataset, max_train_tiles_per_epoch=40).train_dataloader()
    assert len(uniform.sampler) == 40 and len(uniform) == 40 // 16


def test_class_weights() -> None:
    tiles = crafted_tiles([[900, 100, 0, 0], [900, 0, 0, 100]])
    inv = class_weights_from_tiles(tiles, 4, "inverse_frequency")
    assert inv.dtype == torch.float32 and inv[2] == 0
    assert inv[1] == pytest.approx(2000 / (3 * 100)) and inv[0] == pytest.approx(2000 / (3 * 1800))
    med = class_weights_from_tiles(tiles, 4, "median_frequency")
    # freq: class0 1800/2000, class1 100/1000, class3 100/1000 -> median 0.1
    assert med.tolist() == pytest.approx([0.1 / 0.9, 1.0, 0.0, 1.0])


def test_datamodule_class_weights(dataset: Path) -> None:
    dm = module(dataset)
    totals = np.sum(list(dm.split_tiles("train")["class_counts"]), axis=0)
    weights = dm.class_weights()
    assert weights.shape == (5,) and (weights > 0).all()
    assert int(weights.argmax()) == int(totals.argmin()) and int(weights.argmin()) == int(totals.argmax())
    assert dm.class_weights("inverse_frequency").argmax() == totals.argmin()


def test_rasters_opened_once_per_process(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = rasterio.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    dm = module(dataset)
    for batch in dm.train_dataloader():
        assert batch["image"].shape[0] == 16
    assert len(dm.datasets["train"]) > 100
    assert sorted(Path(p).name for p in opened) == ["image.tif", "labels.tif"]
    ds = dm.datasets["train"]
    clone = pickle.loads(pickle.dumps(ds))  # handles are dropped, not pickled
    assert clone._handles == {} and len(ds._handles) == 2
    assert torch.equal(clone[3]["image"], ds[3]["image"])


def test_worker_processes_open_their_own_handles(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "opens.txt"
    real_open = rasterio.open

    def logging_open(path, *args, **kwargs):
        with log.open("a") as fh:
            fh.write(f"{os.getpid()} {Path(path).name}\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", logging_open)
    dm = module(dataset, num_workers=2)
    dm.setup("fit")
    dm.datasets["train"][0]  # the parent holds open handles before the workers fork
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    ids = [tid for _ in range(2) for batch in loader for tid in batch["tile_id"]]
    assert len(ids) == 2 * (len(dm.datasets["train"]) // 16 * 16)
    by_pid: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        pid, name = line.split()
        by_pid.setdefault(pid, []).append(name)
    workers = {pid: names for pid, names in by_pid.items() if pid != str(os.getpid())}
    assert len(workers) == 2 and all(sorted(n) == ["image.tif", "labels.tif"] for n in workers.values())


@pytest.mark.slow  # 5-15 s: the spawned worker imports torch and lightning
def test_spawned_workers_unpickle_the_dataset(dataset: Path) -> None:
    """Spawn (macOS/Windows, CUDA setups) pickles the dataset after it has open handles."""
    dm = module(dataset)
    dm.setup("validate")
    ds = dm.datasets["val"]
    ds[0]
    loader = DataLoader(ds, batch_size=32, num_workers=1, multiprocessing_context="spawn")
    ids = [tid for batch in loader for tid in batch["tile_id"]]
    assert ids == [t[0] for t in ds.tiles]


def test_loader_settings(dataset: Path) -> None:
    dm = module(dataset)
    loader = dm.val_dataloader()
    assert not loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert 0 <= auto_num_workers(cuda=False) <= 4 and auto_num_workers(cuda=True) <= 4
    assert auto_num_workers(cuda=True) >= auto_num_workers(cuda=False)
    raw = module(dataset, normalization="none")
    assert raw.mean.tolist() == [0] * 4 and raw.std.tolist() == [10000] * 4


def test_error_no_dataset(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="--dataset"):
        LandcoverDataModule(DataConfig())
    with pytest.raises(DatasetError, match=r"does not exist.*landcover ingest"):
        module(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no dataset.json.*landcover ingest"):
        module(tmp_path / "empty")


def test_error_no_normalization_statistics(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    info = json.loads((copy / "dataset.json").read_text())
    info["normalization"].update(mean=None, std=None, count=0, **{"from": "no train tiles"})
    (copy / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"no normalization statistics.*normalization=none"):
        module(copy)
    assert module(copy, normalization="none").std[0] == 10000


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_error_empty_split(dataset: Path, tmp_path: Path, split: str) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    catalog = gpd.read_parquet(copy / "catalog.parquet")
    catalog.loc[catalog["split"] == split, "split"] = "val" if split == "test" else "test"
    catalog.to_parquet(copy / "catalog.parquet")
    dm = module(copy)
    with pytest.raises(DatasetError, match=rf"the {split} split .* is empty.*split settings in ingest"):
        dm.test_dataloader() if split == "test" else dm.setup("fit")
    if split == "test":
        dm.setup("fit")  # training does not need a test split


def test_error_bad_crop_size(dataset: Path) -> None:
    with pytest.raises(ConfigError, match="larger than the dataset's 32-px tiles"):
        module(dataset, crop_size=64)
    with pytest.raises(ConfigError, match="not a multiple of 32"):
        module(dataset, crop_size=16)
    assert module(dataset, "classification", crop_size=16).train_crop == 16


def test_trainer_augments_training_batches_only(dataset: Path) -> None:
    import lightning.pytorch as pl

    dm = module(dataset, augment={"brightness": 0.1})
    dm.setup(None)
    index = {split: {t[0]: i for i, t in enumerate(dm.datasets[split].tiles)} for split in ("train", "val")}
    changed: dict[str, list[bool]] = {"train": [], "val": []}

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(4, 5, 1)

        def _record(self, batch: dict, split: str) -> torch.Tensor:
            for tid, image in zip(batch["tile_id"], batch["image"], strict=True):
                original = dm.datasets[split][index[split][tid]]["image"]
                changed[split].append(not torch.equal(image, original))
            return torch.nn.functional.cross_entropy(self.layer(batch["image"]), batch["mask"], ignore_index=IGNORE)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return self._record(batch, "train")

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            self._record(batch, "val")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert len(changed["train"]) == 32 and all(changed["train"])  # brightness jitter on every sample
    assert changed["val"] and not any(changed["val"])


def test_single_label_is_the_dominant_pixel_class_not_the_lowest_patch_label(dataset: Path) -> None:
    """Tiles with pixel labels and patch labels (BigEarthNet with reference maps): single = dominant class."""
    dm = module(dataset, "classification", label_mode="single")
    cat = dm.catalog.copy()
    cat["patch_labels"] = [np.arange(5, dtype=np.int32)] * len(cat)  # the lowest class id is always 0
    dm._catalog = cat
    val = dm.val_dataloader().dataset
    tiles = dm.split_tiles("val")
    assert (tiles["dominant_class"] != 0).any()
    assert [int(val[i]["label"]) for i in range(len(val))] == list(tiles["dominant_class"])


@pytest.mark.parametrize("weighted", [False, True])
def test_ranks_share_the_epoch_cap_disjointly_and_deterministically(weighted: bool) -> None:
    weights = np.linspace(0.1, 1.0, 50) if weighted else None

    def draws(rank: int, epoch: int = 0, seed: int = 0) -> list[int]:
        sampler = EpochSampler(50, 31, seed=seed, weights=weights, rank=rank, world_size=2)
        sampler.set_epoch(epoch)
        return list(sampler)

    ranks = [draws(0), draws(1)]
    assert [len(r) for r in ranks] == [16, 16]  # ceil(31 / 2) each
    assert ranks == [draws(0), draws(1)] and draws(0, epoch=1) != ranks[0] and draws(0, seed=1) != ranks[0]
    if not weighted:  # uniform: a permutation, so no tile twice within the epoch, on any rank
        assert len(set(ranks[0]) | set(ranks[1])) == 32
    # one process draws what the two ranks draw together
    single = EpochSampler(50, 32, seed=0, weights=weights)
    assert sorted(single) == sorted(ranks[0] + ranks[1])


def test_eval_shards_cover_every_tile_once() -> None:
    shards = [list(ShardSampler(25, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(25))
    assert list(ShardSampler(25)) == list(range(25))


def test_datamodule_draws_this_ranks_share(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import landcover.training.datamodule as datamodule

    monkeypatch.setattr(datamodule, "distributed_rank", lambda: (1, 2))
    dm = module(dataset, max_train_tiles_per_epoch=40, batch_size=4)
    assert len(dm.train_dataloader().sampler) == 20
    val = dm.val_dataloader()
    assert list(val.sampler) == list(range(1, len(dm.split_tiles("val")), 2))


def test_augmentation_draws_depend_on_seed_rank_and_epoch(dataset: Path, monkeypatch) -> None:
    """DDP ranks start from the same global seed (seed_everything): each rank must still augment its batches
    with draws of its own, keyed by (seed, rank, epoch) and reproducible."""
    import landcover.training.datamodule as datamodule

    def augmented(rank: int, epoch: int = 0, seed: int = 3) -> torch.Tensor:
        monkeypatch.setattr(datamodule, "distributed_rank", lambda: (rank, 2))
        dm = module(dataset, seed=seed, augment={"resized_crop": True, "brightness": 0.2})
        dm.trainer = SimpleNamespace(current_epoch=epoch, training=True)
        torch.manual_seed(0)  # the same global RNG state on every rank
        return dm.augment(aligned_batch())["image"]

    first = augmented(rank=0)
    assert torch.equal(first, augmented(rank=0))  # same seed, rank and epoch: the same draws
    assert not torch.equal(first, augmented(rank=1))
    assert not torch.equal(first, augmented(rank=0, epoch=1))
    assert not torch.equal(first, augmented(rank=0, seed=4))
