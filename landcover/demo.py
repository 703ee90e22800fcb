"""``landcover demo``: the whole pipeline on the embedded real samples, through the same code as the commands.

* segmentation: the Sentinel-2 L1C clip of T33UUU with OpenStreetMap land use mapped onto CORINE
  level 1 -> ``ingest`` (spatial split) -> ``train`` (configs/demo.yaml) -> ``predict`` the whole clip
  from its JP2 bands, and the same for the per-pixel LightGBM baseline (configs/baseline.yaml) -> ``evaluate``
  both maps on the test split's pixels with block-bootstrap intervals and a paired comparison -> a check
  that the CNN's map shows no structure at the window grid;
* classification: the BigEarthNet v2 patches of T33UUP with their official 19-class labels and splits
  -> ``ingest`` -> ``train`` (ResNet-18 multi-label) -> scores on the official test patches, next to a
  baseline that predicts the training label frequencies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from landcover.config import config_dir, load_config
from landcover.dataset.catalog import read_catalog
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.evaluation.evaluate import evaluate_maps
from landcover.evaluation.seams import seam_check
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_output, write_text_atomic
from landcover.io.style import class_map_profile, style_class_map
from landcover.nomenclature import IGNORE, catalog_dir, nomenclature

if TYPE_CHECKING:
    from landcover.inference.predict import PredictResult
    from landcover.training.results import TrainResult

SAMPLES = Path(__file__).resolve().parent / "sample_data"
Say = Callable[[str], None]


def ingest_clip(out: Path) -> Path:
    clip = SAMPLES / "T33UUU"
    cfg = load_config(
        IngestConfig,
        config_dir() / "sample_ingest.yaml",
        [f"labels.mapping={catalog_dir() / 'osm_fclass_to_clc_level1.csv'}"],
    )
    ingest([clip / "IMG_DATA"], out, labels=clip / "osm_landuse_water.gpkg", config=cfg)
    return out


def split_labels(dataset: Path, split: str, out: Path) -> Path:
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


def train_and_predict(cfg: Any, run: Path, map_path: Path) -> tuple[TrainResult, PredictResult]:
    """``train`` a config, then ``predict`` the whole clip from its JP2 bands with the best checkpoint."""
    from landcover.inference.predict import predict_scene
    from landcover.training.train import train

    result = train(cfg, run, overwrite=True)
    if result is None:  # pragma: no cover - one process is rank 0
        raise RuntimeError("the demo trains in one process")
    summary = predict_scene(
        str(run / result.best_checkpoint), SAMPLES / "T33UUU" / "IMG_DATA", map_path, overwrite=True
    )
    return result, summary


def _evaluate(map_path: Path, labels: Path, out: Path, tile: int, compare: Path | None = None) -> dict[str, Any]:
    """``evaluate`` on the test tiles (units: the tiles, resampled in blocks of 2 x 2): metrics.json's content."""
    report = evaluate_maps(map_path, labels, out, tile_size=tile, block_size=2 * tile, overwrite=True, compare=compare)
    return report.metrics


def _interval(scores: dict[str, Any], key: str) -> dict[str, float | None]:
    """A score with its 95 % interval from an evaluate report's ``scores``."""
    iv = (scores.get("intervals") or {}).get(key) or {}
    return {"estimate": scores[key], "low": iv.get("low"), "high": iv.get("high")}


