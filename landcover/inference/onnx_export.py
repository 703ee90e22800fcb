"""``landcover export``: a checkpoint as an ONNX model that runs without PyTorch (onnxruntime, QGIS Deepness).

The graph takes raw windows ``image`` (N, C, H, W) float32, harmonised reflectance x 10000 as ingest writes
it (0 in every band = no data), normalises them with :func:`landcover.inference.torch_engine.normalise` (the
very function of predict's PyTorch engine), runs the network and returns ``probabilities`` (softmax over the
classes; sigmoid for multi-label classification). Batch and spatial size are dynamic.

Every export is verified before anything is written: onnxruntime against predict's PyTorch engine on windows
(real ones from ``check``, else deterministic synthetic ones), at two sizes and two batch sizes; a difference of
probabilities above 1e-4 or an argmax agreement below 99.99 % refuses the export (ModelError). The file is
written atomically and carries the checkpoint's ``landcover`` section and flat keys (including the Deepness
QGIS plugin's) in its ``metadata_props``.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript; the TorchScript exporter is deprecated).
Both exporters give the same probabilities as PyTorch to ~1e-5 for an smp U-Net with dynamic batch and spatial
size *when the model is in eval mode*: a reference left in train mode normalises with each batch's own BatchNorm
statistics while the exported graph uses the running ones (measured: max abs difference 0.40, argmax agreement
12 %). The wrapper is exported in eval mode and compared with predict's engine, which runs eval mode too.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landcover.errors import ConfigError, ModelError, OutputExistsError
from landcover.inference.checkpoint import LoadedModel, load_checkpoint
from landcover.inference.onnx_engine import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, OnnxEngine, session_options
from landcover.inference.predict import window_geometry
from landcover.inference.torch_engine import TorchEngine, normalise
from landcover.io.outputs import atomic_output
from landcover.models.safeload import load_torch_file
from landcover.version import __version__

DEFAULT_OPSET = 18
MAX_ABS_DIFF = 1e-4  # of probabilities, onnxruntime vs PyTorch
MIN_ARGMAX_AGREEMENT = 0.9999  # share of pixels (segmentation) or windows (classification) with the same argmax
SPATIAL = "size"  # the name of both spatial dimensions: Deepness accepts only square outputs (H == W by name)
HINT = "point at RUN/checkpoints/best.ckpt of a `landcover train` run"


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote and how it was verified."""

    path: str
    sha256: str  # of the .onnx file
    checkpoint: str
    checkpoint_sha256: str
    task: str
    label_mode: str
    bands: tuple[str, ...]
    classes: int
    opset: int
    dynamic_spatial: bool
    window: int  # predict's default window side (px) for this model
    overlap: int  # and overlap (px)
    checked_on: str  # 'synthetic windows' or the scene/stack of ``check``
    sizes: tuple[int, ...]  # window sides verified
    batches: tuple[int, ...]  # batch sizes verified
    max_abs_diff: float
    argmax_agreement: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


