"""landcover train on a synthetic learnable dataset: quality, early stopping, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from landcover.errors import ConfigError
from landcover.evaluation.confusion import scores_from_confusion
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.train import evaluate_checkpoint, train
from tests.helpers import CLI, tiny_config, train_command
from tests.learnable import make_learnable_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_learnable_dataset(tmp_path_factory.mktemp("learnable"))


tiny = tiny_config


@pytest.fixture(scope="module")
def segmentation_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    metrics = train(tiny(dataset), out)
    return out, metrics


def test_segmentation_learns_a_learnable_dataset(segmentation_run):
    out, metrics = segmentation_run
    assert metrics.metrics["val/miou"] >= 0.9, metrics
    assert len(metrics.metrics["per_class_iou"]) == 5 and len(metrics.metrics["confusion_matrix"]) == 5
    # no path of the user's machine in the run's record: the checkpoint is named inside the run folder
    assert metrics.best_checkpoint == "checkpoints/best.ckpt"
    assert (out / "metrics.json").read_text() == metrics.to_json()  # the result is what the run wrote
    assert str(out.parent) not in (out / "metrics.json").read_text()
    for name in (
        "config.yaml",
        "dataset.json",
        "metrics.json",
        "curves.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (out / name).exists(), name
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents*"))


def test_checkpoint_is_self_contained_and_reproduces_validation(segmentation_run, dataset):
    out, _ = segmentation_run
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    meta = ckpt["landcover"]
    info = json.loads((dataset / "dataset.json").read_text())
    assert meta["bands"] == info["bands"] and meta["tile_size"] == info["tile_size"]
    assert meta["normalization"]["mean"] == info["normalization"]["mean"]
    assert [c["name"] for c in meta["nomenclature"]["classes"]] == meta["class_names"]
    assert meta["model"]["encoder"] == "resnet18" and meta["task"] == "segmentation"
    assert meta["processing_level"] == "unknown"  # the learnable scene is a GeoTIFF without product name
    # the value logged during training at the best epoch equals a fresh evaluation of the checkpoint
    log = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["val/miou"])
    logged = log.loc[log["epoch"] == ckpt["epoch"], "val/miou"].iloc[0]
    data = LandcoverDataModule(tiny(dataset).data, task="segmentation")
    again = evaluate_checkpoint(out / "checkpoints" / "best.ckpt", data)
    assert again["val/miou"] == pytest.approx(logged, abs=1e-6)
    # one definition of the scores: `landcover evaluate`'s function gives the same numbers from the matrix
    scores = scores_from_confusion(np.array(again["confusion_matrix"]))
    assert again["val/miou"] == pytest.approx(scores["miou"], abs=1e-6)
    assert again["val/accuracy"] == pytest.approx(scores["overall_accuracy"], abs=1e-6)
    assert again["val/iou_micro"] == pytest.approx(scores["iou_micro"], abs=1e-6)


def test_classification_multilabel_learns(dataset, tmp_path):
    cfg = tiny(dataset, "model.task=classification", "trainer.max_epochs=10", "trainer.patience=4")
    metrics = train(cfg, tmp_path / "cls")
    assert metrics.metrics["val/f1_macro"] >= 0.9, metrics
    assert metrics.monitor == "val/map_macro"


def test_early_stopping_stops_a_stalled_run(dataset, tmp_path):
    cfg = tiny(
        dataset,
        "optim.lr=1e-12",
        "optim.scheduler=none",
        "trainer.max_epochs=20",
        "trainer.patience=2",
        "trainer.min_delta=0.05",
        "trainer.limit_train_batches=2",
    )
    metrics = train(cfg, tmp_path / "stalled")
    assert metrics.early_stopped and metrics.stopped_epoch <= 5, metrics.stopped_epoch


def test_resume_continues_from_last_checkpoint(dataset, tmp_path):
    cfg = tiny(dataset, "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    train(cfg, tmp_path / "run")
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    cfg = tiny(dataset, "trainer.max_epochs=2", "trainer.limit_train_batches=2")
    train(cfg, tmp_path / "run", resume="auto")  # what a requeued job runs: continue from last.ckpt
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == first + 1
    # the resumed part logs beside the first one, and the curves cover both
    assert (tmp_path / "run" / "logs" / "metrics.csv").exists()
    assert (tmp_path / "run" / "logs" / "resumed-1" / "metrics.csv").exists()
    assert (tmp_path / "run" / "curves.png").exists()
    with pytest.raises(ConfigError, match="no such checkpoint"):
        train(cfg, tmp_path / "run", resume=tmp_path / "nothing.ckpt")


def test_ddp_two_cpu_processes_agree(dataset, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            *CLI,
            *train_command(
                dataset,
                out,
                "trainer.strategy=ddp",
                "trainer.devices=2",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=2",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted((out / "ranks").glob("rank*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0


def test_real_bigearthnet_patches_train_a_classifier(tmp_path):
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig
    from tests.conftest import shared_data

    root = shared_data("bigearthnet-v2", "BigEarthNet-S2")
    ingest(
        [root], tmp_path / "ben", config=IngestConfig(nomenclature="ben19", overviews=False, split={"by_scene": True})
    )
    # by_scene keeps every patch of T33UUP in one split: train on the official split
    cfg = tiny(
        tmp_path / "ben",
        "model.task=classification",
        "trainer.max_epochs=2",
        "data.batch_size=4",
        "data.split_column=official_split",
    )
    metrics = train(cfg, tmp_path / "run")
    assert 0.0 <= metrics.metrics["val/map_macro"] <= 1.0 and 0.0 <= metrics.metrics["val/f1_micro"] <= 1.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["landcover"]["nomenclature"]["name"] == "ben19" and len(ckpt["landcover"]["bands"]) == 12
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert "val/f1/Coniferous forest" in log.columns  # per-class scores against the official labels


def test_single_label_scores_ignore_targets_without_label():
    """Target 255 (a crop without a labelled pixel): no loss, no metric update, no crash."""
    from landcover.training.task import ClassificationTask

    task = ClassificationTask(
        label_mode="single",
        model={"task": "classification", "encoder_weights": "none"},
        optim={},
        loss={},
        bands=["B02", "B03", "B04", "B08"],
        class_names=list("abc"),
        meta={},
        pretrained=False,
    )
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    target = torch.tensor([0, 1, 255, 255])
    assert task.criterion(logits, target) == pytest.approx(float(task.criterion(logits[:2], target[:2])))
    assert float(task.loss(logits[2:], target[2:])) == 0.0  # a batch with no label at all
    metrics = task.metrics["val"]
    metrics.update(logits, target)
    assert float(metrics.compute()["accuracy"]) == 1.0


def test_single_label_classifier_trains_on_the_real_sample_with_unlabelled_crops(tmp_path):
    """The embedded T33UUU clip (OSM labels cover a third of it): 16-px crops often hold no labelled pixel."""
    from landcover.demo import ingest_clip

    dataset = ingest_clip(tmp_path / "clip")
    cfg = tiny(
        dataset,
        "model.task=classification",
        "data.label_mode=single",
        "data.crop_size=16",
        "data.max_train_tiles_per_epoch=64",
        "trainer.max_epochs=1",
        "data.batch_size=16",
    )
    data = LandcoverDataModule(cfg.data, task="classification")
    labels = torch.cat([batch["label"] for batch in data.train_dataloader()])
    assert (labels == 255).any() and (labels != 255).any()  # the case this test is about
    metrics = train(cfg, tmp_path / "run")
    assert metrics.monitor == "val/f1_macro" and 0.0 <= metrics.metrics["val/accuracy"] <= 1.0


def test_ddp_draws_the_tile_cap_and_scores_every_val_tile_once(dataset, tmp_path):
    """2-process CPU DDP: each rank draws half of data.max_train_tiles_per_epoch, and the val mIoU logged
    under DDP equals a single-process evaluation of the same checkpoint (no tile repeated or left out)."""
    from landcover.dataset.ingest import finalize
    from landcover.dataset.settings import split_settings

    dataset = Path(shutil.copytree(dataset, tmp_path / "dataset"))
    finalize(dataset, split=split_settings(dataset, ["split.seed=2"]))  # re-split: 9 val tiles
    val_tiles = len(LandcoverDataModule(tiny(dataset).data).split_tiles("val"))
    assert val_tiles % 2  # an odd count: a DistributedSampler would pad it with a repeated tile
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            *CLI,
            *train_command(
                dataset,
                out,
                "trainer.strategy=ddp",
                "trainer.devices=2",
                "trainer.max_epochs=1",
                "data.max_train_tiles_per_epoch=48",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["val/miou"])["val/miou"].iloc[-1]
    single = json.loads((out / "metrics.json").read_text())  # best.ckpt re-scored by one process
    assert single["world_size"] == 2 and single["val/miou"] == pytest.approx(logged, abs=1e-6)
    ranks = [json.loads(p.read_text()) for p in sorted((out / "ranks").glob("rank*.json"))]
    assert [r["global_step"] for r in ranks] == [3, 3]  # 48 tiles / 2 ranks / batch 8
