"""Benchmark `landcover predict` (streaming, blended, COG output) against the pure model and a peer.

(a) end-to-end predict time on a synthetic 12-band ingested-style stack vs the pure model forward
    over the same number of windows (same process, same model), in Mpx/s and as a ratio;
(b) peak RSS of predict for several scene sizes, each in a child process;
(c) the peer: a whole-scene approach (read the scene into memory, grid-sample windows like
    torchgeo's GridGeoSampler, stitch probabilities into a full K x H x W array) on the same model
    and scene: time and peak RSS.

Model: U-Net / ResNet-18, random weights, 12 bands, 44 classes (CORINE level 3), 256 px windows.
Usage (defaults shown; about 2 minutes on 2 idle CPU cores)::

    .venv/bin/python scripts/bench_predict.py --forward 2048x2048 --memory 2048x8192 --peer 2048x2048

docs/benchmarks.md uses larger scenes (about 5.5 and 7 minutes here)::

    .venv/bin/python scripts/bench_predict.py --forward 4096x4096 --memory 2048x2048 2048x8192 10980x1024 \
        --peer 2048x2048 4096x4096
    .venv/bin/python scripts/bench_predict.py --forward none --memory 10980x10980 --peer   # a whole tile
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.nomenclature import default_bands, nomenclature

BANDS = list(default_bands("L2A"))  # 12 bands
TILE, OVERLAP, BATCH = 256, 64, 8


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's RSS at fork time)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_stack(path: Path, width: int, height: int) -> Path:
    """A stack like `landcover ingest` writes: uint16, 256 px ZSTD tiles, band names, SCALE tag."""
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": len(BANDS),
        "width": width,
        "height": height,
        "crs": "EPSG:32633",
        "transform": from_origin(300_000, 5_400_000, 10, 10),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "pixel",
        "compress": "zstd",
        "predictor": 2,
        "bigtiff": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, height, 256):
            h = min(256, height - r)
            coarse = rng.integers(300, 4000, (len(BANDS), h // 16 + 1, width // 16 + 1))
            block = coarse.repeat(16, 1).repeat(16, 2)[:, :h, :width] + rng.integers(0, 60, (len(BANDS), h, width))
            dst.write(block.astype(np.uint16), window=Window(0, r, width, h))
        for i, band in enumerate(BANDS, 1):
            dst.set_band_description(i, band)
        dst.update_tags(SCALE="reflectance x 10000", PRODUCT_ID="SYNTHETIC_BENCH", PROCESSING_BASELINE="05.10")
    return path


def make_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), BANDS, 44, load_weights=False)
    meta = {
        "format": "landcover-checkpoint/1",
        "task": "segmentation",
        "bands": BANDS,
        "tile_size": TILE,
        "nomenclature": nomenclature("level3").to_dict(),
        "resolution": 10.0,
        "label_mode": "single",
        "normalization": {"mean": [1500.0] * len(BANDS), "std": [1000.0] * len(BANDS)},
        "model": ModelConfig().model_dump(mode="json"),
    }
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def child_predict(ckpt: Path, stack: Path, out: Path, forward_too: bool) -> dict:
    from landcover.inference.checkpoint import load_checkpoint, predict_scene

    lm = load_checkpoint(ckpt)
    result: dict = {"rss_before_mb": peak_rss_mb()}
    if forward_too:  # the pure model over as many windows as predict runs, same batch size
        from landcover.inference.sliding import make_plan

        with rasterio.open(stack) as src:
            plan = make_plan(src.height, src.width, TILE, OVERLAP)
        n = plan.rows * plan.cols
        x = torch.randn(BATCH, len(BANDS), TILE, TILE)
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, BATCH):
                lm.model(x[: min(BATCH, n - i)])
        result.update(forward_s=time.perf_counter() - started, forward_windows=n)
    summary = predict_scene(lm, stack, out, overlap=OVERLAP, batch_size=BATCH, overwrite=True)
    result.update(
        predict_s=summary.seconds,
        windows_run=summary.windows_run,
        width=summary.grid["width"],
        height=summary.grid["height"],
        peak_rss_mb=peak_rss_mb(),
    )
    return result


def child_peer(ckpt: Path, stack: Path, out: Path) -> dict:
    """Whole-scene prediction: the scene, its normalised copy and K x H x W probabilities in memory."""
    from landcover.inference.checkpoint import load_checkpoint

    lm = load_checkpoint(ckpt)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    with rasterio.open(stack) as src:
        image = src.read()
        profile = src.profile
    h, w = image.shape[1:]
    x = (image.astype(np.float32) - lm.mean[:, None, None]) / lm.std[:, None, None]
    x[:, ~image.any(axis=0)] = 0
    k = lm.nomenclature.num_classes
    probs = np.zeros((k, h, w), np.float32)
    counts = np.zeros((h, w), np.float32)
    stride = TILE - OVERLAP
    starts = lambda n: sorted({*range(0, max(n - TILE, 0) + 1, stride), max(n - TILE, 0)})  # noqa: E731
    windows = [(r, q) for r in starts(h) for q in starts(w)]  # GridGeoSampler: last window flush with the edge
    with torch.inference_mode():
        for i in range(0, len(windows), BATCH):
            chunk = windows[i : i + BATCH]
            batch = torch.from_numpy(np.stack([x[:, r : r + TILE, q : q + TILE] for r, q in chunk]))
            p = torch.softmax(lm.model(batch), 1).numpy()
            for (r, q), pi in zip(chunk, p, strict=True):
                probs[:, r : r + TILE, q : q + TILE] += pi
                counts[r : r + TILE, q : q + TILE] += 1
    probs /= counts  # in place; argmax along the class axis still makes a K x H x W copy
    ids = probs.argmax(axis=0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", predictor=1, interleave="band")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(ids, 1)
    return {
        "peer_s": time.perf_counter() - started,
        "windows_run": len(windows),
        "width": w,
        "height": h,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def size_or_none(text: str) -> tuple[int, int] | None:
    return None if text.lower() == "none" else size(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--forward", type=size_or_none, default=(2048, 2048), help="(a) WxH: predict vs pure forward ('none': skip)"
    )
    parser.add_argument(
        "--memory", type=size, nargs="*", default=[(2048, 8192)], help="(b) more WxH scenes for predict's peak RSS"
    )
    parser.add_argument(
        "--peer", type=size, nargs="*", default=[(2048, 2048)], help="(c) WxH scenes for the whole-scene peer"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, ckpt, stack, out = args.child
        result = (
            child_peer(Path(ckpt), Path(stack), Path(out))
            if mode == "peer"
            else child_predict(Path(ckpt), Path(stack), Path(out), forward_too=mode == "both")
        )
        print(json.dumps(result))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA {torch.cuda.is_available()}", flush=True)
    jobs = [
        *([("both", args.forward)] if args.forward else []),
        *[("predict", s) for s in args.memory],
        *[("peer", s) for s in args.peer],
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ckpt = make_checkpoint(tmp / "bench.ckpt")
        for mode, (w, h) in jobs:
            stack = tmp / f"stack_{w}x{h}.tif"
            if not stack.exists():
                make_stack(stack, w, h)
            res = run_child(mode, str(ckpt), str(stack), str(tmp / f"{mode}_{w}x{h}.tif"))
            mpx, secs = w * h / 1e6, res.get("predict_s") or res["peer_s"]
            name = "peer (whole scene)" if mode == "peer" else "predict"
            line = (
                f"{name} {w}x{h}: {secs:.1f} s ({mpx / secs:.3f} Mpx/s), {res['windows_run']} windows, peak RSS "
                f"{res['peak_rss_mb']:.0f} MB (after loading the model {res['rss_before_mb']:.0f} MB)"
            )
            if mode == "both":
                line += (
                    f"; pure forward over {res['forward_windows']} windows {res['forward_s']:.1f} s "
                    f"({mpx / res['forward_s']:.3f} Mpx/s) -> predict / forward = "
                    f"{res['predict_s'] / res['forward_s']:.2f}"
                )
            print(line, flush=True)
            rows.append({"mode": mode, **res})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
