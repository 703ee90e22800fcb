"""``landcover demo``: the whole pipeline on the embedded real samples, through the same code as the commands.

* segmentation: the Sentinel-2 L1C clip of T33UUU with OpenStreetMap land use mapped onto CORINE
  level 1 -> ``ingest`` (spatial split) -> ``train`` (configs/demo.yaml) -> ``predict`` the whole clip
  from its JP2 bands -> ``evaluate`` on the test split's pixels, next to a nearest-centroid baseline on
  the same bands and split;
* classification: the BigEarthNet v2 patches of T33UUP with their official 19-class labels and splits
  -> ``ingest`` -> ``train`` (ResNet-18 multi-label) -> scores on the official test patches, next to a
  baseline that predicts the training label frequencies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from landcover.config import config_dir, load_config
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.evaluation.confusion import scores_from_confusion
from landcover.evaluation.evaluate import evaluate_maps
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_output, write_text_atomic
from landcover.io.style import class_map_profile, style_class_map
from landcover.nomenclature import IGNORE, catalog_dir, nomenclature

SAMPLES = Path(__file__).resolve().parent / "sample_data"
Say = Callable[[str], None]


def _ingest_segmentation(out: Path) -> Path:
    clip = SAMPLES / "T33UUU"
    cfg = load_config(
        IngestConfig,
        config_dir() / "sample_ingest.yaml",
        [f"labels.mapping={catalog_dir() / 'osm_fclass_to_clc_level1.csv'}"],
    )
    ingest([clip / "IMG_DATA"], out, labels=clip / "osm_landuse_water.gpkg", config=cfg)
    return out


def _split_labels(dataset: Path, split: str, out: Path) -> Path:
    """The scene's labels kept only inside the (non-buffer) tiles of ``split``; 255 elsewhere."""
    info = json.loads((dataset / "dataset.json").read_text())
    scene = info["scenes"][0]
    tiles = read_catalog(dataset, split=split)
    with rasterio.open(dataset / scene["labels"]) as src:
        labels = src.read(1)
        keep = np.zeros(labels.shape, bool)
        for t in tiles.itertuples():
            keep[t.row : t.row + t.height, t.col : t.col + t.width] = True
        labels[~keep] = IGNORE
        grid = Grid(src.crs, src.transform, src.width, src.height)
    nom = nomenclature(info["nomenclature"]["name"])
    with (
        atomic_output(out, overwrite=True, needed=labels.size) as tmp,
        rasterio.open(tmp, "w", **class_map_profile(grid)) as dst,
    ):
        dst.write(labels, 1)
        style_class_map(dst, nom, SPLIT=split)
    return out


