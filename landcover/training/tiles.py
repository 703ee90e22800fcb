"""Tiles as samples: windowed reads of an ingested dataset's stacks ({"image": float32 CxHxW, "mask": int64
HxW}, normalised, files opened once per worker), and the per-class weights drawn from the catalog's pixel
counts (loss weights, rare-class sampling). No Lightning: the data module builds on these."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset

from landcover.errors import ConfigError, DatasetError
from landcover.nomenclature import IGNORE

Task = Literal["segmentation", "classification"]


def present_matrix(tiles: gpd.GeoDataFrame, num_classes: int, threshold: float | None) -> np.ndarray:
    """(N, K) bool: class present in tile (share of labelled pixels >= threshold, or the catalog's)."""
    out = np.zeros((len(tiles), num_classes), bool)
    if threshold is None:
        for i, present in enumerate(tiles["present_classes"]):
            out[i, np.asarray(present, dtype=np.int64)] = True
        return out
    counts = np.array([np.asarray(c, np.float64) for c in tiles["class_counts"]]).reshape(len(tiles), -1)
    return (counts > 0) & (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) >= threshold)


def rare_class_weights(tiles: gpd.GeoDataFrame, num_classes: int, threshold: float | None = None) -> np.ndarray:
    """Sampling weight per tile: repeat-factor sampling (Gupta et al., LVIS 2019) x labelled share.

    ``f_c`` = share of the tiles where class c is present, ``r_c = sqrt(max f / f_c)`` (1 for the
    most widespread class, 10 for one present in 100x fewer tiles); a tile weighs the largest
    ``r_c`` of its classes times its labelled fraction, so mostly-ignored tiles are drawn less.
    """
    present = present_matrix(tiles, num_classes, threshold)
    freq, rarity = present.mean(axis=0) if len(tiles) else np.zeros(num_classes), np.zeros(num_classes)
    seen = freq > 0
    rarity[seen] = np.sqrt(freq.max(initial=0.0) / freq[seen])
    tile_r = (present * rarity).max(axis=1, initial=0.0)
    return tile_r * tiles["labelled_fraction"].to_numpy(dtype=np.float64)


def class_weights_from_tiles(
    tiles: gpd.GeoDataFrame, num_classes: int, kind: Literal["inverse_frequency", "median_frequency"]
) -> torch.Tensor:
    """Loss weights per class from the tiles' pixel counts; classes without pixels weigh 0.

    inverse_frequency: ``total / (n_seen * count_c)`` (the count-weighted mean weight is 1).
    median_frequency (Eigen & Fergus 2015): ``freq_c = count_c / labelled pixels of the tiles
    holding c``, weight ``median(freq) / freq_c`` over the classes seen.
    """
    per_tile = np.array([np.asarray(c, np.float64) for c in tiles["class_counts"]]).reshape(-1, num_classes)
    counts, weights = per_tile.sum(axis=0), np.zeros(num_classes)
    seen = counts > 0
    if kind == "inverse_frequency":
        weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    elif kind == "median_frequency":
        holding = ((per_tile > 0) * per_tile.sum(axis=1, keepdims=True)).sum(axis=0)
        freq = counts / np.maximum(holding, 1)
        weights[seen] = np.median(freq[seen]) / freq[seen]
    else:
        raise ConfigError(f"unknown class weight kind {kind!r}; use inverse_frequency or median_frequency")
    return torch.as_tensor(weights, dtype=torch.float32)


