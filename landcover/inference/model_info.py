"""What prediction needs to know about a model, without the model: bands, normalisation, nomenclature, tile
size, resolution, processing level. Read from a checkpoint's ``landcover`` section or from the same section
stored in an exported ONNX file; importing this module imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landcover.errors import ModelError
from landcover.nomenclature import NOMENCLATURES, Nomenclature, nomenclature


@dataclass
class ModelInfo:
    """Everything prediction needs from a checkpoint's ``landcover`` section."""

    task: str  # 'segmentation' | 'classification'
    bands: list[str]
    nomenclature: Nomenclature
    tile_size: int
    mean: np.ndarray
    std: np.ndarray
    resolution: float = 10.0
    label_mode: str = "single"
    reader: dict[str, Any] = field(default_factory=dict)  # ingest settings: resampling, harmonize, scl_invalid, clouds
    sha256: str | None = None
    path: str | None = None
    level: str = "unknown"  # processing level of the training data: L1C, L2A, mixed or unknown (older checkpoints)
    context: int = 0  # pixels a per-pixel baseline's features need on each side (0: a CNN)
    composite: dict[str, Any] | None = None  # the compositing recipe of a multi-date model (ingest's `composite`)

    @classmethod
    def parse(
        cls, meta: dict[str, Any], *, where: str = "checkpoint", sha256: str | None = None, path: str | None = None
    ) -> ModelInfo:
        """A checkpoint's ``landcover`` section (raises ModelError if incomplete)."""
        try:
            classes = sorted(meta["nomenclature"]["classes"], key=lambda c: int(c["id"]))
            name = str(meta["nomenclature"]["name"])
            nom = Nomenclature(
                name,
                tuple(str(c["code"]) for c in classes),
                tuple(str(c["name"]) for c in classes),
                tuple((int(c["rgb"][0]), int(c["rgb"][1]), int(c["rgb"][2])) for c in classes),
                nomenclature(name).lut if name in NOMENCLATURES else np.zeros(0, np.uint16),
            )
            bands = [str(b) for b in meta["bands"]]
            mean, std = _normalization(meta, len(bands))
            settings = meta.get("dataset_settings") or {}
            reader = {
                k: settings[k]
                for k in ("resampling", "harmonize", "scl_invalid", "clouds")
                if settings.get(k) is not None
            }
            return ModelInfo(
                str(meta["task"]),
                bands,
                nom,
                int(meta["tile_size"]),
                mean,
                std,
                float(meta.get("resolution") or 10.0),
                str(meta.get("label_mode") or "single"),
                reader,
                sha256,
                path,
                str(meta.get("processing_level") or "unknown"),
                int(meta.get("context") or 0),
                settings.get("composite"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(
                f"the landcover section of {where} is incomplete ({exc!r}); use a checkpoint "
                "written by `landcover train` (RUN/checkpoints/best.ckpt) or a model `landcover export` wrote"
            ) from exc

    def info(self) -> ModelInfo:
        """These facts alone (a copy without any model attached)."""
        return ModelInfo(**{f: getattr(self, f) for f in ModelInfo.__dataclass_fields__})


def _normalization(meta: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-band mean and std the model was trained with (modes 'dataset' and 'weights' record them; 'none'
    is x / 10000, whatever older checkpoints recorded)."""
    norm = meta.get("normalization") or {}
    mode = norm.get("mode") or ((meta.get("config") or {}).get("data") or {}).get("normalization")
    if mode == "none":
        return np.zeros(n, np.float32), np.full(n, 10000.0, np.float32)
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    if mean.shape != (n,) or std.shape != (n,):
        raise ValueError(f"normalization has {mean.size} values for {n} bands")
    return mean, std
