"""GPU benchmarks: training throughput (issue #4) and whole-tile predict (issue #5) on one CUDA device.

All data are synthetic and made on the machine. ``train``: one SIZE x SIZE 12-band scene through the real
``landcover ingest`` (256-px tiles, CORINE level 2, split blocks of 4 x 4 tiles); (a) the DataModule alone:
tiles/s through ``train_dataloader()`` + transfer + on-device augmentation, per worker count; (b) the real
``landcover.training.train.train()`` of configs/tiny.yaml and configs/unet_resnet18.yaml (``encoder_weights=none``,
``freeze_encoder_epochs=0``, bf16-mixed) with a callback timing every step (synchronised): steady-state
images/s (first 10 steps and validation left out), the model's own rate (forward + backward + optimiser),
the share of time spent waiting for data, peak GPU memory. ``predict``: a PREDICT_SIZE^2 stack like ingest
writes (``bench_predict.make_stack``) and a U-Net/ResNet-18 checkpoint with random weights (44 classes); per
batch size, in a child process, the pure forward (bf16 + softmax) over as many windows, then
``predict_scene`` with where its time goes, peak GPU memory and peak RSS; then ``landcover predict`` once
(wall time, peak RSS from ``wait4``). Results are printed and appended to WORKDIR/results.jsonl.

Usage (docs/benchmarks.md has the wheel preamble for a machine without rasterio etc.)::

    python scripts/bench_gpu.py [--parts train predict] [--size 6144] [--steps 240] \
        [--predict-size 10980] [--batch-sizes 8 64] [--workdir /tmp/lc-gpu] [--tag NAME]

CPU dry run: ``--device cpu --size 1024 --tile 64 --steps 3 --workers 0 --loader-workers 0 --set
data.crop_size=null --predict-size 512 --batch-sizes 4``. Without pyogrio (a 33 MB wheel) a stub stands in
and ingest writes an empty splits.gpkg, which only QGIS reads.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path
from unittest import mock

if importlib.util.find_spec("pyogrio") is None:  # before landcover.dataset.catalog imports it
    _stub = types.ModuleType("pyogrio")
    _stub.get_gdal_config_option = lambda name: None  # type: ignore[attr-defined]
    _stub.set_gdal_config_options = lambda options: None  # type: ignore[attr-defined]
    _stub.write_dataframe = lambda frame, path, **kw: Path(path).touch()  # type: ignore[attr-defined]
    sys.modules["pyogrio"] = _stub

import lightning.pytorch as pl
import numpy as np
import rasterio
import torch
from lightning.pytorch.callbacks import Callback
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import make_checkpoint, make_stack, peak_rss_mb

from landcover.config import config_dir, load_config
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.nomenclature import default_bands
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.train import TrainConfig, train

BANDS = list(default_bands("L2A"))
CODES = np.array([112, 211, 231, 242, 311, 324, 411, 512], np.uint16)  # CLC codes -> level 2 classes
TILE, OVERLAP = 256, 64


def emit(workdir: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with (workdir / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


# --- training -----------------------------------------------------------------------------------


def make_dataset(root: Path, size: int, tile: int) -> Path:
    """One scene of 64-px land-cover cells (a spectrum per class + noise) through the real ingest."""
    if (root / "ds" / "catalog.parquet").exists():
        return root / "ds"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    classes = rng.integers(0, len(CODES), (size // 64 + 1,) * 2).repeat(64, 0).repeat(64, 1)[:size, :size]
    spectra = rng.integers(300, 4000, (len(BANDS), len(CODES))).astype(np.uint16)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": "EPSG:32633",
        "tiled": True,
        "transform": from_origin(500_000, 5_300_000, 10, 10),
    }
    with rasterio.open(root / "scene.tif", "w", count=len(BANDS), dtype="uint16", **profile) as dst:
        for b, band in enumerate(BANDS, 1):
            dst.write(spectra[b - 1][classes] + rng.integers(0, 300, (size, size), dtype=np.uint16), b)
            dst.set_band_description(b, band)
    with rasterio.open(root / "clc.tif", "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(CODES[classes], 1)
    cfg = IngestConfig(nomenclature="level2", tile_size=tile, overviews=False, split={"block_size_m": tile * 40})
    ingest([root / "scene.tif"], root / "ds", labels=root / "clc.tif", config=cfg)
    return root / "ds"


class StepTimer(Callback):
    """Synchronised timestamps around every training step; peak GPU memory of the fit."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.steps, self.peak_mb, self.t0 = cuda, [], {}, 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t0 = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, self.t0, self._now(), len(batch["image"])))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.cuda:
            self.peak_mb = {
                "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
            }

    def summary(self, skip: int = 10) -> dict:
        images = total = model = wait = timed = 0
        for i in range(max(1, skip), len(self.steps)):
            epoch, t0, t1, n = self.steps[i]
            if self.steps[i - 1][0] != epoch:  # the previous step is in another epoch: validation between
                continue
            images, timed = images + n, timed + 1
            total, model, wait = total + t1 - self.steps[i - 1][2], model + t1 - t0, wait + t0 - self.steps[i - 1][2]
        total, model = total or math.nan, model or math.nan  # no timed step: NaN rates
        return {
            "steps": len(self.steps),
            "timed_steps": timed,
            "images_per_s": images / total,
            "model_images_per_s": images / model,
            "data_wait_share": wait / total,
            **self.peak_mb,
        }


