"""Checkpoint selection that a noisy validation metric does not sway: an exponential moving average.

On a small validation split the val mIoU jumps by several points from epoch to epoch (0.05 on the demo's
clip), so "the best epoch" is partly the luckiest one. :class:`SmoothedMonitor` keeps
``s_t = w * s_(t-1) + (1 - w) * m_t`` of the task's monitor ``m`` and publishes it as ``<monitor>_smooth``,
which the best-checkpoint callback and early stopping follow (``trainer.monitor_smoothing`` = w; 0 turns
it off). Its state travels in the checkpoints, so a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


def smoothed_name(monitor: str) -> str:
    return f"{monitor}_smooth"


class SmoothedMonitor(pl.Callback):
    """Publishes the moving average of ``monitor`` after each validation (before checkpointing reads it)."""

    def __init__(self, monitor: str, weight: float) -> None:
        self.monitor, self.weight = monitor, float(weight)
        self.value: float | None = None

    @property
    def name(self) -> str:
        return smoothed_name(self.monitor)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        current = float(trainer.callback_metrics[self.monitor])
        self.value = current if self.value is None else self.weight * self.value + (1 - self.weight) * current
        trainer.callback_metrics[self.name] = torch.tensor(self.value)
        for logger in trainer.loggers:
            logger.log_metrics({self.name: self.value}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "weight": self.weight}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.value = state_dict.get("value")


__all__ = ["SmoothedMonitor", "smoothed_name"]
