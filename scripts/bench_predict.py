"""Benchmark `landcover predict` (each engine) against TerraTorch's `tiled_inference` on the same model and stacks.

One run prints, per scene size: wall time, Mpx/s, windows, peak RSS (and RSS after loading, before any pixel) of

* landcover ``predict_scene`` with each engine: ``torch`` (the default: float32, batch norms folded, upsampling
  convolutions on the coarse grid, channels-last, freed tensors' memory reused), and the default without one lever
  each: ``torch-fine-grid`` (the decoder's convolutions on the upsampled tensors), ``torch-fresh-pages`` (glibc's
  default malloc: the large tensors of every batch page-faulted in afresh), ``torch-nchw`` (without channels-last);
  ``torch-bf16`` (``--precision bf16``); ``onnx`` (the model exported by ``landcover export``, run by onnxruntime
  in a process that imports no torch); each reads the stack, blends the windows and writes the COG map, its .qml
  and STAC item (no quick look);
* the peer, TerraTorch 1.2.13 ``tiled_inference`` as its users call it: the scene read and normalised into one
  tensor, ``crop=256, stride=192`` (the same windows: landcover's 256-px windows overlapping by 64), its default
  ``delta=8``, blending and reflect padding, ``batch_size`` as landcover's, the probabilities of the whole scene in
  memory, then argmax and a tiled GeoTIFF; and ``terratorch-reuse``, the same with the malloc tuning of our
  default (``reuse_freed_memory``), which TerraTorch's users do not have but which is fair to show.
  TerraTorch needs torchgeo 0.9 (Python 3.12), so its package cannot be
  installed here: the script executes ``terratorch/tasks/tiled_inference.py`` and the ``pad_images`` function of
  ``terratorch/models/utils.py`` from the published wheel (``pip download --no-deps terratorch==1.2.13``), unchanged.

and the ratio of each to the peer (throughput: peer seconds / landcover seconds), plus the share of pixels whose
class equals the default engine's map. Each run is a child process (its own peak RSS: VmHWM).

Model: U-Net / ResNet-18, random weights, 12 bands, 44 classes (CORINE level 3), 256-px windows, overlap 64,
batch 4 (predict's CPU default; the peer gets the same), torch threads = cores. Usage::

    pip download --no-deps terratorch==1.2.13 -d /tmp/wheels
    .venv/bin/python scripts/bench_predict.py --size 2048x2048 4096x4096 --terratorch-wheel /tmp/wheels/terratorch-1.2.13-py3-none-any.whl
    .venv/bin/python scripts/bench_predict.py --size 10980x10980 --engines torch onnx --no-peer   # memory of a whole tile

``--repeat N`` runs every runner N times, rounds interleaved, and reports each one's median run (the rounds' times
are printed too): on a shared 2-core VM single runs vary by 10-25 %.

Without ``--terratorch-wheel`` the peer is skipped.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.nomenclature import default_bands, nomenclature

BANDS = list(default_bands("L2A"))  # 12 bands
TILE, OVERLAP, BATCH = 256, 64, 4


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
    import torch

    from landcover.models.build import build_model
    from landcover.models.config import ModelConfig

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
        "processing_level": "L2A",
    }
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


ENGINES = ("torch", "torch-fine-grid", "torch-fresh-pages", "torch-nchw", "torch-bf16", "onnx")
PEERS = ("terratorch", "terratorch-reuse")


def child_landcover(engine_name: str, model: Path, stack: Path, out: Path, batch: int) -> dict:
    from landcover.inference.engine import open_engine
    from landcover.inference.predict import predict_scene

    if engine_name == "torch-fine-grid":  # the U-Net decoder's convolutions as written
        from landcover.inference import graph_rewrites

        graph_rewrites.coarse_grid_convolutions = lambda gm: 0  # type: ignore[assignment]
    if engine_name == "torch-fresh-pages":  # glibc's malloc as it comes (imported here only: onnx imports no torch)
        from landcover.inference import torch_engine

        torch_engine.reuse_freed_memory = lambda: False  # type: ignore[assignment]
    precision = "bf16" if engine_name == "torch-bf16" else "auto"
    engine = open_engine(model, device="cpu", precision=precision)
    if engine_name == "torch-nchw":  # predict before channels-last: the model and its input in NCHW
        import torch

        engine.channels_last = False  # type: ignore[attr-defined]
        engine.lm.model.to(memory_format=torch.contiguous_format)  # type: ignore[attr-defined]
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    summary = predict_scene(engine, stack, out, overlap=OVERLAP, batch_size=batch, quicklook=False, overwrite=True)
    return {
        "seconds": time.perf_counter() - started,
        "windows": summary.windows_run,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }


def load_tiled_inference(wheel: Path) -> types.ModuleType:
    """TerraTorch's tiled_inference module and its pad_images helper, executed from the wheel as published."""
    import torch
    from torch import nn

    z = zipfile.ZipFile(wheel)
    utils_src = z.read("terratorch/models/utils.py").decode()
    fn = next(n for n in ast.parse(utils_src).body if isinstance(n, ast.FunctionDef) and n.name == "pad_images")
    utils = types.ModuleType("terratorch.models.utils")
    utils.__dict__.update(torch=torch, nn=nn)
    exec(compile(ast.get_source_segment(utils_src, fn) or "", "terratorch/models/utils.py", "exec"), utils.__dict__)
    for name in ("terratorch", "terratorch.models", "terratorch.tasks"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["terratorch.models.utils"] = utils
    module = types.ModuleType("terratorch.tasks.tiled_inference")
    sys.modules[module.__name__] = module
    source = z.read("terratorch/tasks/tiled_inference.py").decode()
    exec(compile(source, "terratorch/tasks/tiled_inference.py", "exec"), module.__dict__)
    return module


def child_terratorch(wheel: Path, ckpt: Path, stack: Path, out: Path, batch: int, reuse: bool) -> dict:
    import torch

    from landcover.inference.checkpoint import load_checkpoint
    from landcover.inference.torch_engine import reuse_freed_memory

    if reuse:
        reuse_freed_memory()

    tiled = load_tiled_inference(wheel)
    lm = load_checkpoint(ckpt)
    rss_before = peak_rss_mb()
    calls = 0

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += len(x)
        return lm.model(x)

    started = time.perf_counter()
    with rasterio.open(stack) as src:
        image = src.read()
        profile = src.profile
    x = (image.astype(np.float32) - lm.mean[:, None, None]) / lm.std[:, None, None]
    x *= image.any(axis=0)
    del image
    with torch.no_grad():
        probs = tiled.tiled_inference(
            forward, torch.from_numpy(x)[None], crop=TILE, stride=TILE - OVERLAP, batch_size=batch, device="cpu"
        )
    ids = probs[0].argmax(dim=0).numpy().astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", predictor=1, interleave="band")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(ids, 1)
    return {
        "seconds": time.perf_counter() - started,
        "windows": calls,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": True,
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path) -> float:
    with rasterio.open(a) as da, rasterio.open(b) as db:
        return float((da.read(1) == db.read(1)).mean())


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def export(ckpt: Path, out: Path) -> Path:
    from landcover.inference.onnx_export import export_onnx

    export_onnx(ckpt, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=size, nargs="+", default=[(2048, 2048)], help="WxH scenes")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--terratorch-wheel", type=Path, help="terratorch-1.2.13-py3-none-any.whl (else no peer)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every runner; the median time is reported")
    parser.add_argument("--workdir", type=Path, help="keep stacks and models here between runs")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, extra, model, stack, out, batch = args.child
        if kind in PEERS:
            result = child_terratorch(Path(extra), Path(model), Path(stack), Path(out), int(batch), kind != PEERS[0])
        else:
            result = child_landcover(kind, Path(model), Path(stack), Path(out), int(batch))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp_:
        work = args.workdir or Path(tmp_)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = work / "bench.ckpt"
        if not ckpt.exists():
            make_checkpoint(ckpt)
        onnx = (
            export(ckpt, work / "bench.onnx")
            if "onnx" in args.engines and not (work / "bench.onnx").exists()
            else work / "bench.onnx"
        )
        print(f"{os.cpu_count()} cores, {_cpu()}; batch {args.batch}", flush=True)
        rows = []
        for w, h in args.size:
            stack = work / f"stack_{w}x{h}.tif"
            if not stack.exists():
                make_stack(stack, w, h)
            runs = [(e, ckpt if e != "onnx" else onnx, "-") for e in args.engines]
            if args.terratorch_wheel and not args.no_peer:
                runs += [(peer, ckpt, str(args.terratorch_wheel)) for peer in PEERS]
            rounds: dict[str, list[dict]] = {kind: [] for kind, _, _ in runs}
            for _ in range(args.repeat):  # rounds interleave the runners, so a slow spell of the machine hits all
                for kind, model, extra in runs:
                    out = work / f"{kind}_{w}x{h}.tif"
                    rounds[kind].append(run_child(kind, extra, str(model), str(stack), str(out), str(args.batch)))
            results = {}
            for kind, done in rounds.items():
                results[kind] = res = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]  # the median run
                res["all_seconds"] = [round(r["seconds"], 2) for r in done]
                res["agreement"] = agreement(work / f"{kind}_{w}x{h}.tif", work / f"{args.engines[0]}_{w}x{h}.tif")
            peer, tuned_peer = results.get("terratorch"), results.get("terratorch-reuse")
            for kind, res in results.items():
                mpx = w * h / 1e6
                line = (
                    f"{w}x{h} {kind:>17}: {res['seconds']:7.1f} s {mpx / res['seconds']:6.3f} Mpx/s "
                    f"{res['windows']:5d} windows, peak RSS {res['peak_rss_mb']:6.0f} MB (before pixels "
                    f"{res['rss_before_mb']:4.0f} MB), same class as {args.engines[0]}: {res['agreement']:.4%}"
                )
                if peer:
                    line += f", throughput vs TerraTorch x{peer['seconds'] / res['seconds']:.2f}"
                if tuned_peer:
                    line += f" (vs TerraTorch with our malloc tuning x{tuned_peer['seconds'] / res['seconds']:.2f})"
                if kind == "onnx":
                    line += f", torch imported: {res['torch_imported']}"
                if args.repeat > 1:
                    line += f"; rounds {res['all_seconds']} s"
                print(line, flush=True)
                rows.append({"size": [w, h], "runner": kind, **res})
        print(json.dumps(rows))


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