def train_config(name: str, dataset: Path, workers: str, cuda: bool, extra: list[str]) -> TrainConfig:
    return load_config(
        TrainConfig,
        config_dir() / f"{name}.yaml",
        [
            f"data.dataset={dataset}",
            f"data.num_workers={workers}",
            "model.encoder_weights=none",
            "model.freeze_encoder_epochs=0",
            f"trainer.accelerator={'gpu' if cuda else 'cpu'}",
            "trainer.devices=1",
            f"trainer.precision={'bf16-mixed' if cuda else '32-true'}",
            "trainer.patience=1000",
            *extra,
        ],
    )


def loader_rate(cfg: TrainConfig, workers: int, batches: int, dev: torch.device) -> float:
    """Training tiles/s of the DataModule alone, delivered on the device and augmented there."""
    dm = LandcoverDataModule(cfg.data.model_copy(update={"num_workers": workers}), task=cfg.model.task)
    loader, n, skip, start = dm.train_dataloader(), 0, max(1, workers), 0.0
    while n < batches + skip:
        for batch in loader:
            batch = dm.augment({k: batch[k].to(dev, non_blocking=True) for k in ("image", "mask")})
            n += 1
            if n == skip:  # the first batches pay for the workers' start
                start = time.perf_counter()
            if n >= batches + skip:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batches * cfg.data.batch_size / (time.perf_counter() - start)


