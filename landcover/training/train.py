"""``landcover train``: a Lightning Trainer from one validated YAML config.

A run folder holds everything about the run::

    config.yaml          the resolved config (file + command-line overrides)
    dataset.json         the dataset description it trained on
    checkpoints/best.ckpt, checkpoints/last.ckpt   self-contained for ``landcover predict``
    logs/                CSV and TensorBoard logs
    curves.png           loss and metric curves
    metrics.json         the best epoch's validation metrics (and confusion matrix / per-class scores,
                         ``val/intervals``: block-bootstrap intervals over the val tiles)
    val_counts.npz       per-tile counts of that evaluation (tile_ids, groups = split blocks, counts)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from landcover.cluster import check_slurm_training
from landcover.errors import ConfigError, ModelError, OutputExistsError
from landcover.io.outputs import atomic_output
from landcover.models.encoders import count_parameters
from landcover.models.input_transform import declared_input_transform
from landcover.models.safeload import load_torch_file
from landcover.sources.s2meta import dataset_level
from landcover.training.config import TrainConfig
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.results import FACT_KEYS, TrainResult
from landcover.training.scoring import evaluate_checkpoint
from landcover.training.task import task_class
from landcover.version import __version__

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger


def _precision(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _plot_curves(logs: Path, out: Path, monitor: str) -> None:
    """Loss and monitored-metric curves per epoch, from Lightning's CSV logs (one per resumed part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    parts = sorted(logs.glob("metrics.csv")) + sorted(
        logs.glob("resumed-*/metrics.csv"), key=lambda p: p.stat().st_mtime
    )
    frame = pd.concat([pd.read_csv(p) for p in parts]).groupby("epoch").mean(numeric_only=True)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for column in ("train/loss_epoch", "train/loss", "val/loss"):
        if column in frame and frame[column].notna().any():
            ax_loss.plot(frame.index, frame[column], marker="o", label=column.replace("_epoch", ""))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if monitor in frame:
        ax_metric.plot(frame.index, frame[monitor], marker="o", color="tab:green", label=monitor)
        ax_metric.set(xlabel="epoch", ylabel=monitor, title=monitor, ylim=(0, 1))
        ax_metric.legend()
    fig.tight_layout()
    with atomic_output(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _atomic_checkpoints() -> Any:
    """Lightning's checkpoint writer, writing each checkpoint under a hidden name next to it and renaming it when
    whole (Lightning's own one stages it in /tmp and copies it over, which leaves a truncated file on a full disk);
    a write failure is an OutputError naming the checkpoint."""
    import io

    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with atomic_output(Path(path), overwrite=True, needed=buffer.getbuffer().nbytes) as tmp:
                tmp.write_bytes(buffer.getbuffer())

    return AtomicCheckpointIO()


def train(
    cfg: TrainConfig, out: str | Path, *, resume: str | Path | None = None, overwrite: bool = False
) -> TrainResult | None:
    """Train ``cfg`` into the run folder ``out``; return the best checkpoint's scores and the run's facts
    (None on DDP ranks other than 0: rank 0 alone scores the run).

    ``resume``: a checkpoint to continue from, or ``"auto"``: continue the run in ``out`` if it has
    one (the checkpoint Lightning saved on SLURM's pre-emption signal, else ``last.ckpt``), else
    start it: what a requeued SLURM job needs. Under ``srun`` the job's tasks must match
    ``trainer.devices`` x ``trainer.num_nodes`` (checked first; Lightning would hang or fail).
    """
    import lightning.pytorch as pl

    out = Path(out)
    if cfg.data.dataset is None:
        raise ConfigError("no dataset: pass --dataset DIR (a folder made by landcover ingest) or set data.dataset")
    check_slurm_training(cfg.trainer.devices, cfg.trainer.num_nodes)
    if cfg.model.arch == "lightgbm":
        return _train_baseline(cfg, out, resume=resume, overwrite=overwrite)
    ckpt_path = _resume_path(out, resume)
    first = _launch_rank() == 0  # processes started by srun or Lightning's launcher all run this
    # (--resume auto without a checkpoint to continue from starts the run, e.g. one killed before its first)
    # (a run that failed before its first checkpoint, e.g. on a full disk, holds none: the rerun starts it)
    if ckpt_path is None and resume != "auto" and any((out / "checkpoints").glob("*.ckpt")) and not overwrite and first:
        raise OutputExistsError(
            f"{out} holds a run; pass --resume auto (or a checkpoint) to continue it, "
            "--overwrite to replace it, or another --out"
        )
    pl.seed_everything(cfg.trainer.seed, workers=True)
    data, task = _data_and_task(cfg)
    if ckpt_path is not None:
        _check_resume_fits(task, out, ckpt_path)
    # inputs are valid (dataset, checkpoints): only now is the run folder replaced or created
    if ckpt_path is None and overwrite and out.exists() and first:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if first:  # the resolved config and the dataset description travel with the run
        _write_run_inputs(out, cfg, data)
    trainer, checkpoint, early, csv_logger = _trainer(cfg, out, task.monitor, resumed=ckpt_path is not None)
    started = time.perf_counter()
    with warnings.catch_warnings():
        if ckpt_path is not None:  # a resumed run writes into its own checkpoint folder: not a warning
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path, weights_only=True)  # checked above; never unsafe
    fit_seconds = time.perf_counter() - started
    if trainer.world_size > 1:  # the final evaluation runs on rank 0 alone
        import torch.distributed as dist

        trainer.strategy.barrier()
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.global_rank != 0:  # only rank 0 scores the run and writes metrics.json
        return None
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else out / "checkpoints" / "last.ckpt"
    metrics = evaluate_checkpoint(
        best,
        data,
        trainer_kwargs={"accelerator": cfg.trainer.accelerator, "devices": 1},
        counts_path=out / "val_counts.npz",
    )
    result = TrainResult(
        best_checkpoint=best.resolve().relative_to(out.resolve()).as_posix(),  # in the run folder
        best_epoch=int(_epoch_of(best)),
        stopped_epoch=int(trainer.current_epoch),
        early_stopped=bool(early.stopped_epoch),
        parameters=count_parameters(task.model),
        monitor=task.monitor,
        train_seconds=round(fit_seconds, 2),
        world_size=int(trainer.world_size),
        # training samples per second over the whole fit (validation and checkpoints included)
        train_samples_per_second=round(
            trainer.global_step * cfg.data.batch_size * trainer.world_size / max(fit_seconds, 1e-9), 2
        ),
        metrics=metrics,
    )
    with atomic_output(out / "metrics.json", overwrite=True) as tmp:  # it marks a finished run: never half-written
        tmp.write_text(result.to_json())
    if (Path(csv_logger.log_dir) / "metrics.csv").exists():
        _plot_curves(out / "logs", out / "curves.png", task.monitor)
    return result


