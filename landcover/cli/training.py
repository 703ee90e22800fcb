"""The training commands: ``train`` and ``sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from landcover.cli.common import SHARD_HELP, app, handles_errors, out, quiet_lightning, resume_command, state


@app.command()
@handles_errors
def train(
    config: Annotated[Path, typer.Argument(help="Training YAML (configs/unet_resnet18.yaml, configs/tiny.yaml, ...).")],
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder made by landcover ingest.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/train"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE.")] = None,
    max_epochs: Annotated[int | None, typer.Option(min=1, help="Shortcut for --set trainer.max_epochs=N.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu (--set trainer.accelerator).")] = None,
    devices: Annotated[str | None, typer.Option(help="Number of devices or 'auto'.")] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue from a checkpoint (RUN/checkpoints/last.ckpt), or 'auto': continue the run in --out if it has "
            "one, else start it (for requeued SLURM jobs)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    folds: Annotated[
        int | None,
        typer.Option(
            min=3,
            help="Spatial k-fold cross-validation: one run per fold in OUT/fold-k, scored on its test blocks; "
            "OUT/crossval.json holds every fold's scores, their mean and sd.",
        ),
    ] = None,
) -> None:
    """Train a U-Net segmentation or ResNet classification model (or the LightGBM pixel baseline) on an ingested
    dataset."""
    from landcover.preflight import check_output_path
    from landcover.training.config import check_train_arguments

    values = {
        "data.dataset": str(dataset) if dataset else None,
        "trainer.max_epochs": max_epochs,
        "trainer.accelerator": accelerator,
        "trainer.devices": (int(devices) if devices and devices.isdigit() else devices),
    }
    check_output_path(out_dir)
    cfg = check_train_arguments(config, set_, resume, **values)  # before torch and Lightning are imported

    from landcover.training.train import train as run_train

    state["resume_hint"] = (
        f"resume with `{resume_command()}` (it continues from the last finished epoch, "
        f"{out_dir / 'checkpoints' / 'last.ckpt'}, if there is one)"
    )
    quiet_lightning()
    if folds is not None:
        _cross_validate(cfg, out_dir, folds, resume, overwrite)
        return
    result = run_train(cfg, out_dir, resume=resume, overwrite=overwrite)
    if result is None:  # a non-zero DDP rank
        return
    curves = out_dir / "curves.png"
    out.print(
        f"best {result.monitor} = {result.best_score:.3f} at epoch {result.best_epoch}; "
        f"checkpoint {out_dir / result.best_checkpoint}; metrics {out_dir / 'metrics.json'}"
        + (f"; curves {curves}" if curves.exists() else "")
    )


def _cross_validate(cfg: Any, out_dir: Path, folds: int, resume: str | None, overwrite: bool) -> None:
    """``train --folds K``: the folds' test scores, their mean and sd."""
    from landcover.errors import ConfigError
    from landcover.training.crossval import cross_validate

    if resume is not None or overwrite:
        raise ConfigError("--folds keeps finished folds and continues the others by itself; drop --resume/--overwrite")
    summary = cross_validate(cfg, out_dir, folds)
    for key, mean in summary["mean"].items():
        if mean is not None:
            out.print(f"{key}: {mean:.3f} +- {summary['sd'][key]:.3f} (mean +- sd over {folds} folds)")
    out.print(f"per fold: {out_dir / 'crossval.json'}")


def parse_parallel(value: str | None) -> str | None:
    if value is not None and value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise typer.BadParameter(f"{value!r} is neither a number of variants (1 or more) nor 'auto'")
    return value


@app.command()
@handles_errors
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(metavar="SWEEP", help="Sweep YAML (see configs/sweep_lr_encoder.yaml).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: variants/, leaderboard, best/.")],
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder for every variant (else the sweep's).")] = None,
    parallel: Annotated[
        str | None, typer.Option(callback=parse_parallel, help="Variants at once: N or auto (one per core or GPU).")
    ] = None,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP + " Then run --leaderboard once all are done.")] = None,
    leaderboard_only: Annotated[
        bool,
        typer.Option("--leaderboard", help="Only rank the finished variants, promote the best and score it on test."),
    ] = False,
) -> None:
    """Train many variants of a config (grid/list), rank them on validation, keep the best."""
    from landcover.cluster import parse_shard
    from landcover.errors import ConfigError
    from landcover.preflight import check_output_path

    if not sweep_file.is_file():
        what = "is a folder" if sweep_file.is_dir() else "does not exist"
        raise ConfigError(f"sweep file {sweep_file} {what}; pass a sweep YAML (see configs/sweep_lr_encoder.yaml)")
    check_output_path(out_dir)
    from landcover.training.leaderboard import leaderboard, sweep_summary
    from landcover.training.sweep import load_sweep, run_sweep, signal_variants

    state["forward_sigterm"] = signal_variants  # the variants stop with the sweep; a rerun continues them

    if leaderboard_only:
        result = leaderboard(out_dir, keep=load_sweep(sweep_file)[0].keep, dataset=dataset)
    else:
        part = parse_shard(shard)
        result = run_sweep(
            sweep_file,
            out_dir,
            dataset=dataset,
            parallel=parallel,
            shard=part,
            say=lambda line: out.print(line, highlight=False),
        )
        if part is not None and "shard" in result:
            out.print(
                f"shard {part[0]}/{part[1]}: {len(result['variants'])} variant(s) finished; run `landcover sweep "
                f"{sweep_file} --out {out_dir} --leaderboard` when every shard is done"
            )
            return
    out.print(sweep_summary(result, out_dir), highlight=False)
