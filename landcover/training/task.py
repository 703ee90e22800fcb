"""Lightning tasks: U-Net segmentation and ResNet tile classification.

The task owns the model (built by :mod:`landcover.models.build`), the loss, the optimiser and the metrics
(torchmetrics). Every checkpoint carries a ``landcover`` section with all that prediction needs
(bands, normalisation, nomenclature, tile size, model config, weight provenance), so
``landcover predict`` can rebuild the model from the checkpoint alone, without Lightning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from landcover.evaluation.confusion import scores_from_confusion
from landcover.models.build import build_model
from landcover.models.config import CHECKPOINT_FORMAT, ModelConfig
from landcover.models.encoders import encoder_of, parameter_groups, set_encoder_trainable
from landcover.nomenclature import IGNORE
from landcover.training.config import LossConfig, OptimConfig


class _Task(pl.LightningModule):
    """Shared model/optimiser/checkpoint plumbing of both tasks."""

    monitor: str
    task_name: str

    def __init__(
        self,
        *,
        model: dict,
        optim: dict,
        loss: dict,
        bands: list[str],
        class_names: list[str],
        meta: dict,
        class_weights: list[float] | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.model_validate(model)
        self.optim_cfg = OptimConfig.model_validate(optim)
        self.loss_cfg = LossConfig.model_validate(loss)
        self.num_classes = len(class_names)
        self.model, self.weight_provenance = build_model(
            self.model_cfg, bands, self.num_classes, load_weights=pretrained
        )
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.class_weights: torch.Tensor | None  # the buffer (moves with the module), for type checkers
        self.last_confusion: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @staticmethod
    def _metric(metrics: nn.ModuleDict, stage: str) -> Any:
        """The torchmetrics object of ``stage`` (a ModuleDict entry, typed as such for type checkers)."""
        return metrics[stage]

    # --- what each task defines -----------------------------------------------------------

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the loss and the metrics compare the logits with."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _update_metrics(self, logits: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        """Accumulate a batch into the metrics of ``stage`` (val or test)."""
        raise NotImplementedError

    def _log_epoch_scores(self, stage: str) -> None:
        """Compute, log and reset the metrics of ``stage`` at the end of an epoch."""
        raise NotImplementedError

    # --- the steps, shared ----------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), self._target(batch))
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_epoch=True,
            on_step=False,
            batch_size=len(batch["image"]),
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self(batch["image"])
        target = self._target(batch)
        self.log(f"{stage}/loss", self.loss(logits, target), on_epoch=True, batch_size=len(logits), sync_dist=True)
        self._update_metrics(logits, target, stage)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_scores("test")

    # --- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self):
        params = parameter_groups(self.model)
        groups = [
            {
                "params": params["encoder"],
                "lr": self.optim_cfg.lr * self.optim_cfg.encoder_lr_factor,
                "name": "encoder",
            },
            {"params": params["head"], "lr": self.optim_cfg.lr, "name": "decoder_head"},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)
        if self.optim_cfg.scheduler == "none":
            return optimizer
        if self.optim_cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=2, factor=0.3)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}
        epochs = max(1, int(self.trainer.max_epochs or 1))
        cosine: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs - self.optim_cfg.warmup_epochs)
        )
        if self.optim_cfg.warmup_epochs:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, self.optim_cfg.warmup_epochs)
            cosine = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [self.optim_cfg.warmup_epochs])
        return {"optimizer": optimizer, "lr_scheduler": cosine}

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.model_cfg.freeze_encoder_epochs
        set_encoder_trainable(self.model, not frozen)
        if frozen:  # keep the pretrained BatchNorm statistics too
            encoder_of(self.model).eval()

    # --- checkpoints ----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a reloaded task must not look for the pretrained weight file again
        checkpoint["hyper_parameters"]["pretrained"] = False
        checkpoint["landcover"] = {
            "format": CHECKPOINT_FORMAT,
            "task": self.task_name,
            **self.hparams["meta"],
            "bands": list(self.hparams["bands"]),
            "class_names": list(self.hparams["class_names"]),
            "model": self.model_cfg.model_dump(mode="json"),
            "weights": self.weight_provenance,
            "monitor": self.monitor,
        }

    def on_train_end(self) -> None:
        """Under DDP, each rank records a checksum of its weights (they must agree)."""
        if self.trainer.world_size > 1 and self.trainer.log_dir:
            digest = hashlib.sha256()
            for tensor in self.model.state_dict().values():
                digest.update(tensor.detach().cpu().numpy().tobytes())
            folder = Path(self.trainer.default_root_dir) / "ranks"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"rank{self.global_rank}.json").write_text(
                json.dumps(
                    {
                        "rank": self.global_rank,
                        "world_size": self.trainer.world_size,
                        "global_step": self.global_step,
                        "weights_sha256": digest.hexdigest(),
                    }
                )
            )


class SegmentationTask(_Task):
    """U-Net: cross-entropy (+ dice / focal) with ignore index 255; IoU from a confusion matrix."""

    task_name = "segmentation"
    monitor = "val/miou"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import segmentation_models_pytorch as smp

        self.ce = nn.CrossEntropyLoss(
            weight=self.class_weights, ignore_index=IGNORE, label_smoothing=self.loss_cfg.label_smoothing
        )
        self.dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE) if "dice" in self.loss_cfg.name else None
        self.focal = smp.losses.FocalLoss("multiclass", ignore_index=IGNORE) if "focal" in self.loss_cfg.name else None
        self.cm = nn.ModuleDict(
            {
                stage: torchmetrics.classification.MulticlassConfusionMatrix(self.num_classes, ignore_index=IGNORE)
                for stage in ("val", "test")
            }
        )

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not (mask != IGNORE).any():  # a batch without labels contributes nothing (but keeps the graph)
            return logits.sum() * 0.0
        total = logits.new_zeros(())
        if self.loss_cfg.name != "focal":
            total = total + self.ce(logits, mask)
        if self.dice is not None:
            total = total + self.dice(logits, mask)
        if self.focal is not None:
            total = total + self.focal(logits, mask)
        return total

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["mask"]

    def _update_metrics(self, logits: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        self._metric(self.cm, stage).update(logits.argmax(1), target)

    def _log_epoch_scores(self, stage: str) -> None:
        cm = self._metric(self.cm, stage).compute()  # synchronised across ranks by torchmetrics
        self._metric(self.cm, stage).reset()
        # the one definition of the scores, shared with `landcover evaluate` (0 when nothing was scored)
        scores = scores_from_confusion(cm.cpu().numpy(), class_names=self.hparams["class_names"])
        # the matrix is already summed over ranks, so every rank logs the same values
        self.log(f"{stage}/miou", scores["miou"] or 0.0, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/iou_micro", scores["iou_micro"] or 0.0, sync_dist=True)
        self.log(f"{stage}/accuracy", scores["overall_accuracy"] or 0.0, sync_dist=True)
        for row in scores["per_class"]:
            if row["iou"] is not None:  # the class occurred
                self.log(f"{stage}/iou/{row['name']}", row["iou"], sync_dist=True)
        self.last_confusion = cm.cpu()


class ClassificationTask(_Task):
    """ResNet per tile: multi-label (present classes, BCE) or single-label (dominant class, CE)."""

    task_name = "classification"

    def __init__(self, *, label_mode: Literal["multilabel", "single"] = "multilabel", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label_mode = label_mode
        self.monitor = "val/map_macro" if label_mode == "multilabel" else "val/f1_macro"
        k = self.num_classes
        if label_mode == "multilabel":
            self.criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=self.class_weights)
            make = lambda: torchmetrics.MetricCollection(  # noqa: E731
                {
                    "map_macro": torchmetrics.classification.MultilabelAveragePrecision(k, average="macro"),
                    "map_micro": torchmetrics.classification.MultilabelAveragePrecision(k, average="micro"),
                    "f1_macro": torchmetrics.classification.MultilabelF1Score(k, average="macro"),
                    "f1_micro": torchmetrics.classification.MultilabelF1Score(k, average="micro"),
                    "f1": torchmetrics.classification.MultilabelF1Score(k, average="none"),
                }
            )
        else:
            # target 255: a tile or crop without a labelled pixel, left out of the loss and the scores
            self.criterion = nn.CrossEntropyLoss(
                weight=self.class_weights, ignore_index=IGNORE, label_smoothing=self.loss_cfg.label_smoothing
            )
            make = lambda: torchmetrics.MetricCollection(  # noqa: E731
                {
                    "accuracy": torchmetrics.classification.MulticlassAccuracy(k, average="micro", ignore_index=IGNORE),
                    "f1_macro": torchmetrics.classification.MulticlassF1Score(k, average="macro", ignore_index=IGNORE),
                    "f1": torchmetrics.classification.MulticlassF1Score(k, average="none", ignore_index=IGNORE),
                }
            )
        self.metrics = nn.ModuleDict({"val": make(), "test": make()})

    def _target(self, batch: dict[str, Any]) -> torch.Tensor:
        label = batch["label"]
        return label.float() if self.label_mode == "multilabel" else label.long()

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.label_mode == "single" and not (target != IGNORE).any():  # nothing labelled: no loss
            return logits.sum() * 0.0  # (keeps the graph; cross-entropy would give NaN)
        return self.criterion(logits, target)

    def _update_metrics(self, logits: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        preds = torch.sigmoid(logits) if self.label_mode == "multilabel" else logits
        self._metric(self.metrics, stage).update(preds, target.long())

    def _log_epoch_scores(self, stage: str) -> None:
        values = self._metric(self.metrics, stage).compute()
        self._metric(self.metrics, stage).reset()
        per_class = values.pop("f1")
        for name, value in values.items():
            self.log(f"{stage}/{name}", float(value), prog_bar=name in ("map_macro", "f1_macro"), sync_dist=True)
        for name, value in zip(self.hparams["class_names"], per_class.tolist(), strict=True):
            self.log(f"{stage}/f1/{name}", value, sync_dist=True)


def task_class(name: str) -> type[_Task]:
    return {"segmentation": SegmentationTask, "classification": ClassificationTask}[name]