def _train_baseline(cfg: TrainConfig, out: Path, *, resume: str | Path | None, overwrite: bool) -> TrainResult:
    """``model.arch: lightgbm``: fit the per-pixel baseline in one go (a resumed run is fitted again, to the
    same booster), in a run folder laid out like a CNN's."""
    from landcover.training.baseline import fit_baseline

    if resume not in (None, "auto"):
        raise ConfigError("a lightgbm baseline is fitted in one go: it has no checkpoint to resume; drop --resume")
    if resume is None and (out / "metrics.json").exists() and not overwrite:
        raise OutputExistsError(f"{out} holds a run; pass --overwrite to replace it, or another --out")
    data = _data(cfg)
    meta = _checkpoint_meta(cfg, data)
    if overwrite and out.exists() and resume is None:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_run_inputs(out, cfg, data)
    metrics = fit_baseline(cfg, out, data, meta)
    result = TrainResult(**{key: metrics.pop(key) for key in FACT_KEYS}, metrics=metrics)
    with atomic_output(out / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(result.to_json())
    return result


def _data(cfg: TrainConfig) -> LandcoverDataModule:
    """The data module, its train and val splits checked non-empty (before the run folder exists)."""
    declared = declared_input_transform(cfg.model) if cfg.data.normalization in ("auto", "weights") else None
    if cfg.model.arch == "lightgbm":  # the baseline reads reflectance: x / 10000
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"normalization": "none"})})
        declared = None
    data = LandcoverDataModule(cfg.data, task=cfg.model.task, seed=cfg.trainer.seed, input_transform=declared)
    for split in ("train", "val"):
        data.split_tiles(split)  # an empty split is an error now, before the run folder exists
    return data


def _data_and_task(cfg: TrainConfig) -> tuple[LandcoverDataModule, Any]:
    """The data module (its train and val splits checked non-empty) and the task with its checkpoint metadata."""
    task_name = cfg.model.task
    data = _data(cfg)
    info = data.info
    class_weights = None
    if cfg.loss.class_weights != "none":
        class_weights = data.class_weights(cfg.loss.class_weights).tolist()
    kwargs: dict[str, Any] = {}
    if task_name == "classification":
        kwargs["label_mode"] = cfg.data.label_mode
    task = task_class(task_name)(
        model=cfg.model.model_dump(mode="json"),
        optim=cfg.optim.model_dump(mode="json"),
        loss=cfg.loss.model_dump(mode="json"),
        bands=list(info["bands"]),
        class_names=[c["name"] for c in info["nomenclature"]["classes"]],
        meta=_checkpoint_meta(cfg, data),
        class_weights=class_weights,
        **kwargs,
    )
    return data, task


def _checkpoint_meta(cfg: TrainConfig, data: LandcoverDataModule) -> dict[str, Any]:
    """The ``landcover`` section of the checkpoints: what predict needs to use the model alone."""
    info = data.info
    return {
        "nomenclature": info["nomenclature"],
        "normalization": data.normalization,  # what the model was trained on (and from which split); predict applies it
        "dataset_normalization": info["normalization"],
        "tile_size": info["tile_size"],
        "resolution": info["resolution"],
        "scale": info.get("scale"),
        "label_mode": cfg.data.label_mode,
        "dataset": data.dataset_dir.resolve().name,  # the folder's name, not a path of the user's machine
        "dataset_settings": info.get("config"),
        "processing_level": info.get("processing_level") or dataset_level(info.get("scenes") or []),
        "config": cfg.model_dump(mode="json"),
        "software": f"landcover {__version__}",
    }