def _pixels(dataset: Path, split: str, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels (features normalised like the CNN's input, class ids) of a split's tiles."""
    info = json.loads((dataset / "dataset.json").read_text())
    mean = np.asarray(info["normalization"]["mean"])[:, None]
    std = np.asarray(info["normalization"]["std"])[:, None]
    scene = info["scenes"][0]
    xs, ys = [], []
    with rasterio.open(dataset / scene["image"]) as img, rasterio.open(dataset / scene["labels"]) as lab:
        for t in read_catalog(dataset, split=split).itertuples():
            window = ((t.row, t.row + t.height), (t.col, t.col + t.width))
            x = img.read(window=window).reshape(img.count, -1)
            y = lab.read(1, window=window).ravel()
            ok = (y != IGNORE) & x.any(axis=0)
            xs.append((x[:, ok] - mean) / std)
            ys.append(y[ok])
    x, y = np.concatenate(xs, axis=1).T, np.concatenate(ys)
    if len(y) > limit:
        pick = rng.choice(len(y), limit, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def nearest_centroid_baseline(dataset: Path) -> dict[str, Any]:
    """Per-pixel nearest-centroid classifier: class mean spectra of the train tiles, scored on test."""
    rng = np.random.default_rng(0)
    info = json.loads((dataset / "dataset.json").read_text())
    nom = nomenclature(info["nomenclature"]["name"])
    x_train, y_train = _pixels(dataset, "train", 200_000, rng)
    x_test, y_test = _pixels(dataset, "test", 10**9, rng)
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    dist = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    pred = classes[dist.argmin(axis=1)]
    k = nom.num_classes
    cm = np.bincount(y_test.astype(np.int64) * k + pred, minlength=k * k).reshape(k, k)
    res = abs(info["scenes"][0]["grid"]["transform"][0])
    return scores_from_confusion(cm, res * res, list(nom.class_names), class_codes=list(nom.codes))


def segmentation_demo(out: Path, say: Say, max_epochs: int | None = None) -> dict[str, Any]:
    from landcover.inference.predict import predict_scene
    from landcover.training.train import TrainConfig, train

    say("1/4 ingest: Sentinel-2 L1C clip T33UUU + OpenStreetMap land use -> CORINE level 1")
    dataset = _ingest_segmentation(out / "dataset")
    say("2/4 train: U-Net/ResNet-18 (configs/demo.yaml) on the train tiles, early stopping on val mIoU")
    overrides = [f"data.dataset={dataset}"] + ([f"trainer.max_epochs={max_epochs}"] if max_epochs else [])
    cfg = load_config(TrainConfig, config_dir() / "demo.yaml", overrides)
    result = train(cfg, out / "train", overwrite=True)
    assert result is not None  # one process: rank 0
    say("3/4 predict: the whole clip, from its JP2 bands")
    map_path = out / "map" / "T33UUU_landcover.tif"
    summary = predict_scene(
        str(out / "train" / result.best_checkpoint), SAMPLES / "T33UUU" / "IMG_DATA", map_path, overwrite=True
    )
    say("4/4 evaluate: the map against the OSM labels of the held-back test tiles")
    test_labels = _split_labels(dataset, "test", out / "evaluation" / "test_labels.tif")
    report = evaluate_maps(map_path, test_labels, out / "evaluation" / "report", overwrite=True)
    baseline = nearest_centroid_baseline(dataset)
    write_text_atomic(out / "evaluation" / "baseline.json", json.dumps(baseline, indent=2) + "\n")
    return {
        "dataset": str(dataset),
        "checkpoint": str(out / "train" / result.best_checkpoint),
        "curves": str(out / "train" / "curves.png"),
        "map": str(map_path),
        "quicklook": summary.out.get("quicklook"),
        "report": str(out / "evaluation" / "report"),
        "miou": report.miou,
        "accuracy": report.overall_accuracy,
        "baseline_miou": baseline["miou"],
        "baseline_accuracy": baseline["overall_accuracy"],
    }


def classification_demo(out: Path, say: Say, max_epochs: int | None = None) -> dict[str, Any]:
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.train import TrainConfig, evaluate_checkpoint, train

    say("1/3 ingest: BigEarthNet v2 patches of T33UUP with their official 19-class labels")
    root = SAMPLES / "bigearthnet"
    cfg = IngestConfig(nomenclature="ben19", bigearthnet_metadata=root / "metadata.parquet", split={"by_scene": True})
    ingest([root / "BigEarthNet-S2"], out / "dataset", config=cfg)
    say("2/3 train: ResNet-18 multi-label classifier on the official train patches")
    overrides = [
        f"data.dataset={out / 'dataset'}",
        "model.task=classification",
        "data.split_column=official_split",
        "data.batch_size=4",
        "trainer.max_epochs=" + str(max_epochs or 10),
    ]
    tcfg = load_config(TrainConfig, config_dir() / "tiny.yaml", overrides)
    result = train(tcfg, out / "train", overwrite=True)
    assert result is not None  # one process: rank 0
    say("3/3 evaluate: the best checkpoint on the official test patches")
    data = LandcoverDataModule(tcfg.data, task="classification")
    test = evaluate_checkpoint(str(out / "train" / result.best_checkpoint), data, split="test")
    baseline = _prior_baseline(data)
    summary = {
        "checkpoint": str(out / "train" / result.best_checkpoint),
        "test": test,
        "baseline": baseline,
        "map_macro": test.get("test/map_macro"),
        "baseline_map_macro": baseline["map_macro"],
    }
    write_text_atomic(out / "test_metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _prior_baseline(data) -> dict[str, float]:
    """Multi-label baseline: every test patch gets the train label frequencies as scores."""
    import torch
    import torchmetrics

    data.setup("fit")
    data.setup("test")
    train_y = torch.stack([data.datasets["train"][i]["label"] for i in range(len(data.datasets["train"]))])
    test_y = torch.stack([data.datasets["test"][i]["label"] for i in range(len(data.datasets["test"]))])
    scores = train_y.mean(0, keepdim=True).expand_as(test_y)
    k = data.num_classes
    ap = torchmetrics.classification.MultilabelAveragePrecision(k, average="macro")
    return {"map_macro": float(ap(scores, test_y.long()))}


def run_demo(
    out: str | Path, task: str = "segmentation", say: Say = print, max_epochs: int | None = None
) -> dict[str, Any]:
    """Run the demo(s) into ``out``; return where everything is and the headline scores."""
    out = Path(out)
    results: dict[str, Any] = {}
    if task in ("segmentation", "all"):
        results["segmentation"] = segmentation_demo(out / "segmentation", say, max_epochs)
    if task in ("classification", "all"):
        results["classification"] = classification_demo(out / "classification", say, max_epochs)
    write_text_atomic(out / "demo.json", json.dumps(results, indent=2, default=str) + "\n")
    return results


def demo_summary(results: dict[str, Any]) -> str:
    """What the demo prints at the end: scores next to the baselines, and where everything is."""
    lines = []
    if seg := results.get("segmentation"):
        lines += [
            f"segmentation: test mIoU {seg['miou']:.3f} (nearest-centroid baseline {seg['baseline_miou']:.3f}), "
            f"overall accuracy {seg['accuracy']:.3f}",
            f"  map (COG, open in QGIS): {seg['map']}",
            f"  quick-look: {seg['quicklook']}",
            f"  report: {seg['report']}/report.md",
            f"  training curves: {seg['curves']}",
            f"  checkpoint: {seg['checkpoint']}",
        ]
    if cls := results.get("classification"):
        lines.append(
            f"classification: test macro mAP {cls['map_macro']:.3f} (label-frequency baseline "
            f"{cls['baseline_map_macro']:.3f}); checkpoint {cls['checkpoint']}"
        )
    return "\n".join(lines)
