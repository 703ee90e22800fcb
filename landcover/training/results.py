"""What :func:`landcover.training.train.train` returns: the run's fixed facts as fields, its scores as a dict."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainResult:
    """A finished run (rank 0). ``metrics``: the best checkpoint's validation scores, whose keys depend on the
    task and the dataset (``split``, ``val/miou``, ``val/loss``... ``confusion_matrix``, ``per_class_iou``).

    ``to_dict()`` is the content of the run's ``metrics.json``: the scores, then the facts, in this order.
    """

    best_checkpoint: str  # relative to the run folder, e.g. checkpoints/best.ckpt
    best_epoch: int
    stopped_epoch: int
    early_stopped: bool
    parameters: int
    monitor: str
    train_seconds: float
    world_size: int
    train_samples_per_second: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def best_score(self) -> float:
        """The monitored metric of the best checkpoint (nan when the metrics lack it)."""
        return float(self.metrics.get(self.monitor, float("nan")))

    def to_dict(self) -> dict[str, Any]:
        facts = {name: getattr(self, name) for name in FACT_KEYS}
        return {**self.metrics, **facts}

    def to_json(self) -> str:
        """The text of ``metrics.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


FACT_KEYS = (
    "best_checkpoint",
    "best_epoch",
    "stopped_epoch",
    "early_stopped",
    "parameters",
    "monitor",
    "train_seconds",
    "world_size",
    "train_samples_per_second",
)