def _write_run_inputs(out: Path, cfg: TrainConfig, data: LandcoverDataModule) -> None:
    """config.yaml (the resolved config) and dataset.json (with the statistics this run used) in the run folder."""
    used = {**data.info, "normalization": data.normalization}
    for name, text in (
        ("config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)),
        ("dataset.json", json.dumps(used, indent=2, sort_keys=True) + "\n"),
    ):
        with atomic_output(out / name, overwrite=True, needed=len(text)) as tmp:
            tmp.write_text(text)


def _trainer(
    cfg: TrainConfig, out: Path, monitor: str, *, resumed: bool
) -> tuple[pl.Trainer, ModelCheckpoint, EarlyStopping, CSVLogger]:
    """The Lightning Trainer of a run, with its best/last checkpoint, early stopping and CSV logger callbacks."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from landcover.training.selection import SmoothedMonitor, smoothed_name

    smoothing = cfg.trainer.monitor_smoothing
    callbacks: list[Any] = [SmoothedMonitor(monitor, smoothing)] if smoothing else []  # before the two below
    if smoothing:
        monitor = smoothed_name(monitor)
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    early = EarlyStopping(monitor=monitor, mode="max", patience=cfg.trainer.patience, min_delta=cfg.trainer.min_delta)
    # a resumed run logs into a part of its own: Lightning's CSV logger would rewrite the earlier file
    part = f"resumed-{len(list((out / 'logs').glob('resumed-*'))) + 1}" if resumed else ""
    csv_logger = CSVLogger(out, name="logs", version=part)
    loggers = [csv_logger, TensorBoardLogger(out, name="logs", version="tensorboard")]
    t = cfg.trainer
    trainer = pl.Trainer(
        default_root_dir=out,
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=_precision(t.precision),  # type: ignore[arg-type]
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        callbacks=[*callbacks, checkpoint, early, LearningRateMonitor()],
        logger=loggers,
        enable_progress_bar=os.isatty(2),
        enable_model_summary=False,
        # the datamodule shards tiles itself: each rank its share of the epoch's cap, and every
        # val/test tile exactly once (Lightning's DistributedSampler ignores the cap and pads)
        use_distributed_sampler=False,
        plugins=[_atomic_checkpoints()],
    )
    return trainer, checkpoint, early, csv_logger


def _launch_rank() -> int:
    """The global rank the launcher gave this process (SLURM_PROCID, or Lightning's/torchrun's RANK)."""
    for name in ("SLURM_PROCID", "RANK", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _resume_path(out: Path, resume: str | Path | None) -> str | None:
    """The checkpoint Lightning resumes from (None: start), each file it may load checked safely first."""
    if resume is None:
        return None
    best = out / "checkpoints" / "best.ckpt"  # evaluated at the end of a resumed run
    if str(resume) != "auto":
        if not Path(resume).exists():
            raise ConfigError(f"--resume {resume}: no such checkpoint; pass RUN/checkpoints/last.ckpt or 'auto'")
        _check_checkpoints([Path(resume), best])
        return str(resume)
    hpc = sorted(out.glob("hpc_ckpt_*.ckpt"))
    if hpc:
        _check_checkpoints([*hpc, best])
        return "hpc"  # saved by Lightning on SLURM's signal before the requeue; it picks the newest
    last = out / "checkpoints" / "last.ckpt"
    if not last.exists():
        return None
    _check_checkpoints([last, best])
    return str(last)


def _check_resume_fits(task: Any, out: Path, ckpt_path: str) -> None:
    """The checkpoint to resume from fits the model of this config (checked before anything is written)."""
    if ckpt_path == "hpc":  # Lightning resumes from the highest-numbered one
        ckpt_path = str(max(out.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)))
    state = load_torch_file(ckpt_path, "checkpoint", "resume from RUN/checkpoints/last.ckpt")["state_dict"]
    try:
        task.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(
            f"{ckpt_path} does not fit the model of this config ({first}); resume with the config the "
            "run was trained with (RUN/config.yaml), or start a new run without --resume"
        ) from exc


def _check_checkpoints(paths: list[Path]) -> None:
    """Load each existing file with weights_only (a pickle that would run code is refused, never run)."""
    hint = "resume from RUN/checkpoints/last.ckpt of a `landcover train` run, or start the run anew with --overwrite"
    for path in paths:
        if path.exists():
            ckpt = load_torch_file(path, "checkpoint", hint)
            if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "landcover" not in ckpt:
                raise ModelError(
                    f"{path} is not a checkpoint of `landcover train` (no state_dict or landcover section); {hint}"
                )


def _epoch_of(path: Path) -> int:
    return int(load_torch_file(path, "checkpoint", "evaluate a checkpoint of `landcover train`").get("epoch", -1))
