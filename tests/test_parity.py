"""Train -> predict parity on a real ingested dataset (the embedded Sentinel-2 L1C clip of T33UUU).

The logits `landcover predict` computes for a window (its own reader, band selection, normalisation
and model rebuilt without Lightning) must equal the training task's logits for the same pixels as the
training DataModule serves them, to 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import landcover.inference.predict
import landcover.training.train
from landcover.config import config_dir, load_config
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.inference.checkpoint import load_checkpoint
from landcover.inference.feeder import Feeder
from landcover.inference.predict import predict_scene
from landcover.nomenclature import catalog_dir
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.task import task_class
from landcover.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "landcover" / "sample_data" / "T33UUU"
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]  # 10 m and resampled 20 m bands, in a non-ESA order below


class SpyDataModule(LandcoverDataModule):
    """The DataModule `train` builds, kept for the test."""

    made: ClassVar[list[LandcoverDataModule]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        SpyDataModule.made.append(self)


class Recorder(nn.Module):
    """Wraps predict's model and keeps the logits of every window it runs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.logits, self.inputs = model, [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        self.inputs.extend(x.detach().float().cpu())
        self.logits.extend(y.detach().float().cpu())
        return y


class RecordingFeeder(Feeder):
    """Predict's Feeder, noting which window (row k, column j) each batch entry is, in model order."""

    order: ClassVar[list[tuple[int, int]]] = []

    def __call__(self, k: int):
        row = super().__call__(k)
        RecordingFeeder.order.extend((k, j) for j in row.todo)  # batches go in this order
        return row


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, LandcoverDataModule]:
    root = tmp_path_factory.mktemp("parity")
    ingest_cfg = load_config(
        IngestConfig,
        config_dir() / "sample_ingest.yaml",
        [f"labels.mapping={catalog_dir() / 'osm_fclass_to_clc_level1.csv'}"],
        bands=[BANDS[i] for i in (4, 0, 2, 1, 5, 3)],
    )
    ingest([CLIP / "IMG_DATA"], root / "dataset", labels=CLIP / "osm_landuse_water.gpkg", config=ingest_cfg)
    cfg = load_config(
        TrainConfig,
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.dataset={root / 'dataset'}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "data.batch_size=4",
        ],
    )
    SpyDataModule.made.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(landcover.training.train, "LandcoverDataModule", SpyDataModule)
        train(cfg, root / "run")
    return root, SpyDataModule.made[0]


@pytest.mark.parametrize("source", ["product", "ingested"])
def test_predict_logits_equal_the_training_task_logits(run, source: str, tmp_path) -> None:
    root, data = run
    ckpt = root / "run" / "checkpoints" / "best.ckpt"
    scene = next((root / "dataset" / "scenes").iterdir())
    # the training side: the task as Lightning reloads it, fed by the training DataModule
    task = task_class("segmentation").load_from_checkpoint(ckpt, map_location="cpu").eval()
    data.setup("validate")
    dataset = data.datasets["val"]
    picks = [0, len(dataset) // 2, len(dataset) - 1]
    samples = [dataset[i] for i in picks]
    images = torch.stack([s["image"] for s in samples])
    with torch.no_grad():
        expected = task(images)
    # the predict side: predict_scene on the JP2 product (or its ingested stack), windows = tiles
    lm = load_checkpoint(ckpt)
    recorder = Recorder(lm.model)
    lm.model = recorder
    RecordingFeeder.order.clear()
    t = lm.tile_size
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(landcover.inference.predict, "Feeder", RecordingFeeder)
        predict_scene(
            lm,
            CLIP / "IMG_DATA" if source == "product" else scene / "image.tif",
            tmp_path / "map.tif",
            tile=t,  # windows = tiles
            overlap=0,
            batch_size=16,
            device="cpu",
            quicklook=False,
        )
    assert len(recorder.logits) == len(RecordingFeeder.order)
    window = dict(zip(RecordingFeeder.order, zip(recorder.inputs, recorder.logits, strict=True), strict=True))
    for i, image, got in zip(picks, images, expected, strict=True):
        _, _, row, col, height, width = dataset.tiles[i]
        assert (height, width) == (t, t) and row % t == 0 and col % t == 0
        x, logits = window[(row // t, col // t)]
        torch.testing.assert_close(x, image, rtol=0, atol=1e-6)  # the same normalised input
        assert logits.shape == got.shape
        # the same logits up to float32 rounding: predict runs the CPU convolutions channels-last (other kernels,
        # other summation order: differences of a few 1e-4 on logits of order 10)
        torch.testing.assert_close(logits, got, rtol=0, atol=1e-3)
