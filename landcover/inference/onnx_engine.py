"""The onnxruntime engine of ``predict``: a model ``landcover export`` wrote (``.onnx``), run on the CPU.

The exported graph holds the whole arithmetic of the PyTorch engine (normalisation with the checkpoint's
statistics, no-data pixels zeroed, the network, softmax or sigmoid), so this engine only feeds raw windows and
reads probabilities. Importing this module imports no torch (a predict from an ONNX file is a torch-free process).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from landcover.errors import ModelError
from landcover.inference.model_info import ModelInfo

INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
METADATA_KEY = "landcover"  # the checkpoint's landcover section, as JSON, in the model's metadata_props
EXPORT_HINT = "export a checkpoint with `landcover export RUN/checkpoints/best.ckpt --out model.onnx`"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity (macOS)
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None) -> Any:
    """onnxruntime's session options of this engine: every graph optimisation, ``threads`` intra-op threads
    (default the usable cores), one inter-op thread (the graph is one chain), and no spinning: idle workers sleep
    instead of busy-waiting, leaving the cores to predict's reader thread and other processes
    (scripts/bench_onnx.py: 0.26 vs 0.32 s per 256-px window on the shared 2-core machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or usable_cores())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no optimiser chatter on stderr
    return options


class OnnxEngine:
    """An exported landcover model run by onnxruntime on the CPU (float32)."""

    name, device, backend, precision = "onnxruntime", "cpu", "numpy", "fp32"
    classes_last = False

    def __init__(self, session: Any, info: ModelInfo):
        self.session, self.info = session, info
        self.output = OUTPUT_NAME if OUTPUT_NAME in [o.name for o in session.get_outputs()] else None

    @classmethod
    def load(cls, path: Path, threads: int | None = None) -> OnnxEngine:
        """The engine of the ``.onnx`` file at ``path`` (ModelError if it is not a model `landcover export` wrote)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"ONNX model {path} does not exist; {EXPORT_HINT}")
        with path.open("rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        try:
            session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path} is not a readable ONNX model ({first}); {EXPORT_HINT}") from exc
        info = ModelInfo.parse(_landcover_section(session, path), where=str(path), sha256=sha256, path=str(path))
        _check_signature(session, info, path)
        return cls(session, info)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """(B, C, H, W) raw windows (uint16 or float32 reflectance x 10000, 0 in every band = no data) ->
        (B, K, H, W) probabilities (segmentation) or (B, K) (classification), float32."""
        if raw.ndim != 4 or raw.shape[1] != len(self.info.bands):
            raise ModelError(
                f"windows of shape {tuple(raw.shape)}: this model takes (batch, {len(self.info.bands)} bands "
                f"{','.join(self.info.bands)}, height, width)"
            )
        x = np.ascontiguousarray(raw, dtype=np.float32)
        (out,) = self.session.run([self.output] if self.output else None, {INPUT_NAME: x})
        return np.asarray(out, dtype=np.float32)


def _landcover_section(session: Any, path: Path) -> dict[str, Any]:
    """The checkpoint's ``landcover`` section stored in the model's metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelError(
            f"{path} is an ONNX model without landcover metadata (bands, normalisation, classes); {EXPORT_HINT}"
        )
    try:
        section = json.loads(meta[METADATA_KEY])
    except ValueError as exc:
        raise ModelError(f"the landcover metadata of {path} is not JSON ({exc}); {EXPORT_HINT}") from exc
    if not isinstance(section, dict):
        raise ModelError(f"the landcover metadata of {path} is not a JSON object; {EXPORT_HINT}")
    return section


def _check_signature(session: Any, info: ModelInfo, path: Path) -> None:
    """One float input ``image`` (N, C, H, W) with the model's band count."""
    inputs = session.get_inputs()
    bands = len(info.bands)
    ok = len(inputs) == 1 and inputs[0].name == INPUT_NAME and inputs[0].type == "tensor(float)"
    ok = ok and len(inputs[0].shape) == 4 and inputs[0].shape[1] == bands
    if not ok:
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise ModelError(
            f"{path} takes {got or 'no input'}, not one float32 input '{INPUT_NAME}' (batch, {bands}, height, "
            f"width); {EXPORT_HINT}"
        )
