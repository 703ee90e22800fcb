"""Engines: what turns raw windows into class probabilities for ``predict``.

* ``torch``: a ``landcover train`` checkpoint (or its LightGBM baseline) run by PyTorch; on CPU in channels-last
  memory format (the same float32 arithmetic, faster convolutions), optionally bf16; on CUDA with autocast.
* ``onnxruntime``: a model ``landcover export`` wrote (``.onnx``), run by onnxruntime: importing it imports no
  torch, so a predict from an ONNX file is a torch-free process.

Every engine takes *raw* windows (harmonised reflectance x 10000, the values ingest writes, bands in the model's
order, 0 in every band = no data) and normalises them itself, with the statistics the model was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from landcover.errors import ConfigError
from landcover.inference.model_info import ModelInfo

if TYPE_CHECKING:
    from landcover.inference.checkpoint import LoadedModel

PRECISIONS = ("auto", "fp32", "bf16")
ONNX_SUFFIX = ".onnx"


class Engine(Protocol):
    """Raw windows -> class probabilities."""

    info: ModelInfo
    name: str  # 'torch' | 'onnxruntime'
    device: str  # 'cpu', 'cuda', ...
    backend: str  # the array library of probabilities(): 'torch' or 'numpy'
    precision: str  # 'fp32', 'bf16', 'fp16'
    classes_last: bool  # probabilities() are (B, K, H, W) views of channels-last memory (classes the fastest axis)

    def probabilities(self, raw: np.ndarray) -> Any:
        """(B, C, H, W) raw windows -> (B, K, H, W) probabilities (segmentation) or (B, K) (classification),
        float32 (or the autocast dtype) on the engine's device."""
        ...


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def open_engine(
    model: str | Path | LoadedModel | Engine,
    *,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
) -> Engine:
    """The engine of a checkpoint (``torch``), of an exported ``.onnx`` model (``onnxruntime``) or of a model
    already loaded; ``precision`` 'bf16' runs the model in bfloat16 (torch on a CPU with bf16 instructions, or
    CUDA), 'auto' is float32 on CPU and the autocast dtype on CUDA."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if hasattr(model, "probabilities") and hasattr(model, "backend"):
        return model  # type: ignore[return-value]
    if isinstance(model, (str, Path)) and is_onnx(model):
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--device {device}: ONNX models run on the CPU here; use --device cpu or a checkpoint")
        if precision == "bf16":
            raise ConfigError("--precision bf16 applies to checkpoints (PyTorch); an ONNX model runs in float32")
        from landcover.inference.onnx_engine import OnnxEngine

        return OnnxEngine.load(Path(model), threads=threads)
    from landcover.inference.torch_engine import TorchEngine

    return TorchEngine.load(model, device=device, precision=precision, threads=threads)
