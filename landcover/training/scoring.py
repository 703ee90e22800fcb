"""A checkpoint of `landcover train` reloaded alone and scored on a split of its dataset (val or test): the scores a
run records in metrics.json, a sweep's test scores and a cross-validation fold's, for a CNN or the LightGBM baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from landcover.evaluation.confusion import scores_from_confusion
from landcover.models.safeload import load_torch_file
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.task import task_class

if TYPE_CHECKING:
    pass


def evaluate_checkpoint(
    path: str | Path,
    data: LandcoverDataModule,
    *,
    split: str = "val",
    trainer_kwargs: dict[str, Any] | None = None,
    counts_path: str | Path | None = None,
) -> dict[str, Any]:
    """Reload a checkpoint alone and score it on a split (val or test) of ``data``.

    Segmentation scores get block-bootstrap intervals over the split's tiles (``{split}/intervals``);
    ``counts_path``: where to save the per-tile counts (``{split}_counts.npz``) for paired comparisons.
    """
    import lightning.pytorch as pl

    from landcover.training.tile_counts import PatchOutputs, TileCounts, present_class_scores, split_intervals

    raw = load_torch_file(path, "checkpoint", "evaluate a checkpoint of `landcover train`")
    if ((raw.get("landcover") or {}).get("model") or {}).get("arch") == "lightgbm":
        from landcover.training.baseline import evaluate_baseline

        return evaluate_baseline(raw, data, split, counts_path)
    task = task_class(raw["landcover"]["task"]).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    data.use_normalization(raw["landcover"].get("normalization") or {})  # the inputs it was trained on
    collect: TileCounts | PatchOutputs = (
        TileCounts(task.num_classes) if task.task_name == "segmentation" else PatchOutputs()
    )
    trainer = pl.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[collect],
        **(trainer_kwargs or {"accelerator": "cpu", "devices": 1}),
    )
    data.setup("validate" if split == "val" else "test")
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    if split == "val":
        results = trainer.validate(task, dataloaders=loader, verbose=False)[0]
    else:
        results = trainer.test(task, dataloaders=loader, verbose=False)[0]
    metrics: dict[str, Any] = {"split": split, **{k: float(v) for k, v in results.items()}}
    if task.last_confusion is not None:
        cm = task.last_confusion
        metrics["confusion_matrix"] = cm.tolist()
        scores = scores_from_confusion(cm.numpy(), class_names=task.hparams["class_names"])
        metrics["per_class_iou"] = {row["name"]: row["iou"] for row in scores["per_class"]}
        metrics[f"{split}/miou_reference"] = scores["miou_reference"]
    names = list(task.hparams["class_names"])
    if isinstance(collect, TileCounts):
        scheme = data.info.get("split_scheme") or {}
        metrics[f"{split}/intervals"] = split_intervals(collect, data.split_tiles(split), scheme, names, counts_path)
    else:
        metrics |= present_class_scores(
            collect, split, names, multilabel=getattr(task, "label_mode", "") == "multilabel"
        )
    return metrics