def segmentation_demo(out: Path, say: Say, max_epochs: int | None = None) -> dict[str, Any]:
    from landcover.training.train import TrainConfig

    say("1/5 ingest: Sentinel-2 L1C clip T33UUU + OpenStreetMap land use -> CORINE level 1")
    dataset = ingest_clip(out / "dataset")
    say("2/5 train + predict: U-Net/ResNet-18 (configs/demo.yaml), early stopping on val; the whole clip")
    overrides = [f"data.dataset={dataset}"] + ([f"trainer.max_epochs={max_epochs}"] if max_epochs else [])
    cfg = load_config(TrainConfig, config_dir() / "demo.yaml", overrides)
    map_path = out / "map" / "T33UUU_landcover.tif"
    result, summary = train_and_predict(cfg, out / "train", map_path)
    say("3/5 train + predict: the per-pixel LightGBM baseline (configs/baseline.yaml) on the same train tiles")
    bcfg = load_config(TrainConfig, config_dir() / "baseline.yaml", [f"data.dataset={dataset}"])
    baseline_map = out / "map" / "T33UUU_baseline.tif"
    train_and_predict(bcfg, out / "baseline", baseline_map)
    say("4/5 evaluate: both maps against the OSM labels of the held-back test tiles, 95 % block-bootstrap intervals")
    test_labels = split_labels(dataset, "test", out / "evaluation" / "test_labels.tif")
    tile = int(json.loads((dataset / "dataset.json").read_text())["tile_size"])
    base = _evaluate(baseline_map, test_labels, out / "evaluation" / "baseline_report", tile)
    report = _evaluate(map_path, test_labels, out / "evaluation" / "report", tile, compare=baseline_map)
    say("5/5 check: class changes across the predict windows' edges vs elsewhere (no window lattice)")
    seams = seam_check(map_path, summary.tile, summary.overlap)
    diff = report["scores"]["comparison"]["miou"]
    return {
        "dataset": str(dataset),
        "checkpoint": str(out / "train" / result.best_checkpoint),
        "curves": str(out / "train" / "curves.png"),
        "map": str(map_path),
        "quicklook": summary.out.get("quicklook"),
        "report": str(out / "evaluation" / "report"),
        "baseline_map": str(baseline_map),
        "baseline_report": str(out / "evaluation" / "baseline_report"),
        "miou": report["scores"]["miou"],
        "accuracy": report["scores"]["overall_accuracy"],
        "baseline_miou": base["scores"]["miou"],
        "baseline_accuracy": base["scores"]["overall_accuracy"],
        "intervals": {
            "cnn": {k: _interval(report["scores"], k) for k in ("miou", "miou_reference", "overall_accuracy")},
            "baseline": {k: _interval(base["scores"], k) for k in ("miou", "miou_reference", "overall_accuracy")},
            "resampling": {k: v for k, v in report["scores"]["intervals"].items() if not isinstance(v, dict | list)},
        },
        "cnn_minus_baseline_miou": {"estimate": diff["estimate"], "low": diff["low"], "high": diff["high"]},
        "test_pixels": report["pixels"]["evaluated"],
        "window_seams": seams.to_dict(),
    }


def classification_demo(out: Path, say: Say, max_epochs: int | None = None) -> dict[str, Any]:
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.scoring import evaluate_checkpoint
    from landcover.training.train import TrainConfig, train

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
    if result is None:  # pragma: no cover - one process is rank 0
        raise RuntimeError("the demo trains in one process")
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
        "map_macro_present": test.get("test/map_macro_present"),
        "baseline_map_macro_present": baseline["map_macro_present"],
        "classes_present": test.get("test/classes_present"),
        "absent_classes": test.get("test/absent_classes"),
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
    ap = torchmetrics.classification.MultilabelAveragePrecision(k, average="none")(scores, test_y.long())
    present = test_y.sum(0) > 0  # classes with a positive among the test patches
    return {
        "map_macro": float(ap.nan_to_num(0.0).mean()),
        "map_macro_present": float(ap[present].mean()) if present.any() else float("nan"),
    }


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


def _fmt(v: dict[str, Any], signed: bool = False) -> str:
    """``0.412 [0.371, 0.455]`` (the interval omitted when there is none)."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if v.get("low") is None or v.get("high") is None:
        return f.format(v["estimate"])
    return f"{f.format(v['estimate'])} [{f.format(v['low'])}, {f.format(v['high'])}]"


def _verdict(diff: dict[str, Any]) -> str:
    """What a paired difference interval says."""
    if diff.get("low") is not None and diff["low"] > 0:
        return "the CNN is better"
    if diff.get("high") is not None and diff["high"] < 0:
        return "the baseline is better"
    return "the two cannot be told apart"


def demo_summary(results: dict[str, Any]) -> str:
    """What the demo prints at the end: scores next to the baselines, and where everything is."""
    lines = []
    if seg := results.get("segmentation"):
        iv = seg["intervals"]
        lines += [
            f"segmentation, {seg['test_pixels']:,} test pixels (95 % block-bootstrap intervals over the test tiles):",
            f"  U-Net/ResNet-18     mIoU {_fmt(iv['cnn']['miou'])}  overall accuracy {_fmt(iv['cnn']['overall_accuracy'])}",
            f"  LightGBM per pixel  mIoU {_fmt(iv['baseline']['miou'])}  "
            f"overall accuracy {_fmt(iv['baseline']['overall_accuracy'])}",
            f"  CNN - baseline      mIoU {_fmt(seg['cnn_minus_baseline_miou'], signed=True)}: {_verdict(seg['cnn_minus_baseline_miou'])}",
            f"  window seams: class changes across window edges {seg['window_seams']['ratio']:.2f} x the rate elsewhere",
            f"  map (COG, open in QGIS): {seg['map']}",
            f"  quick-look: {seg['quicklook']}",
            f"  report: {seg['report']}/report.md",
            f"  training curves: {seg['curves']}",
            f"  checkpoint: {seg['checkpoint']}",
        ]
    if cls := results.get("classification"):
        lines.append(
            f"classification: test macro mAP over the {cls['classes_present']} classes present in the test patches "
            f"{cls['map_macro_present']:.3f} (label-frequency baseline {cls['baseline_map_macro_present']:.3f}); "
            f"checkpoint {cls['checkpoint']}"
        )
    return "\n".join(lines)
