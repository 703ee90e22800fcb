"""Does the data pipeline starve the model? DataModule tiles/s vs U-Net forward+backward rate.

Builds a synthetic 12-band ingested dataset (a 2048 x 2048 scene, 256-px tiles, via the real
``landcover ingest``), then measures in one run:

* the DataModule: training batches per second through ``train_dataloader()`` (windowed reads,
  normalisation, random crops) with 0 and 1 worker processes, plus the on-device augmentation;
* the model: U-Net/ResNet-18 forward + backward + optimiser step per second on the same batch shape.

The loader keeps up when its tiles/s exceed the model's. Usage (about 2 minutes here):

    .venv/bin/python scripts/bench_train.py [--size 2048] [--batch-size 8] [--batches 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.training.datamodule import DataConfig, LandcoverDataModule

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def make_dataset(root: Path, size: int) -> Path:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, (size // 64, size // 64)).repeat(64, 0).repeat(64, 1)
    image = (rng.normal(1500, 300, (len(BANDS), size, size)) + classes * 400).clip(1, 10000).astype(np.uint16)
    transform = from_origin(500_000, 5_300_000, 10, 10)
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", transform=transform, tiled=True)
    with rasterio.open(root / "scene.tif", "w", count=len(BANDS), dtype="uint16", **profile) as dst:
        dst.write(image)
        for i, band in enumerate(BANDS, 1):
            dst.set_band_description(i, band)
    codes = np.array([111, 211, 311, 411, 512], np.uint16)[classes]
    with rasterio.open(root / "clc.tif", "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(codes, 1)
    cfg = IngestConfig(
        nomenclature="level1", tile_size=256, overviews=False, split={"by_scene": True, "fractions": (1.0, 0.0, 0.0)}
    )
    ingest([root / "scene.tif"], root / "ds", labels=root / "clc.tif", config=cfg)
    return root / "ds"


def loader_rate(dataset: Path, batch_size: int, batches: int, workers: int) -> float:
    dm = LandcoverDataModule(
        DataConfig(dataset=dataset, batch_size=batch_size, num_workers=workers, crop_size=224), task="segmentation"
    )
    dm.datasets["train"] = dm._dataset("train")  # a train split only: no validation needed here
    loader = dm.train_dataloader()
    n, start = 0, None
    while n < batches:
        for batch in loader:
            if start is None:  # the first batch pays for worker start-up
                start = time.perf_counter()
                continue
            batch = dm.augment(batch)
            n += 1
            if n >= batches:
                break
    return n * batch_size / (time.perf_counter() - start)


def model_rate(batch_size: int, steps: int) -> float:
    model, _ = build_model(ModelConfig(encoder="resnet18"), BANDS, 5)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch_size, len(BANDS), 224, 224)
    y = torch.randint(0, 5, (batch_size, 224, 224))
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def trainer_rate(dataset: Path, batch_size: int, steps: int) -> dict[str, float]:
    """Tiles/s of Trainer.fit with our SegmentationTask vs torchgeo's, same U-Net, same batches."""
    import lightning.pytorch as pl
    from torchgeo.trainers import SemanticSegmentationTask

    from landcover.training.task import SegmentationTask

    rates = {}
    for name in ("landcover", "torchgeo"):
        dm = LandcoverDataModule(
            DataConfig(dataset=dataset, batch_size=batch_size, num_workers=1, crop_size=224), task="segmentation"
        )
        dm.setup = lambda stage=None, dm=dm: dm.datasets.setdefault("train", dm._dataset("train"))
        if name == "landcover":
            task = SegmentationTask(
                model={"encoder": "resnet18"},
                optim={},
                loss={},
                bands=BANDS,
                class_names=[str(i) for i in range(5)],
                meta={},
            )
        else:
            task = SemanticSegmentationTask(
                model="unet", backbone="resnet18", weights=None, in_channels=len(BANDS), num_classes=5, ignore_index=255
            )
        # one validation batch (drawn from the train tiles) so torchgeo's plateau scheduler has val_loss
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=steps + 1,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        start = time.perf_counter()
        trainer.fit(task, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.train_dataloader())
        rates[name] = (steps + 1) * batch_size / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), args.size)
        rates = {w: loader_rate(dataset, args.batch_size, args.batches, w) for w in (0, 1)}
        model = model_rate(args.batch_size, max(3, args.batches // 3))
        trainers = trainer_rate(dataset, args.batch_size, max(3, args.batches // 3))
    print(f"threads: torch {torch.get_num_threads()}; batch {args.batch_size} x 12 x 224 x 224")
    for workers, rate in rates.items():
        print(f"DataModule, {workers} worker(s): {rate:.1f} tiles/s ({rate / model:.1f}x the model)")
    print(f"U-Net/ResNet-18 forward+backward+step: {model:.1f} tiles/s")
    for name, rate in trainers.items():
        print(f"Trainer.fit with the {name} task (same U-Net, same loader): {rate:.1f} tiles/s")


if __name__ == "__main__":
    main()