def bench_train(args: argparse.Namespace, dev: torch.device) -> None:
    cuda = dev.type == "cuda"
    started = time.perf_counter()
    dataset = make_dataset(args.workdir / "train", args.size, args.tile)
    n_train = len(LandcoverDataModule(train_config("tiny", dataset, "0", cuda, args.set).data).split_tiles("train"))
    emit(
        args.workdir,
        {
            "part": "dataset",
            "size": args.size,
            "train_tiles": n_train,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    for name in args.configs:
        cfg = train_config(name, dataset, "0", cuda, args.set)
        for w in args.loader_workers:
            rate = loader_rate(cfg, w, args.loader_batches, dev)
            emit(
                args.workdir,
                {
                    "part": "loader",
                    "config": name,
                    "workers": w,
                    "batch": cfg.data.batch_size,
                    "crop": cfg.data.crop_size,
                    "tiles_per_s": round(rate, 1),
                },
            )
        for workers in args.workers:
            batch = cfg.data.batch_size
            if cfg.data.sampling == "rare_classes":  # tiles drawn with replacement: any epoch length
                epochs, per_epoch = 3, math.ceil(args.steps / 3) * batch
            else:  # uniform: an epoch draws each train tile at most once
                per_epoch = min(n_train, args.steps * batch)
                epochs = math.ceil(args.steps / max(1, per_epoch // batch))
            run_cfg = train_config(
                name,
                dataset,
                workers,
                cuda,
                [*args.set, f"trainer.max_epochs={epochs}", f"data.max_train_tiles_per_epoch={per_epoch}"],
            )
            timer, real_trainer = StepTimer(cuda), pl.Trainer

            def with_timer(*a, timer=timer, real_trainer=real_trainer, **kw):
                if "callbacks" in kw:  # the fit's Trainer (evaluate_checkpoint's has none)
                    kw["callbacks"] = [*kw["callbacks"], timer]
                return real_trainer(*a, **kw)

            t0 = time.perf_counter()
            with mock.patch.object(pl, "Trainer", with_timer):
                metrics = train(run_cfg, args.workdir / f"run_{name}_{workers}", overwrite=True)
            emit(
                args.workdir,
                {
                    "part": "train",
                    "config": name,
                    "workers": workers,
                    "resolved_workers": LandcoverDataModule(run_cfg.data).num_workers,
                    "batch": batch,
                    "crop": run_cfg.data.crop_size,
                    "epochs": epochs,
                    "precision": run_cfg.trainer.precision,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "val_miou": metrics.metrics.get("val/miou") if metrics else None,
                    **{k: round(v, 3) for k, v in timer.summary().items()},
                },
            )


# --- predict --------------------------------------------------------------------------------------


def child_predict(ckpt: Path, stack: Path, out: Path, batch: int, device: str) -> dict:
    """Pure forward over as many windows as predict runs, then predict_scene with a time breakdown."""
    import landcover.inference.predict as lp
    from landcover.inference import feeder, stream
    from landcover.inference.checkpoint import load_checkpoint, probabilities, resolve_device
    from landcover.inference.sliding import make_plan

    times: dict[str, float] = defaultdict(float)

    def timed(name: str, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                times[name] += time.perf_counter() - t0

        return wrapper

    # the stages of predict, timed where they live (reads and feeding in feeder, the writer thread and the
    # whole streaming in stream, the COG copies and the quick-look in predict's namespace)
    feeder.StackSource.rows = timed("read_s", feeder.StackSource.rows)  # GDAL reads + decoding (reader thread)
    feeder.Feeder.__call__ = timed("reader_thread_s", feeder.Feeder.__call__)  # reads + pad + batch (+ normalise)
    stream._write = timed("writer_thread_s", stream._write)
    lp.stream_windows = timed("stream_s", lp.stream_windows)  # read, model, blend, write: before the COG
    lp.to_cog = timed("cog_s", lp.to_cog)
    lp.write_quicklook = timed("quicklook_s", lp.write_quicklook)
    lm, dev = load_checkpoint(ckpt), resolve_device(device)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if dev.type == "cuda" else None
    with rasterio.open(stack) as src:
        plan = make_plan(src.height, src.width, TILE, OVERLAP)
    n, x = plan.rows * plan.cols, torch.randn(batch, len(BANDS), TILE, TILE, device=dev)
    lm.model.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            probabilities(lm, x, amp)
        sync()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            probabilities(lm, x[: min(batch, n - i)], amp)
        sync()
    forward_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = lp.predict_scene(lm, stack, out, overlap=OVERLAP, batch_size=batch, device=device, overwrite=True)
    result = {
        "forward_s": forward_s,
        "forward_windows": n,
        "predict_s": summary.seconds,
        "windows_run": summary.windows_run,
        "peak_rss_mb": peak_rss_mb(),
        **times,
    }
    if dev.type == "cuda":
        result["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def cli_predict(ckpt: Path, stack: Path, out: Path, batch: int, device: str) -> dict:
    """``landcover predict`` in a fresh process: wall time (imports, model load and CUDA start included)."""
    cmd = [
        sys.executable,
        "-m",
        "landcover.cli",
        "predict",
        str(ckpt),
        str(stack),
        "--out",
        str(out),
        "--batch-size",
        str(batch),
        "--device",
        device,
        "--overwrite",
    ]
    t0 = time.perf_counter()
    with (out.parent / "cli.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(out.parent / 'cli.log').read_text()[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def agreement(a: Path, b: Path) -> float:
    with rasterio.open(a) as da, rasterio.open(b) as db:
        return float(np.mean(da.read(1) == db.read(1)))


def bench_predict(args: argparse.Namespace, dev: torch.device) -> None:
    root = args.workdir / "predict"
    root.mkdir(parents=True, exist_ok=True)
    stack, ckpt = root / f"stack_{args.predict_size}.tif", root / "unet18.ckpt"
    if not stack.exists():
        t0 = time.perf_counter()
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
            make_stack(stack, args.predict_size, args.predict_size)
        emit(
            args.workdir,
            {
                "part": "stack",
                "size": args.predict_size,
                "seconds": round(time.perf_counter() - t0, 1),
                "mb": round(stack.stat().st_size / 2**20),
            },
        )
    if not ckpt.exists():
        make_checkpoint(ckpt)
    for batch in args.batch_sizes:
        out = root / f"map_{args.tag}_b{batch}.tif"
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(ckpt), str(stack), str(out), str(batch), dev.type],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        record = {"part": "predict", "tag": args.tag, "size": args.predict_size, "batch": batch, **res}
        for other in sorted(root.glob(f"map_*_b{batch}.tif")):
            if other != out:
                record[f"agrees_with_{other.stem}"] = round(agreement(out, other), 6)
        emit(args.workdir, record)
    if args.cli:
        res = cli_predict(ckpt, stack, root / f"cli_{args.tag}.tif", max(args.batch_sizes), dev.type)
        emit(args.workdir, {"part": "predict_cli", "tag": args.tag, "batch": max(args.batch_sizes), **res})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["train", "predict"], choices=["train", "predict"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lc-gpu"))
    parser.add_argument("--tag", default="run", help="names the predict outputs (compare code versions)")
    parser.add_argument("--size", type=int, default=6144, help="side of the training scene (px)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--configs", nargs="+", default=["tiny", "unet_resnet18"])
    parser.add_argument("--steps", type=int, default=240, help="about this many training steps per run")
    parser.add_argument("--workers", nargs="+", default=["0", "auto", "12"], help="data.num_workers of the runs")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2, 4, 8, 15])
    parser.add_argument("--loader-batches", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], help="extra override for every training config")
    parser.add_argument("--predict-size", type=int, default=10980)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ckpt, stack, out, batch, device = args.child
        print(json.dumps(child_predict(Path(ckpt), Path(stack), Path(out), int(batch), device)))
        return
    dev = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "cpus": len(os.sched_getaffinity(0)),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "lightning": pl.__version__,
    }
    emit(args.workdir, {"part": "environment", **env})
    if "train" in args.parts:
        bench_train(args, dev)
    if "predict" in args.parts:
        bench_predict(args, dev)


if __name__ == "__main__":
    main()
