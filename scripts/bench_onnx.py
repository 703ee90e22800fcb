"""Which onnxruntime settings make an exported U-Net/ResNet-18 (12 bands -> 44 classes) fastest on this CPU.

Exports a seeded random U-Net with ``landcover export`` (verified like any export), then times one model call on
the same raw windows under each setting: graph optimisation level, the NHWC layout transformer, intra-op threads,
spinning, batch size; and PyTorch (predict's TorchEngine, channels-last float32) for reference. Prints one line
per setting: seconds per batch of --batch windows (median of --repeats), and ms per 256-px window.

    python scripts/bench_onnx.py --size 256 --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from landcover.inference.onnx_engine import OnnxEngine, session_options, usable_cores
from landcover.inference.torch_engine import TorchEngine
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.models.onnx_export import export_onnx, synthetic_windows
from landcover.nomenclature import nomenclature

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), BANDS, 44, load_weights=False)
    meta = {
        "task": "segmentation",
        "bands": BANDS,
        "tile_size": 256,
        "nomenclature": nomenclature("level3").to_dict(),
        "normalization": {"mean": [1500.0] * 12, "std": [900.0] * 12},
        "model": ModelConfig().model_dump(mode="json"),
    }
    path = folder / "unet.ckpt"
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def timed(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def session(path: Path, level: str, threads: int, spinning: bool, nhwc: bool) -> ort.InferenceSession:
    options = session_options(threads)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    disabled = [] if nhwc else ["NhwcTransformer"]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp))
        result = export_onnx(ckpt, Path(tmp) / "unet.onnx")
        onnx_path = Path(result.path)
        print(f"exported {result.bytes / 1e6:.0f} MB, max abs diff {result.max_abs_diff:.1e}; {cores} usable cores")
        engine = OnnxEngine.load(onnx_path)
        raw = {b: synthetic_windows(engine.info, args.size, b) for b in {4, 8, 16, args.batch}}
        rows: list[tuple[str, int, float]] = []

        def record(label: str, batch: int, seconds: float) -> None:
            rows.append((label, batch, seconds))
            print(f"{label:<58} batch {batch:>2}: {seconds:6.3f} s/batch  {1000 * seconds / batch:6.1f} ms/window")

        torch.set_num_threads(cores)
        reference = TorchEngine.load(ckpt, device="cpu")
        with torch.inference_mode():
            record(
                "pytorch channels-last fp32 (TorchEngine)",
                args.batch,
                timed(lambda: reference.probabilities(raw[args.batch]), args.repeats),
            )
        x = raw[args.batch].astype(np.float32)
        settings = [
            ("ORT_ENABLE_ALL", cores, False, True),  # the engine's default (spinning off only here)
            ("ORT_ENABLE_ALL", cores, True, True),
            ("ORT_ENABLE_ALL", cores, True, False),
            ("ORT_ENABLE_LAYOUT", cores, True, True),
            ("ORT_ENABLE_EXTENDED", cores, True, True),
            ("ORT_ENABLE_BASIC", cores, True, True),
            ("ORT_ENABLE_ALL", 1, True, True),
        ]
        for level, threads, spinning, nhwc in settings:
            s = session(onnx_path, level, threads, spinning, nhwc)
            label = f"onnxruntime {level} threads={threads} spinning={int(spinning)} nhwc={int(nhwc)}"
            record(label, args.batch, timed(lambda s=s: s.run(None, {"image": x}), args.repeats))
        default = session(onnx_path, "ORT_ENABLE_ALL", cores, True, True)
        for batch in sorted({4, 8, 16} - {args.batch}):
            xb = raw[batch].astype(np.float32)
            record(
                f"onnxruntime ORT_ENABLE_ALL threads={cores} (batch size)",
                batch,
                timed(lambda xb=xb: default.run(None, {"image": xb}), args.repeats),
            )
        record(
            "OnnxEngine.load (the engine as predict runs it)",
            args.batch,
            timed(lambda: engine.probabilities(raw[args.batch]), args.repeats),
        )


if __name__ == "__main__":
    main()
