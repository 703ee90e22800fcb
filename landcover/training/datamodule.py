"""Training data from an ingested dataset: tile datasets, samplers, augmentation, a DataModule.

Samples are windows of ``scenes/<scene_id>/image.tif`` and ``labels.tif`` at the catalog's
row/col/height/width; splits come from the catalog column ``data.split_column`` (the spatial
split's buffer tiles are never used with it). Batches are dicts: ``image`` float32 (B, C, H, W) normalised as ``(x - mean) / std`` (no-data pixels = 0),
``mask`` int64 (B, H, W) with 255 = ignore, ``label`` (float32 multi-hot (B, K), or int64 (B,)
with 255 = no label) and ``tile_id`` (list of str). Augmentation runs on the device, on whole
batches, in :meth:`LandcoverDataModule.on_after_batch_transfer`, during training only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Sampler

from landcover.dataset.catalog import CATALOG_NAME, read_catalog
from landcover.dataset.catalog_stats import band_statistics
from landcover.dataset.splits import check_split_scheme
from landcover.errors import ConfigError, DatasetError
from landcover.models.input_transform import InputTransform, normalization_statistics
from landcover.training.augment import augment_batch
from landcover.training.config import DataConfig
from landcover.training.samplers import EpochSampler, ShardSampler, distributed_rank, rank_generator
from landcover.training.tiles import (
    Task,
    TileDataset,
    class_weights_from_tiles,
    collate_tiles,
    rare_class_weights,
    seed_worker,
)

MULTIPLE = 32
"""Segmentation inputs must have sides divisible by this (encoder output stride)."""


def auto_num_workers(cuda: bool | None = None) -> int:
    """Loader processes for ``num_workers='auto'``.

    With a GPU the CPU only feeds it: ``min(cpus - 1, 4)`` (one core stays with the training
    process; tiles are small, 4 workers keep up with one GPU). Without a GPU the model itself needs
    the cores, so ``min(cpus // 4, 4)``: 0 (load in the main process) below 4 cores, 1 from 4.
    ``cpus`` are the cores this process may use (affinity, e.g. a SLURM allocation).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return max(0, min(cpus - 1, 4)) if cuda else min(cpus // 4, 4)


class LandcoverDataModule(LightningDataModule):
    """Train/val/test loaders over an ingested dataset, with on-device training augmentation."""

    def __init__(
        self, cfg: DataConfig, task: Task = "segmentation", seed: int = 0, input_transform: InputTransform | None = None
    ) -> None:
        super().__init__()
        if task not in ("segmentation", "classification"):
            raise ConfigError(f"unknown task {task!r}; use segmentation or classification")
        self.cfg, self.task, self.seed = cfg, task, seed
        if cfg.dataset is None:
            raise ConfigError(
                "no dataset given: pass --dataset DIR (a folder made by `landcover "
                "ingest`) or set data.dataset in the config"
            )
        self.dataset_dir = Path(cfg.dataset)
        meta = self.dataset_dir / "dataset.json"
        if not self.dataset_dir.is_dir() or not meta.is_file() or not (self.dataset_dir / CATALOG_NAME).is_file():
            what = "does not exist" if not self.dataset_dir.is_dir() else "has no dataset.json or catalog.parquet"
            raise DatasetError(
                f"dataset folder {self.dataset_dir} {what}: it is not a finished "
                "ingested dataset; run `landcover ingest ... --out DIR` first and pass that DIR"
            )
        try:
            self.info: dict[str, Any] = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {meta} ({exc}); re-run `landcover ingest --overwrite`") from exc
        if cfg.split_column == "split":  # the spatial split must be the leak-free one
            check_split_scheme(self.info, self.dataset_dir)
        self.bands: list[str] = list(self.info["bands"])
        classes = self.info["nomenclature"]["classes"]
        self.class_names: list[str] = [c["name"] for c in classes]
        self.num_classes = len(classes)
        self.tile_size = int(self.info["tile_size"])
        self.ingest_present_threshold = float(self.info.get("config", {}).get("present_threshold", 0.01))
        self._catalog: gpd.GeoDataFrame | None = None
        self.statistics = self._statistics()  # of the train tiles of data.split_column
        where = meta if cfg.split_column == "split" else self.dataset_dir / CATALOG_NAME
        # exact values for the checkpoint; mode and source say where they come from
        self._mean, self._std, self.normalization_mode, self.normalization_source = normalization_statistics(
            cfg.normalization, self.bands, self.statistics, input_transform, where
        )
        self.mean = torch.tensor(self._mean, dtype=torch.float32)
        self.std = torch.tensor(self._std, dtype=torch.float32)
        self.eval_size, self.train_crop = self._sizes()
        self.num_workers = auto_num_workers() if cfg.num_workers == "auto" else int(cfg.num_workers)
        self.datasets: dict[str, TileDataset] = {}

    def _sizes(self) -> tuple[int | None, int | None]:
        t, crop = self.tile_size, self.cfg.crop_size
        if crop is not None and crop > t:
            raise ConfigError(
                f"data.crop_size = {crop} is larger than the dataset's {t}-px tiles; "
                f"choose crop_size <= {t} or leave it unset (whole tiles)"
            )
        if self.task == "classification":
            return None, crop
        if t < MULTIPLE:
            raise ConfigError(
                f"segmentation needs tiles of at least {MULTIPLE} px, the dataset has {t}-px "
                "tiles; re-run `landcover ingest --tile-size 256 --overwrite`"
            )
        if crop is not None and crop % MULTIPLE:
            raise ConfigError(
                f"data.crop_size = {crop} is not a multiple of {MULTIPLE} (needed for "
                f"segmentation); use e.g. {max(MULTIPLE, crop // MULTIPLE * MULTIPLE)}"
            )
        eval_size = t // MULTIPLE * MULTIPLE
        return (None if eval_size == t else eval_size), (crop or eval_size)

    def _statistics(self) -> dict[str, Any]:
        """Band statistics of the train tiles of ``data.split_column`` (``split_column``, ``from``).

        The spatial split's are dataset.json's; another column's are pooled from the catalog's
        per-tile band sums over all its train tiles.
        """
        column = self.cfg.split_column
        if column == "split":
            stats = dict(self.info.get("normalization") or {})
        else:
            cols = ["split", "buffer", column, "band_sum", "band_sumsq", "band_count"]
            table = pa.Table.from_pandas(pd.DataFrame(self.catalog[cols]), preserve_index=False)
            stats = band_statistics(table, self.bands, split_column=column)
        return {**stats, "split_column": column}

    def use_normalization(self, recorded: dict[str, Any]) -> None:
        """Normalise like a checkpoint's ``landcover.normalization`` (to score it on its own inputs).

        Checkpoints that do not record a ``mode`` (older ones) were trained with the config's own
        normalisation, which this DataModule already applies: they change nothing.
        """
        if "mode" not in recorded or (recorded["mean"], recorded["std"]) == (self._mean, self._std):
            return
        if list(recorded.get("bands") or self.bands) != self.bands or len(recorded["mean"]) != len(self.bands):
            raise DatasetError(
                f"the checkpoint was trained on bands {recorded.get('bands')}, {self.dataset_dir} "
                f"has {self.bands}; evaluate it on a dataset ingested with its bands"
            )
        self._mean, self._std = [float(v) for v in recorded["mean"]], [float(v) for v in recorded["std"]]
        self.mean = torch.tensor(self._mean, dtype=torch.float32)
        self.std = torch.tensor(self._std, dtype=torch.float32)
        self.normalization_mode = recorded["mode"]
        self.normalization_source = f"checkpoint ({recorded.get('from', 'recorded')})"
        self.datasets = {}  # rebuilt with the new statistics

    @property
    def normalization(self) -> dict[str, Any]:
        """What a checkpoint must record to normalise new scenes like the training data:
        ``(x - mean) / std`` per band, no-data pixels 0 (``mode`` and ``from`` say where they come from)."""
        return {
            "bands": self.bands,
            "mean": list(self._mean),
            "std": list(self._std),
            "mode": self.normalization_mode,
            "from": self.normalization_source,
            "nodata": 0,
            "scale": self.info.get("scale"),
            "split_column": self.cfg.split_column,
            "train_pixels": self.statistics.get("count"),
        }

    @property
    def catalog(self) -> gpd.GeoDataFrame:
        """The catalog tiles; buffer tiles belong to the spatial split and are left out with it only."""
        if self._catalog is None:
            catalog = read_catalog(self.dataset_dir, include_buffer=True)
            if self.cfg.split_column == "split":
                catalog = catalog[~catalog["buffer"].to_numpy(dtype=bool)].reset_index(drop=True)
            self._catalog = catalog
        return self._catalog

    def split_tiles(self, split: str) -> gpd.GeoDataFrame:
        """The catalog tiles a split uses (training: enough labelled pixels; eval: any label)."""
        tiles = self.catalog[self.catalog[self.cfg.split_column] == split]
        labelled = tiles["labelled_fraction"].to_numpy(dtype=np.float64)
        keep = labelled >= self.cfg.min_labelled_fraction if split == "train" else labelled > 0
        patch = np.array([p is not None and len(p) > 0 for p in tiles.get("patch_labels", [])], dtype=bool)
        if self._patch_targets and patch.any():  # multi-label targets from BigEarthNet patch labels
            keep |= patch
        elif (
            self.task == "classification" and self.cfg.label_mode == "single" and patch.any() and (labelled == 0).all()
        ):
            raise ConfigError(
                f"data.label_mode=single trains on the dominant class of each tile's pixel labels, "
                f"but the {split} tiles of {self.dataset_dir} have patch-level labels only "
                "(BigEarthNet without reference maps); set data.label_mode=multilabel"
            )
        used = tiles[keep].reset_index(drop=True)
        if used.empty:
            why = (
                f"{len(tiles)} {split} tiles, none with labelled_fraction >= "
                f"{self.cfg.min_labelled_fraction} (lower data.min_labelled_fraction)"
                if len(tiles)
                else f"no {split} tiles" + (" outside the buffer" if self.cfg.split_column == "split" else "")
            )
            raise DatasetError(
                f"the {split} split of {self.dataset_dir} is empty: {why}; change the split "
                "settings in ingest (split.fractions, split.seed, split.block_size_m) "
                "and re-run `landcover ingest --overwrite`, or ingest more scenes"
            )
        return used

    def _dataset(self, split: str) -> TileDataset:
        train = split == "train"
        return TileDataset(
            self.dataset_dir,
            self.split_tiles(split),
            mean=self.mean.numpy(),
            std=self.std.numpy(),
            crop_size=self.train_crop if train else self.eval_size,
            random_crop=train,
            task=self.task,
            label_mode=self.cfg.label_mode,
            num_classes=self.num_classes,
            present_threshold=self.cfg.present_threshold or self.ingest_present_threshold,
            seed=self.seed,
            patch_targets=self._patch_targets,
            rank=distributed_rank()[0],
            **(self._context() if train else {}),
        )

    def _context(self) -> dict[str, Any]:
        """The context windows of segmentation training (``data.context_tiles``) and the cells they may read."""
        n = self.cfg.context_tiles
        if n == 1 or self.task != "segmentation":
            return {}
        if self.train_crop != self.tile_size:
            raise ConfigError(
                f"data.context_tiles needs whole tiles that are a multiple of 32 px (these are {self.tile_size} px, "
                f"crop {self.train_crop}); unset data.crop_size or set data.context_tiles=1"
            )
        cat = self.catalog[self.catalog[self.cfg.split_column] == "train"]
        cells = frozenset(zip(cat["scene_id"].astype(str), cat["row"].astype(int), cat["col"].astype(int), strict=True))
        return {"context_tiles": n, "train_cells": cells}

    @property
    def _patch_targets(self) -> bool:
        """Whether BigEarthNet patch labels are the targets (multi-label classification, targets auto)."""
        return self.task == "classification" and self.cfg.targets == "auto" and self.cfg.label_mode == "multilabel"

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(
            stage or "", ("train", "val", "test")
        )  # None: all three
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)

    def class_weights(
        self, kind: Literal["inverse_frequency", "median_frequency"] = "median_frequency"
    ) -> torch.Tensor:
        """(K,) float32 loss weights from the pixel counts of the training tiles; 0 for classes
        with no training pixel (they cannot be learnt; 0 keeps the loss finite)."""
        return class_weights_from_tiles(self.split_tiles("train"), self.num_classes, kind)

    def _loader(
        self,
        split: str,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split],
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=collate_tiles,  # batches read into one array each (TileDataset.__getitems__)
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            generator=generator,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        """Random tiles, ``data.max_train_tiles_per_epoch`` per epoch over all ranks (each draws its
        share; the trainer must run with ``use_distributed_sampler=False``)."""
        if "train" not in self.datasets:
            self.setup("fit")
        dataset = self.datasets["train"]
        n = len(dataset) if self.cfg.max_train_tiles_per_epoch is None else self.cfg.max_train_tiles_per_epoch
        rank, world = distributed_rank()
        weights = None
        if self.cfg.sampling == "rare_classes":
            weights = rare_class_weights(self.split_tiles("train"), self.num_classes, self.cfg.present_threshold)
        else:
            n = min(n, len(dataset))
        sampler = EpochSampler(len(dataset), n, seed=self.seed, weights=weights, rank=rank, world_size=world)
        generator = torch.Generator().manual_seed(self.seed + rank)  # worker seeds
        # a last batch of 1 breaks BatchNorm; drop the remainder unless it would leave no batch
        return self._loader("train", sampler, generator, drop_last=len(sampler) >= self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        """Every tile of the split exactly once over all ranks: rank r scores tiles r, r + world, ..."""
        if split not in self.datasets:
            self.setup({"val": "validate", "test": "test"}[split])
        rank, world = distributed_rank()
        return self._loader(split, ShardSampler(len(self.datasets[split]), rank, world))

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if self.trainer is not None and self.trainer.training:
            batch = self.augment(batch)
        return batch

    def augment_generator(self) -> torch.Generator:
        """The generator of this rank's augmentation draws in the current epoch: keyed by (seed, rank, epoch),
        not the global RNG, which ``seed_everything`` sets alike on every DDP rank; it continues through the
        epoch's batches."""
        key = (self.seed, distributed_rank()[0], self.trainer.current_epoch if self.trainer is not None else 0)
        if getattr(self, "_augment_key", None) != key:
            self._augment_key, self._augment_rng = key, rank_generator(*key)
        return self._augment_rng

    def augment(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random training augmentation of a batch on its device (:func:`landcover.training.augment.augment_batch`:
        kornia geometry on image and mask, reflectance jitter), drawing from ``generator``, by default
        :meth:`augment_generator`."""
        return augment_batch(batch, self.cfg.augment, self.mean, self.std, generator or self.augment_generator())
