"""Tiles as samples: windowed reads of an ingested dataset's stacks ({"image": float32 CxHxW, "mask": int64
HxW}, normalised, files opened once per worker; a DataLoader batch is read straight into one array per key,
see :meth:`TileDataset.__getitems__` and :func:`collate_tiles`), and the per-class weights drawn from the
catalog's pixel counts (loss weights, rare-class sampling). No Lightning: the data module builds on these."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset, default_collate

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
        self._buffers = Buffers()  # per process, like the handles
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.tiles)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"], state["_rng"], state["_buffers"] = {}, None, Buffers()
        return state

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: never share GDAL handles or RNG state with the parent
            self._handles, self._rng, self._buffers, self._pid = {}, None, Buffers(), os.getpid()

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
        return self._sample(index, self.window(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of samples read into one array per key (the DataLoader calls this with a batch's indices).

        The samples equal ``[self[i] for i in indices]`` (random crops draw in the same order) and are views
        of a :class:`TileBatch`, whose ``batch`` :func:`collate_tiles` hands on without copying: the default
        collation's ``torch.stack`` of the samples into fresh torch memory cost more than the reads."""
        self._check_process()
        windows = [self.window(i) for i in indices]
        shapes = {(int(w.height), int(w.width)) for w in windows}
        if len(shapes) != 1:  # windows of different sizes: no batch array (default_collate says why)
            return [self._sample(i, w) for i, w in zip(indices, windows, strict=True)]
        (height, width), n = shapes.pop(), len(indices)
        images = self._buffers.batch_tensor((n, len(self.mean), height, width), torch.float32)
        masks = self._buffers.batch_tensor((n, height, width), torch.int64)
        image_np, mask_np = images.numpy(), masks.numpy()
        pairs = enumerate(zip(indices, windows, strict=True))
        targets = [self._fill(i, w, image_np[k], mask_np[k]) for k, (i, w) in pairs]
        return TileBatch(
            {
                "image": images,
                "mask": masks,
                "label": torch.from_numpy(np.stack(targets)),
                "tile_id": [self.tiles[i][0] for i in indices],
            }
        )

    def _sample(self, index: int, window: Window) -> dict[str, Any]:
        image = np.empty((len(self.mean), int(window.height), int(window.width)), np.float32)
        mask = np.empty(image.shape[1:], np.int64)
        target = self._fill(index, window, image, mask)
        tile_id = self.tiles[index][0]
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "label": torch.from_numpy(target),
                "tile_id": tile_id}  # fmt: skip

    def _fill(self, index: int, window: Window, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Read sample ``index``'s ``window`` into ``image`` (C, H, W float32: ``(x - mean) / std``, no data 0)
        and ``mask`` (H, W int64, no data IGNORE) in place; return its target (see :meth:`_target`)."""
        scene_id = self.tiles[index][1]
        if self.context_tiles > 1:
            raw, labels = self.context_sample(index, window)
        else:  # into reused arrays: no allocation per read
            src, lab = self._open(scene_id, "image.tif"), self._open(scene_id, "labels.tif")
            raw = src.read(window=window, out=self._buffers.scratch("raw", (src.count, *mask.shape), src.dtypes[0]))
            labels = lab.read(window=window, out=self._buffers.scratch("labels", (1, *mask.shape), lab.dtypes[0]))[0]
        # (raw.astype(float32) - mean) / std, the same float32 arithmetic a few bands at a time through a small
        # array that stays in the CPU cache (768 KiB): one pass over the batch memory instead of three
        step = max(1, 3 * 2**18 // image[0].nbytes)
        bands = self._buffers.scratch("bands", (step, *mask.shape), np.float32)
        for c in range(0, len(raw), step):
            part = bands[: len(raw[c : c + step])]
            np.copyto(part, raw[c : c + step])  # the cast of raw.astype(float32)
            np.subtract(part, self.mean[c : c + step], out=part)
            np.divide(part, self.std[c : c + step], out=image[c : c + step])
        mask[...] = labels
        if not raw[0].all():  # no data (0 in every band) needs a 0 in the first band: look closer
            nodata = ~raw.any(axis=0)
            image[:, nodata] = 0.0
            mask[nodata] = IGNORE
        return self._target(mask, self.patch_labels[index])

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

    def _target(self, mask: np.ndarray, patch: np.ndarray | None = None) -> np.ndarray:
        """The classification target: float32 (K,) multi-hot, or an int64 scalar (``single``; IGNORE if none)."""
        if patch is not None and self.label_mode == "multilabel":  # BigEarthNet patch labels
            target = np.zeros(self.num_classes, np.float32)
            target[patch] = 1.0
            return target
        # IGNORE (255) and any other value >= K fall outside the first K bins (class ids are < 255)
        counts = np.bincount(mask.ravel(), minlength=IGNORE + 1)[: self.num_classes]
        total = counts.sum()
        if self.label_mode == "single":
            return np.array(int(np.argmax(counts)) if total else IGNORE, dtype=np.int64)
        present = (counts / max(total, 1) >= self.present_threshold) & (counts > 0)
        return present.astype(np.float32)


class Buffers:
    """Arrays a process reuses: scratch arrays by name, and batch arrays given out again once nothing refers to them.

    A batch array handed out (as the memory of a batch's tensors) stays in the pool; it is given out again
    only when the pool holds the last reference to it, i.e. no tensor, view or copy-on-pickle of the batch is
    alive (``torch.from_numpy`` keeps the array referenced while its tensor's storage lives). Fresh memory for
    each batch (50 MB for 16 x 12 x 256 x 256 float32) costs more in page faults than filling it.
    """

    POOL = 6  # arrays kept per process: image and mask of 3 batches (a consumer holding more gets fresh ones)

    def __init__(self) -> None:
        self._scratch: dict[str, np.ndarray] = {}
        self._pool: list[np.ndarray] = [np.empty(0)]
        self._free_refs = self._refs(0)  # an array only the pool refers to, counted as the check counts
        self._pool = []

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._pool[i])

    def scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The array ``name`` of ``shape`` and ``dtype`` (contents undefined), made anew only when those change."""
        arr = self._scratch.get(name)
        if arr is None or arr.shape != shape or arr.dtype != np.dtype(dtype):
            arr = self._scratch[name] = np.empty(shape, dtype)
        return arr

    def batch_tensor(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape`` and ``dtype`` (contents undefined) that nothing else uses: in a DataLoader worker
        a new one in shared memory (where ``default_collate`` puts its batches: sending it copies nothing), else
        the memory of a pooled array."""
        if torch.utils.data.get_worker_info() is not None:
            return _shared_tensor(shape, dtype)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        for i in range(len(self._pool)):  # no local name (nor enumerate's tuple) may refer to a pooled array
            if self._pool[i].shape == shape and self._pool[i].dtype == np_dtype and self._refs(i) == self._free_refs:
                return torch.from_numpy(self._pool[i])  # more references: a batch, tensor or view of it is alive
        arr = np.empty(shape, np_dtype)  # numpy asks the kernel for huge pages for it: few page faults
        self._pool = [*self._pool, arr][-self.POOL :]
        return torch.from_numpy(arr)


def _shared_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory, allocated as torch's ``default_collate`` does in workers."""
    numel = int(np.prod(shape))
    try:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
        return torch.empty(0, dtype=dtype).new(storage).view(shape)
    except AttributeError:  # a torch without these (internal) methods: the public way, which copies once
        return torch.empty(shape, dtype=dtype).share_memory_()


class TileBatch(list):
    """The samples of one batch as views of ``batch``, their keys already stacked (see :func:`collate_tiles`)."""

    def __init__(self, batch: dict[str, Any]) -> None:
        keys = ("image", "mask", "label")
        super().__init__({**{k: batch[k][i] for k in keys}, "tile_id": t} for i, t in enumerate(batch["tile_id"]))
        self.batch = batch


def collate_tiles(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """collate_fn for :class:`TileDataset`: a :class:`TileBatch`'s ready batch as it is, else ``default_collate``."""
    return samples.batch if isinstance(samples, TileBatch) else default_collate(samples)


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed Python's and NumPy's global RNGs from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