class TileDataset(Dataset):
    """Tiles of an ingested dataset as normalised tensors (see the module docstring for keys).

    Rasters are opened lazily once per process and cached; pickling (spawned DataLoader
    workers) drops the handles, and a forked worker notices the new pid and reopens its own.
    ``crop_size`` with ``random_crop=False`` takes the centre; ``rank`` (the distributed rank) gives
    each training process random crops of its own. Classification targets are computed from the
    (cropped) label window with ``present_threshold`` (the ingest threshold reproduces the catalog's
    present_classes); ``single`` is the dominant class of the window's pixel labels (patch labels
    are not used), 255 if none.
    """

    def __init__(
        self,
        dataset_dir: Path,
        tiles: gpd.GeoDataFrame,
        *,
        mean: Any,
        std: Any,
        crop_size: int | None = None,
        random_crop: bool = False,
        task: Task = "segmentation",
        label_mode: Literal["multilabel", "single"] = "multilabel",
        num_classes: int,
        present_threshold: float = 0.01,
        seed: int = 0,
        patch_targets: bool = True,
        rank: int = 0,
        context_tiles: int = 1,
        train_cells: frozenset[tuple[str, int, int]] | None = None,
    ) -> None:
        self.dataset_dir = Path(dataset_dir)
        cols = ["tile_id", "scene_id", "row", "col", "height", "width"]
        self.tiles = [tuple(r) for r in tiles[cols].itertuples(index=False)]
        # BigEarthNet patch labels (class ids), used as classification targets when present
        patch = tiles["patch_labels"] if patch_targets and "patch_labels" in tiles else [None] * len(tiles)
        self.patch_labels = [None if p is None or len(p) == 0 else np.asarray(p, np.int64) for p in patch]
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self.crop_size, self.random_crop, self.task = crop_size, random_crop, task
        self.label_mode, self.num_classes = label_mode, num_classes
        self.present_threshold, self.seed, self.rank = present_threshold, seed, rank
        self.context_tiles, self.train_cells = context_tiles, train_cells
        self._handles: dict[str, Any] = {}  # per process, see _check_process
        self._rng: np.random.Generator | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"], state["_rng"] = {}, None
        return state

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: never share GDAL handles or RNG state with the parent
            self._handles, self._rng, self._pid = {}, None, os.getpid()

    def _open(self, scene_id: str, name: str) -> Any:
        key = f"{scene_id}/{name}"
        if key not in self._handles:
            path = self.dataset_dir / "scenes" / scene_id / name
            try:
                self._handles[key] = rasterio.open(path)
            except rasterio.RasterioIOError as exc:
                raise DatasetError(f"cannot open {path} ({exc}); re-run `landcover ingest`") from exc
        return self._handles[key]

    @property
    def rng(self) -> np.random.Generator:
        self._check_process()
        if self._rng is None:
            info = torch.utils.data.get_worker_info()
            worker_seed = 0 if info is None else info.seed % 2**63
            self._rng = np.random.default_rng([self.seed, self.rank, worker_seed])
        return self._rng

    def window(self, index: int) -> Window:
        """The raster window sample ``index`` reads (random for random crops)."""
        _, _, row, col, height, width = self.tiles[index]
        n = self.context_tiles
        if n > 1:  # a block of n x n tiles holding this one, at a random placement
            dr, dc = (int(v) for v in self.rng.integers(0, n, 2)) if self.random_crop else (n // 2, n // 2)
            return Window(col - dc * width, row - dr * height, n * width, n * height)
        ch = cw = self.crop_size
        if ch is None or (ch >= height and ch >= width):
            return Window(col, row, width, height)
        ch, cw = min(ch, height), min(cw, width)
        if self.random_crop:
            dr, dc = int(self.rng.integers(0, height - ch + 1)), int(self.rng.integers(0, width - cw + 1))
        else:
            dr, dc = (height - ch) // 2, (width - cw) // 2
        return Window(col + dc, row + dr, cw, ch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self._check_process()
        tile_id, scene_id = self.tiles[index][:2]
        window = self.window(index)
        if self.context_tiles > 1:
            raw, mask = self.context_sample(index, window)
        else:
            raw = self._open(scene_id, "image.tif").read(window=window)
            mask = self._open(scene_id, "labels.tif").read(1, window=window).astype(np.int64)
        nodata = ~raw.any(axis=0)
        image = (raw.astype(np.float32) - self.mean) / self.std
        image[:, nodata] = 0.0
        mask[nodata] = IGNORE
        return {
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask),
            "label": self._label(mask, self.patch_labels[index]),
            "tile_id": tile_id,
        }

    def context_sample(self, index: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Image and labels of a context window: no data (0, IGNORE) outside the split's train tiles."""
        _, scene_id, _, _, height, width = self.tiles[index]
        raw = self._open(scene_id, "image.tif").read(window=window, boundless=True, fill_value=0)
        mask = self._open(scene_id, "labels.tif").read(1, window=window, boundless=True, fill_value=IGNORE)
        mask = mask.astype(np.int64)
        r0, c0 = int(window.row_off), int(window.col_off)
        for i in range(self.context_tiles):
            for j in range(self.context_tiles):
                if (scene_id, r0 + i * height, c0 + j * width) not in (self.train_cells or ()):
                    cell = (slice(i * height, (i + 1) * height), slice(j * width, (j + 1) * width))
                    raw[:, cell[0], cell[1]] = 0
                    mask[cell] = IGNORE
        return raw, mask

    def _label(self, mask: np.ndarray, patch: np.ndarray | None = None) -> torch.Tensor:
        if patch is not None and self.label_mode == "multilabel":  # BigEarthNet patch labels
            target = np.zeros(self.num_classes, np.float32)
            target[patch] = 1.0
            return torch.from_numpy(target)
        counts = np.bincount(mask[mask != IGNORE].ravel(), minlength=self.num_classes)[: self.num_classes]
        total = counts.sum()
        if self.label_mode == "single":
            return torch.tensor(int(np.argmax(counts)) if total else IGNORE, dtype=torch.int64)
        present = (counts / max(total, 1) >= self.present_threshold) & (counts > 0)
        return torch.from_numpy(present.astype(np.float32))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed Python's and NumPy's global RNGs from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
