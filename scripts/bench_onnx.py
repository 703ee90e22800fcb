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

from landcover.inference.onnx_engine import OnnxEngine, usable_cores
from landcover.inference.onnx_export import export_onnx, synthetic_windows
from landcover.inference.torch_engine import TorchEngine
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
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


def timed_round_robin(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, interleaved (one call of each per round) so that other processes on a shared
    machine slow every setting alike; a warm-up call each first (allocations, kernel choice)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            t = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - t)
    return {label: statistics.median(t) for label, t in times.items()}


def session(path: Path, level: str, threads: int, spinning: bool, nhwc: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()  # as the engine's session_options(), each setting here varied
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
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
        torch.set_num_threads(cores)
        reference = TorchEngine.load(ckpt, device="cpu")
        runs: dict[str, tuple[int, Callable[[], object]]] = {
            "pytorch channels-last fp32 (TorchEngine)": (args.batch, lambda: reference.probabilities(raw[args.batch])),
            "OnnxEngine (the engine as predict runs it)": (args.batch, lambda: engine.probabilities(raw[args.batch])),
        }
        x = raw[args.batch].astype(np.float32)
        settings = [
            ("ORT_ENABLE_ALL", cores, True, True),  # onnxruntime's defaults (spinning) with every optimisation
            ("ORT_ENABLE_ALL", cores, False, True),  # the engine's settings
            ("ORT_ENABLE_ALL", cores, True, False),
            ("ORT_ENABLE_LAYOUT", cores, True, True),
            ("ORT_ENABLE_EXTENDED", cores, True, True),
            ("ORT_ENABLE_BASIC", cores, True, True),
            ("ORT_ENABLE_ALL", 1, True, True),
        ]
        for level, threads, spinning, nhwc in settings:
            s = session(onnx_path, level, threads, spinning, nhwc)
            label = f"onnxruntime {level} threads={threads} spinning={int(spinning)} nhwc={int(nhwc)}"
            runs[label] = (args.batch, lambda s=s: s.run(None, {"image": x}))
        default = session(onnx_path, "ORT_ENABLE_ALL", cores, True, True)
        for batch in sorted({4, 8, 16} - {args.batch}):
            xb = raw[batch].astype(np.float32)
            runs[f"onnxruntime ORT_ENABLE_ALL threads={cores} batch {batch}"] = (
                batch,
                lambda xb=xb: default.run(None, {"image": xb}),
            )
        with torch.inference_mode():
            medians = timed_round_robin({label: run for label, (_, run) in runs.items()}, args.repeats)
        for label, seconds in medians.items():
            batch = runs[label][0]
            print(f"{label:<60} batch {batch:>2}: {seconds:6.3f} s/batch {1000 * seconds / batch:6.1f} ms/window")


if __name__ == "__main__":
    main()
