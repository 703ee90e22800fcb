"""Segmentation training on context windows of n x n tiles that never read another split."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from landcover.nomenclature import IGNORE
from landcover.training.config import DataConfig
from landcover.training.datamodule import LandcoverDataModule
from tests.learnable import make_learnable_dataset


@pytest.fixture(scope="module")
def train_tiles(tmp_path_factory: pytest.TempPathFactory):
    dataset = make_learnable_dataset(tmp_path_factory.mktemp("context"))
    data = LandcoverDataModule(DataConfig(dataset=dataset, context_tiles=3, num_workers=0), seed=3)
    data.setup("fit")
    return dataset, data


def test_context_windows_read_only_train_tiles(train_tiles) -> None:
    dataset, data = train_tiles
    train = data.datasets["train"]
    split_of = {(r.scene_id, r.row, r.col): r.split for r in data.catalog.itertuples()}  # buffer tiles left out
    scene = next((dataset / "scenes").iterdir())
    with rasterio.open(scene / "labels.tif") as src:
        labels = src.read(1)
    seen_other = seen_train = 0
    for i in range(0, len(train), 11):
        _, _, row, col, h, w = train.tiles[i]
        for dr in range(3):
            for dc in range(3):
                window = Window(col - dc * w, row - dr * h, 3 * w, 3 * h)
                raw, mask = train.context_sample(i, window)
                assert raw.shape[1:] == mask.shape == (96, 96)
                for a in range(3):
                    for b in range(3):
                        r, c = row - dr * h + a * h, col - dc * w + b * w
                        cell = (slice(a * h, (a + 1) * h), slice(b * w, (b + 1) * w))
                        if split_of.get((scene.name, r, c)) == "train":
                            assert (mask[cell] == labels[r : r + h, c : c + w]).all()
                            seen_train += 1
                        else:  # buffer, val, test or outside the scene: nothing of it is read
                            assert (mask[cell] == IGNORE).all() and (raw[:, cell[0], cell[1]] == 0).all()
                            seen_other += 1
    assert seen_train and seen_other


def test_context_windows_hold_their_tile_at_random_placements(train_tiles) -> None:
    _, data = train_tiles
    train = data.datasets["train"]
    _, _, row, col, h, w = train.tiles[5]
    placements = set()
    for _ in range(60):
        win = train.window(5)
        assert (win.width, win.height) == (96, 96)
        assert win.row_off <= row < win.row_off + 96 - h + 1 and win.col_off <= col < win.col_off + 96 - w + 1
        placements.add((row - win.row_off, col - win.col_off))
    assert len(placements) == 9
    sample = train[5]
    assert sample["image"].shape[1:] == (96, 96) and sample["mask"].shape == (96, 96)
    data.setup("validate")  # evaluation scores the tiles themselves
    assert data.datasets["val"][0]["image"].shape[1:] == (32, 32)
    assert np.isfinite(sample["image"].numpy()).all()