class ProbabilityModel(nn.Module):
    """Raw windows -> probabilities: predict's normalisation, the network, softmax (or sigmoid)."""

    def __init__(self, lm: LoadedModel):
        super().__init__()
        self.model = lm.model
        self.register_buffer("mean", torch.from_numpy(lm.mean.reshape(1, -1, 1, 1).astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(lm.std.reshape(1, -1, 1, 1).astype(np.float32)))
        self.sigmoid = lm.task == "classification" and lm.label_mode == "multilabel"

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(normalise(image, self.mean, self.std)).float()
        return torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: str | Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to the ONNX file ``out`` (verified first; nothing is written if it fails)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx (e.g. {out.with_suffix('.onnx').name})")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    if not 18 <= opset <= 23:  # torch's exporter implements 18 and later (17 would silently stay 18)
        raise ConfigError(f"--opset {opset}: the exporter writes ONNX opsets 18 to 23; pass one of them (default 18)")
    section = _landcover_section(checkpoint)
    lm = load_checkpoint(checkpoint)
    window, overlap = window_geometry(lm, None, None, 1)
    sizes = _verification_sizes(lm, window)
    proto, dynamic = _export(lm, opset, sizes[0])
    _add_metadata(proto, section, lm, window, overlap)
    data = _checked(proto)
    windows = _windows(lm, sizes, check)
    diff, agreement = _verify(lm, data, windows)
    with atomic_output(out, overwrite=overwrite, needed=len(data)) as tmp:
        tmp.write_bytes(data)
    return ExportResult(
        path=str(out),
        sha256=hashlib.sha256(data).hexdigest(),
        checkpoint=str(checkpoint),
        checkpoint_sha256=str(lm.sha256),
        task=lm.task,
        label_mode=lm.label_mode,
        bands=tuple(lm.bands),
        classes=lm.nomenclature.num_classes,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        dynamic_spatial=dynamic,
        window=window,
        overlap=overlap,
        checked_on=str(check) if check else "synthetic windows",
        sizes=tuple(sorted({w.shape[-1] for w in windows})),
        batches=tuple(sorted({len(w) for w in windows})),
        max_abs_diff=diff,
        argmax_agreement=agreement,
        bytes=len(data),
    )


def _landcover_section(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``landcover`` section (refused for the LightGBM baseline, which has no ONNX path here)."""
    ckpt = load_torch_file(checkpoint, "checkpoint", HINT) if checkpoint.is_file() else None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("landcover"), dict):
        if ckpt is None:
            raise ModelError(f"checkpoint {checkpoint} does not exist; {HINT}")
        raise ModelError(f"{checkpoint} is not a landcover checkpoint (it has no 'landcover' section); {HINT}")
    section = dict(ckpt["landcover"])
    if (section.get("model") or {}).get("arch") == "lightgbm":
        raise ConfigError(
            f"{checkpoint} is the LightGBM pixel baseline: it cannot be exported to ONNX (its neighbourhood "
            "features and booster have no converter here); predict it with the checkpoint itself"
        )
    return section


def _verification_sizes(lm: LoadedModel, window: int) -> list[int]:
    """Two window sides: predict's default and a larger one (segmentation: 256 and 320 px at least)."""
    if lm.task == "segmentation":
        return [window, window + 64] if window != 256 else [256, 320]
    return [lm.tile_size, lm.tile_size + 32]


def _export(lm: LoadedModel, opset: int, size: int) -> tuple[Any, bool]:
    """The ModelProto of :class:`ProbabilityModel` (dynamic batch and, if the model allows, spatial size)."""
    wrapper = ProbabilityModel(lm).eval()  # eval: BatchNorm's running statistics, no dropout
    example = torch.full((2, len(lm.bands), size, size), 1000.0)
    batch, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "height", "width"))
    attempts = [({0: batch, 2: height, 3: width}, True), ({0: batch}, False)]
    if lm.task == "segmentation":
        attempts = attempts[:1]  # a map needs any window size
    failure: Exception | None = None
    for shapes, dynamic in attempts:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    wrapper,
                    (example,),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes=(shapes,),
                    verbose=False,
                )
            if program is not None:
                return program.model_proto, dynamic
        except Exception as exc:  # the exporter's errors have many types; the last one is reported
            failure = exc
    first = str(failure).strip().splitlines()[0][:200] if failure else "unknown error"
    raise ModelError(f"the ONNX exporter cannot convert this model ({first}); {HINT} with a supported model.arch")


def _checked(proto: Any) -> bytes:
    """The serialised model after onnx.checker (full check, with shape inference)."""
    import onnx

    data: bytes = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:
        raise ModelError(f"the exported graph fails onnx.checker ({str(exc).splitlines()[0][:200]})") from exc
    return data


def _add_metadata(proto: Any, section: dict[str, Any], lm: LoadedModel, window: int, overlap: int) -> None:
    """The checkpoint's landcover section and the flat keys (JSON values) in ``metadata_props``."""
    nom, bands = lm.nomenclature, list(lm.bands)
    flat: dict[str, Any] = {
        METADATA_KEY: section,
        "task": lm.task,
        "label_mode": lm.label_mode,
        "bands": bands,
        "input": "image (N, C, H, W) float32: harmonised reflectance x 10000 (uint16 values of landcover ingest), "
        "bands in the order of 'bands', 0 in every band = no data; normalisation is inside the graph",
        "output": f"{OUTPUT_NAME} (N, K, H, W) or (N, K) float32: "
        + ("sigmoid per class" if lm.task == "classification" and lm.label_mode == "multilabel" else "softmax"),
        "normalization": {"mean": lm.mean.tolist(), "std": lm.std.tolist(), "in_graph": True},
        "nomenclature": nom.name,
        "class_codes": list(nom.codes),
        "class_colors": [list(c) for c in nom.colors],
        "class_names": {str(i): name for i, name in enumerate(nom.class_names)},  # Deepness: {"0": name}
        "resolution_m": lm.resolution,
        "resolution": lm.resolution * 100,  # Deepness: centimetres per pixel
        "tile_size": window,  # Deepness (its code); predict's default window
        "tiles_size": window,  # Deepness (its documentation)
        "overlap_px": overlap,
        "tiles_overlap": round(100 * overlap / window),  # Deepness: percent of the tile
        # Deepness divides every value by 255, then standardises: mean 0, std 1/255 gives the graph raw values
        "standardization_mean": [0.0] * len(bands),
        "standardization_std": [1 / 255] * len(bands),
        "processing_level": lm.level,
        "landcover_version": __version__,
        "checkpoint_sha256": lm.sha256,
    }
    if lm.task == "segmentation":  # Deepness' model class for per-pixel class probabilities, and its settings:
        flat["model_type"] = "Segmentor"
        flat["seg_thresh"] = 0.0  # it zeroes probabilities below this, then argmaxes: any other value mislabels
        flat["seg_small_segment"] = 0  # its median filter of the class map: none (predict has none)
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name, proto.producer_version = "landcover", __version__
    proto.doc_string = f"landcover {lm.task} model, {len(bands)} bands {','.join(bands)} -> {nom.name}"
    for value in (*proto.graph.input, *proto.graph.output):  # both spatial dimensions share one name (Deepness)
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].dim_param:
            dims[2].dim_param = dims[3].dim_param = SPATIAL


