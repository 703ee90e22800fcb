"""Model quality on the embedded T33UUU clip: the demo's U-Net and the LightGBM pixel baseline, several seeds.

What a user compares before trusting a CNN: on the demo's dataset and split (``landcover demo``'s ingest),
each model is trained with each seed (``configs/demo.yaml``, ``configs/baseline.yaml``), predicts the whole
clip from its JP2 bands and is scored by ``landcover evaluate`` on the test tiles' pixels: mIoU and overall
accuracy with 95 % block-bootstrap intervals (units: the test tiles, blocks of 2 x 2 tiles), the paired
difference CNN - baseline for the same seed, and the mean and spread over seeds. Usage (2 cores: about 5
minutes per CNN seed, 1 per baseline seed, on an idle machine):

    .venv/bin/python scripts/bench_quality.py --out runs/bench_quality [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from landcover.config import config_dir, load_config
from landcover.demo import ingest_clip, split_labels, train_and_predict
from landcover.evaluation.evaluate import EvaluationResult, evaluate_maps
from landcover.training.config import TrainConfig


def _run(name: str, config: str, seed: int, dataset: Path, out: Path) -> tuple[Path, dict]:
    cfg = load_config(TrainConfig, config_dir() / config, [f"data.dataset={dataset}", f"trainer.seed={seed}"])
    started = time.perf_counter()
    metrics, _ = train_and_predict(cfg, out / f"{name}-{seed}", out / "maps" / f"{name}-{seed}.tif")
    return out / "maps" / f"{name}-{seed}.tif", {
        "val_miou": metrics.metrics["val/miou"],
        "best_epoch": metrics.best_epoch,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _score(report: EvaluationResult) -> dict:
    s = report.metrics["scores"]
    out = {
        k: {"estimate": s[k], **{b: s["intervals"][k][b] for b in ("low", "high")}}
        for k in ("miou", "overall_accuracy")
    }
    if "comparison" in s:
        out["cnn_minus_baseline_miou"] = {k: s["comparison"]["miou"][k] for k in ("estimate", "low", "high")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_quality"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out: Path = args.out
    dataset = out / "dataset"
    if not (dataset / "dataset.json").exists():
        ingest_clip(dataset)
    labels = split_labels(dataset, "test", out / "test_labels.tif")
    tile = int(json.loads((dataset / "dataset.json").read_text())["tile_size"])
    rows = []
    for seed in args.seeds:
        base_map, base_run = _run("baseline", "baseline.yaml", seed, dataset, out)
        cnn_map, cnn_run = _run("unet", "demo.yaml", seed, dataset, out)
        base = evaluate_maps(
            base_map, labels, out / "reports" / f"baseline-{seed}", tile_size=tile, block_size=2 * tile, overwrite=True
        )
        cnn = evaluate_maps(
            cnn_map,
            labels,
            out / "reports" / f"unet-{seed}",
            tile_size=tile,
            block_size=2 * tile,
            compare=base_map,
            overwrite=True,
        )
        rows.append({"seed": seed, "baseline": {**base_run, **_score(base)}, "unet": {**cnn_run, **_score(cnn)}})
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        model: {
            metric: {
                "mean": statistics.mean(r[model][metric]["estimate"] for r in rows),
                "sd": statistics.stdev(r[model][metric]["estimate"] for r in rows) if len(rows) > 1 else 0.0,
            }
            for metric in ("miou", "overall_accuracy")
        }
        for model in ("unet", "baseline")
    }
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "test_pixels": cnn.metrics["pixels"]["evaluated"],
        "rows": rows,
        "summary": summary,
    }
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