def synthetic_windows(lm: LoadedModel, size: int, batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic raw windows (uint16) spanning the normalised range (mean +- 3 std), with a no-data block
    (0 in every band) and pixels where a single band is 0 (data)."""
    rng = np.random.default_rng(seed + size * 31 + batch)
    c = len(lm.bands)
    z = rng.uniform(-3, 3, (batch, c, size, size)).astype(np.float32)
    raw = np.clip(np.rint(lm.mean.reshape(1, c, 1, 1) + z * lm.std.reshape(1, c, 1, 1)), 1, 65535).astype(np.uint16)
    raw[0, :, : size // 4, : size // 4] = 0
    raw[-1, 0, size // 2 :, size // 2 :] = 0
    return raw


def real_windows(path: str | Path, lm: LoadedModel, size: int, batch: int) -> np.ndarray:
    """``batch`` raw windows of ``size`` px (uint16 or float32, the model's bands) from the scene or ingested
    stack at ``path``, spread over its first rows of windows (reflect-padded where the scene is smaller)."""
    import contextlib

    from landcover.inference.feeder import open_source

    with contextlib.closing(open_source(path, lm)) as source:
        img, _, _ = source.rows(0, min(source.grid.height, 2 * size))
    pad_h, pad_w = max(0, size - img.shape[1]), max(0, size - img.shape[2])
    if pad_h or pad_w:
        img = np.pad(img, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
    h, w = img.shape[1], img.shape[2]
    spots = [(r, c) for r in range(0, h - size + 1, size // 2) for c in range(0, w - size + 1, size // 2)]
    picks = [spots[int(i)] for i in np.linspace(0, len(spots) - 1, batch).round()]
    return np.stack([img[:, r : r + size, c : c + size] for r, c in picks])


def _windows(lm: LoadedModel, sizes: Sequence[int], check: str | Path | None) -> list[np.ndarray]:
    """The verification batches: each size at batch 1 and 3, from ``check`` or synthetic."""
    make = synthetic_windows if check is None else (lambda m, s, b: real_windows(check, m, s, b))
    return [make(lm, size, batch) for size in sizes for batch in (1, 3)]


def compare(reference: np.ndarray, other: np.ndarray, multilabel: bool = False) -> tuple[float, float]:
    """Max absolute difference of two probability arrays and their argmax (or >0.5 decision) agreement."""
    diff = float(np.abs(reference.astype(np.float64) - other.astype(np.float64)).max())
    if multilabel:
        agreement = float(((reference > 0.5) == (other > 0.5)).mean())
    else:
        agreement = float((reference.argmax(axis=1) == other.argmax(axis=1)).mean())
    return diff, agreement


def _verify(lm: LoadedModel, data: bytes, windows: list[np.ndarray]) -> tuple[float, float]:
    """onnxruntime vs predict's PyTorch engine (CPU, float32) on every batch; ModelError beyond the tolerances."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    engine = OnnxEngine(session, lm.info())
    reference = TorchEngine(lm, torch.device("cpu"), "fp32")
    multilabel = lm.task == "classification" and lm.label_mode == "multilabel"
    worst, matches, total = 0.0, 0.0, 0
    for raw in windows:
        want = reference.probabilities(raw).float().numpy()
        got = engine.probabilities(raw)
        if got.shape != want.shape:
            raise ModelError(f"the exported model returns shape {got.shape} where PyTorch returns {want.shape}")
        diff, agreement = compare(want, got, multilabel)
        n = want[:, 0].size
        worst, matches, total = max(worst, diff), matches + agreement * n, total + n
    agreement = matches / total
    if worst > MAX_ABS_DIFF or agreement < MIN_ARGMAX_AGREEMENT:
        raise ModelError(
            f"the exported model differs from the checkpoint (max abs difference of probabilities {worst:.2e} > "
            f"{MAX_ABS_DIFF:g} or argmax agreement {agreement:.4%} < {MIN_ARGMAX_AGREEMENT:.2%}); nothing was "
            "written: report this model (--debug shows the details)"
        )
    return worst, agreement
