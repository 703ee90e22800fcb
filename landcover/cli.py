"""The ``landcover`` command line. Only this module imports typer; heavy libraries (torch,
lightning, geopandas) are imported inside the commands so ``landcover --help`` stays fast."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from landcover import __version__
from landcover.errors import LandcoverError

app = typer.Typer(
    name="landcover",
    help="Sentinel-2 + CORINE Land Cover: analysis-ready data, CNN training, land-cover maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)
_state: dict[str, Any] = {"debug": False, "signal": None, "resume_hint": None}

F = TypeVar("F", bound=Callable[..., Any])


def quiet_lightning() -> None:
    """Keep Lightning's info chatter (GPU available, tips, ...) out of the command's output."""
    import logging
    import warnings

    if not _state["debug"]:
        import lightning.pytorch  # noqa: F401  (it sets its loggers' levels when imported: import it first)

        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|num_workers|`srun` command).*")


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, what shells and SLURM report


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM (scancel, a time limit, ``kill``) and SIGINT (Ctrl-C) unwind it as an
    interrupt (partial outputs are removed on the way out) and are remembered for the exit code.

    Inside Lightning's ``fit`` its own SIGTERM handler runs first and calls this one: then the signal is only
    recorded and Lightning stops at the next step (``SIGTERMException``), so checkpoints are never cut in half
    and SLURM's pre-emption path (SIGUSR1: save ``hpc_ckpt_N.ckpt``, requeue) stays Lightning's. Ctrl-C there
    is passed to Lightning's handler the same way. The first signal names the interruption.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        again, _state["signal"] = _state["signal"], _state["signal"] or signal.Signals(signum).name
        if signum == signal.SIGTERM and _state.get("forward_sigterm"):
            _signal_children(signum)
        lightning = signal.getsignal(signal.SIGTERM)
        if lightning is not interrupt and callable(lightning) and not (again and signum == signal.SIGINT):
            # inside a Lightning run (its SIGTERM handler is installed and calls this one): Lightning stops at the
            # next step (SIGTERMException); Ctrl-C takes the same path (a KeyboardInterrupt raised while a
            # checkpoint is closed can be swallowed), a second Ctrl-C stops at once
            if signum == signal.SIGINT:
                lightning(signal.SIGTERM, frame)
            return
        raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _state["signal"] = None
    for signum in previous:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_children(signum: int) -> None:
    """Send ``signum`` to this process's children (a sweep's ``landcover train`` runs): a SIGTERM sent to the
    sweep alone (``kill PID``) stops them too instead of the sweep waiting for them to finish (Linux /proc)."""
    import contextlib
    import os

    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:  # "pid (name) state ppid ..."
                os.kill(int(stat.parent.name), signum)


def _resume_command() -> str:
    """This ``landcover train`` command line with ``--resume auto`` (and without --resume X, --overwrite)."""
    import shlex
    import sys

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--overwrite" or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = True
            continue
        args.append(arg)
    return shlex.join(["landcover", *args, "--resume", "auto"])


def _interrupted(name: str) -> typer.Exit:
    hint = _state.get("resume_hint") or "finished outputs are kept, partial ones were removed; run the same " \
        "command again to resume"
    err.print(f"interrupted ({name}): {hint}", highlight=False, soft_wrap=True, markup=False)
    return typer.Exit(EXIT_CODES.get(name, 130))


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 path shown as ``\\xff`` (printing never fails on them)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def handles_errors(fn: F) -> F:
    """Turn a LandcoverError into one line on stderr and exit code 2 (traceback with --debug), and an
    interruption (SIGINT, SIGTERM) into one line and exit code 130 or 143 (Lightning's own exits included)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from landcover.outputs import gdal_stderr_filtered, stray_error, undecodable_path_error

        _state["resume_hint"], _state["forward_sigterm"] = None, False
        out_arg = kwargs.get("out_dir") or kwargs.get("out_path")
        try:
            with sigterm_as_interrupt(), gdal_stderr_filtered():
                if (bad_path := undecodable_path_error(list(kwargs.values()))) is not None:
                    raise bad_path
                try:
                    return fn(*args, **kwargs)
                except (OSError, UnicodeEncodeError, RuntimeError) as exc:  # write failures no writer translated
                    if isinstance(exc, LandcoverError) or (error := stray_error(exc, out_arg)) is None:
                        raise
                    raise error from exc
        except LandcoverError as exc:
            if _state["debug"]:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] {printable(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise _interrupted(_state.get("signal") or "SIGINT") from None
        except SystemExit as exc:  # Lightning exits on SIGTERM (SIGTERMException, no code) and Ctrl-C (code 1)
            if _state.get("signal"):
                raise _interrupted(_state["signal"]) from None
            raise exc

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars driven by ``update(stage, done, total)``: one bar for the ``scenes``
    stage, one for the current step (its description follows the stage)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            key = "scenes" if stage == "scenes" else "step"
            if key not in tasks:
                tasks[key] = progress.add_task(stage, total=total)
            progress.update(tasks[key], completed=done, total=total, description=stage)

        yield update


FROM_LIST_HELP = "Text file with one input per line (# comments; relative paths are relative to the file)."
SHARD_HELP = ("Process only shard I/N (0 <= I < N) of the inputs (by sorted scene name); default inside a SLURM "
              "job array: the array task.")


def _version(value: bool) -> None:
    if value:
        out.print(f"landcover {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", "-v", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Sentinel-2 + CORINE Land Cover: analysis-ready data, CNN training, land-cover maps."""
    _state["debug"] = debug


NOMENCLATURE_HELP = "Classes to produce: level3 (44), level2 (15), level1 (5) or ben19 (BigEarthNet 19)."


@app.command()
@handles_errors
def labels(
    source: Annotated[Path, typer.Argument(help="CORINE raster (any CRS) or vector with CODE_18.")],
    like: Annotated[Path, typer.Option("--like", help="Reference raster whose grid the labels take.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF of class ids.")],
    nomenclature: Annotated[str, typer.Option(help=NOMENCLATURE_HELP)] = "level3",
    code_column: Annotated[
        str | None, typer.Option(help="Attribute with the CLC codes (default: CODE_18, CODE_12, ...).")
    ] = None,
    all_touched: Annotated[
        bool, typer.Option(help="Burn every pixel a polygon touches (default: pixel centres).")
    ] = False,
    raster_values: Annotated[
        str, typer.Option(help="For raster sources: 'codes' (111..523), 'indices' (1..44) or 'auto'.")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Put CORINE Land Cover labels on exactly the grid of a reference raster."""
    from landcover.labels import labels_like

    with progress_bars() as update:
        summary = labels_like(
            source, like, out_path, nomenclature_name=nomenclature, code_column=code_column,
            all_touched=all_touched, raster_values=raster_values, overwrite=overwrite,
            progress=lambda done, total: update("labels", done, total),
        )
    out.print(
        f"wrote {summary.out} ({summary.nomenclature}, {len(summary.class_pixels)} classes present, "
        f"{summary.labelled_fraction:.1%} of {summary.pixels} pixels labelled) from {summary.source}"
    )


@app.command()
@handles_errors
def ingest(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder (created, or resumed).")],
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Sentinel-2 products: SAFE dir/zip, band folder, GeoTIFF; BigEarthNet patch folders or a folder of them."
    )] = None,
    labels_path: Annotated[
        Path | None, typer.Option("--labels", "-l", help="CORINE raster/vector, or another vector with --mapping.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings (see configs/ingest.yaml).")] = None,
    bands: Annotated[str | None, typer.Option(help="Comma-separated bands in stack order, e.g. B02,B03,B04,B08.")] = None,
    nomenclature: Annotated[str | None, typer.Option(help=NOMENCLATURE_HELP)] = None,
    tile_size: Annotated[
        int | None, typer.Option(help="Training tile side in pixels (default 256; 120 = one BigEarthNet patch).")
    ] = None,
    code_column: Annotated[str | None, typer.Option(help="Label attribute (default CODE_18, ...).")] = None,
    mapping: Annotated[
        Path | None, typer.Option(help="CSV mapping --code-column values onto the nomenclature.")
    ] = None,
    block_size: Annotated[float | None, typer.Option(help="Spatial split block side in metres.")] = None,
    split_by_scene: Annotated[bool | None, typer.Option(help="Assign whole scenes to splits.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split assignment.")] = None,
    bigearthnet_metadata: Annotated[
        Path | None, typer.Option(help="BigEarthNet v2 metadata.parquet (default: one above the patches).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset made with other settings.")] = False,
    from_list: Annotated[Path | None, typer.Option(help=FROM_LIST_HELP)] = None,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP + " Sharded runs leave --finalize to a last step.")] = None,
    finalize: Annotated[bool, typer.Option(
        "--finalize", help="Only merge the finished scenes' catalogs into catalog.parquet, splits.gpkg and "
        "dataset.json (after all shards; safe to run twice). With --seed, --block-size, --split-by-scene or "
        "--set split.KEY=VALUE it re-splits the dataset without reading its imagery.")] = False,
) -> None:
    """Turn Sentinel-2 products and CORINE labels into an analysis-ready tile dataset."""
    from landcover.cluster import parse_shard, read_list
    from landcover.config import load_config
    from landcover.errors import ConfigError
    from landcover.ingest import IngestConfig, split_settings
    from landcover.ingest import finalize as finalize_dataset
    from landcover.ingest import ingest as run_ingest

    if finalize:
        if inputs or from_list:
            raise ConfigError("--finalize takes no inputs: it merges the scenes already in --out")
        options = {"seed": seed, "block_size_m": block_size, "by_scene": split_by_scene}
        resplit = [f"split.{k}={v}" for k, v in options.items() if v is not None] + list(set_ or [])
        with progress_bars() as update:
            dataset = finalize_dataset(out_dir, update, split=split_settings(out_dir, resplit) if resplit else None)
        for warning in dataset["split_scheme"].get("warnings", []):
            err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        out.print(f"dataset {out_dir}: finalized {len(dataset['scenes'])} scene(s); catalog {out_dir / 'catalog.parquet'}")
        return
    items = list(inputs or []) + (read_list(from_list) if from_list else [])
    if not items:
        raise ConfigError("no input given: pass Sentinel-2 products or --from-list FILE")
    part = parse_shard(shard)

    cfg = load_config(
        IngestConfig, config, set_,
        bands=bands.split(",") if bands else None, nomenclature=nomenclature, tile_size=tile_size,
        bigearthnet_metadata=str(bigearthnet_metadata) if bigearthnet_metadata else None,
        **{"labels.code_column": code_column, "labels.mapping": str(mapping) if mapping else None,
           "split.block_size_m": block_size, "split.by_scene": split_by_scene, "split.seed": seed},
    )
    with progress_bars() as update:
        dataset = run_ingest(items, out_dir, labels=labels_path, config=cfg, overwrite=overwrite, progress=update,
                             shard=part)
    if part is not None and not dataset.get("finalized", True):
        out.print(f"shard {part[0]}/{part[1]}: {len(dataset['scenes'])} of {dataset['total_scenes']} scene(s) in "
                  f"{out_dir}; run `landcover ingest --finalize --out {out_dir}` when every shard is done")
        return
    norm = dataset["normalization"]
    warnings = {w for scene in dataset["scenes"] for w in scene["provenance"]["warnings"]}
    for warning in sorted(warnings) + dataset["split_scheme"].get("warnings", []):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    out.print(
        f"dataset {out_dir}: {len(dataset['scenes'])} scene(s), bands {','.join(dataset['bands'])}, "
        f"{dataset['nomenclature']['name']}; catalog {out_dir / 'catalog.parquet'}, "
        f"splits {out_dir / 'splits.gpkg'}; train pixels for band statistics: {norm.get('count', 0)}"
    )


@app.command()
@handles_errors
def train(
    config: Annotated[Path, typer.Argument(help="Training YAML (configs/unet_resnet18.yaml, configs/tiny.yaml, ...).")],
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder made by landcover ingest.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/train"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Shortcut for --set trainer.max_epochs=N.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto, cpu, gpu (--set trainer.accelerator).")] = None,
    devices: Annotated[str | None, typer.Option(help="Number of devices or 'auto'.")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue from a checkpoint (RUN/checkpoints/last.ckpt), or 'auto': continue the run in --out if it has "
        "one, else start it (for requeued SLURM jobs).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
) -> None:
    """Train a U-Net segmentation or ResNet classification model on an ingested dataset."""
    from landcover.preflight import check_train_arguments

    values = {"data.dataset": str(dataset) if dataset else None, "trainer.max_epochs": max_epochs,
              "trainer.accelerator": accelerator,
              "trainer.devices": (int(devices) if devices and devices.isdigit() else devices)}
    check_train_arguments(config, set_, resume, **values)  # before torch and Lightning are imported

    from landcover.config import load_config
    from landcover.train import TrainConfig
    from landcover.train import train as run_train

    _state["resume_hint"] = f"resume with `{_resume_command()}` (it continues from the last finished epoch, " \
        f"{out_dir / 'checkpoints' / 'last.ckpt'}, if there is one)"
    quiet_lightning()
    cfg = load_config(TrainConfig, config, set_, **values)
    metrics = run_train(cfg, out_dir, resume=resume, overwrite=overwrite)
    if not metrics:  # a non-zero DDP rank
        return
    monitor = metrics["monitor"]
    out.print(
        f"best {monitor} = {metrics.get(monitor, float('nan')):.3f} at epoch {metrics['best_epoch']}; "
        f"checkpoint {metrics['best_checkpoint']}; metrics {out_dir / 'metrics.json'}; curves {out_dir / 'curves.png'}"
    )


@app.command()
@handles_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP", help="Sweep YAML (see configs/sweep_lr_encoder.yaml).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: variants/, leaderboard, best/.")],
    dataset: Annotated[Path | None, typer.Option(help="Dataset folder for every variant (else the sweep's).")] = None,
    parallel: Annotated[str | None, typer.Option(help="Variants at once: N or auto (one per core or GPU).")] = None,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP + " Then run --leaderboard once all are done.")] = None,
    leaderboard_only: Annotated[bool, typer.Option(
        "--leaderboard", help="Only rank the finished variants, promote the best and score it on test.")] = False,
) -> None:
    """Train many variants of a config (grid/list), rank them on validation, keep the best."""
    from landcover.cluster import parse_shard
    from landcover.errors import ConfigError

    if not sweep_file.is_file():
        raise ConfigError(f"sweep file {sweep_file} does not exist; pass a sweep YAML (see configs/sweep_lr_encoder.yaml)")
    from landcover.sweep import leaderboard, load_sweep, run_sweep, sweep_summary

    _state["forward_sigterm"] = True  # the variants stop with the sweep; a rerun continues them

    if leaderboard_only:
        result = leaderboard(out_dir, keep=load_sweep(sweep_file)[0].keep, dataset=dataset)
    else:
        part = parse_shard(shard)
        result = run_sweep(sweep_file, out_dir, dataset=dataset, parallel=parallel, shard=part,
                           say=lambda line: out.print(line, highlight=False))
        if part is not None and "shard" in result:
            out.print(f"shard {part[0]}/{part[1]}: {len(result['variants'])} variant(s) finished; run `landcover sweep "
                      f"{sweep_file} --out {out_dir} --leaderboard` when every shard is done")
            return
    out.print(sweep_summary(result, out_dir), highlight=False)


@app.command()
@handles_errors
def evaluate(
    prediction: Annotated[Path, typer.Argument(
        metavar="PREDICTION", help="Class-map GeoTIFF to score (255 = no data), e.g. from predict.")],
    labels_path: Annotated[Path, typer.Argument(
        metavar="LABELS", help="CORINE raster/vector (any CRS), or a class map on the same grid (labels.tif).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder (metrics.json, report.md, PNGs, GPKG).")],
    nomenclature: Annotated[
        str | None, typer.Option(help="Classes to score in (default: the prediction's NOMENCLATURE tag).")
    ] = None,
    code_column: Annotated[str | None, typer.Option(help="Label attribute (default CODE_18, ...).")] = None,
    tile_size: Annotated[int, typer.Option(help="Side in pixels of the tiles of tiles_iou.gpkg.")] = 256,
    raster_values: Annotated[
        str, typer.Option(help="For CORINE rasters: 'codes' (111..523), 'indices' (1..44) or 'auto'.")
    ] = "auto",
    all_touched: Annotated[bool, typer.Option(help="Vector labels: burn every pixel a polygon touches.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
) -> None:
    """Score a land-cover map against CORINE labels: IoU, kappa, confusion matrix, per-tile error map."""
    from landcover.evaluate import evaluate_maps

    with progress_bars() as update:
        metrics = evaluate_maps(
            prediction, labels_path, out_dir, nomenclature_name=nomenclature, code_column=code_column,
            tile_size=tile_size, raster_values=raster_values, all_touched=all_touched, overwrite=overwrite,
            progress=lambda done, total: update("evaluate", done, total),
        )
    s, px = metrics["scores"], metrics["pixels"]
    out.print(
        f"mIoU {s['miou']:.3f}, overall accuracy {s['overall_accuracy']:.3f}, kappa "
        f"{s['kappa'] if s['kappa'] is None else format(s['kappa'], '.3f')} on {px['evaluated']:,} of "
        f"{px['total']:,} pixels ({metrics['nomenclature']['name']}); report {out_dir / 'report.md'}"
    )


@app.command()
@handles_errors
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from landcover train (RUN/checkpoints/best.ckpt).")],
    out_path: Annotated[Path, typer.Option(
        "--out", "-o", help="Output .tif for one input; a folder (one <scene>.tif each) for several or --from-list.")],
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Sentinel-2 products (SAFE dir/zip, band folder, GeoTIFF) or ingested scenes/<id>/image.tif.")] = None,
    from_list: Annotated[Path | None, typer.Option(help=FROM_LIST_HELP)] = None,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP)] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write OUT_probabilities.tif (uint8 x 255 per class).")] = False,
    confidence: Annotated[bool, typer.Option(help="Also write OUT_confidence.tif (max probability x 255).")] = False,
    overlap: Annotated[int | None, typer.Option(help="Window overlap in pixels (default: tile / 4).")] = None,
    tile: Annotated[int | None, typer.Option(help="Window side in pixels (default: the checkpoint's tile size).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per model call.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mask_clouds: Annotated[bool, typer.Option(help="Write 255 where the SCL / cloud mask marks clouds.")] = False,
    quicklook: Annotated[bool, typer.Option(help="Write a PNG quick look with a legend next to each map.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (default: skip finished scenes).")] = False,
) -> None:
    """Predict land-cover maps (Cloud-Optimized GeoTIFFs with palette and class names) for scenes."""
    from landcover.cluster import parse_shard, read_list, shard_items
    from landcover.errors import ConfigError
    from landcover.preflight import check_checkpoint_exists, check_inputs_exist

    items = list(inputs or []) + (read_list(from_list) if from_list else [])
    if not items:
        raise ConfigError("no input given: pass Sentinel-2 products or ingested image.tif files, or --from-list FILE")
    part = parse_shard(shard)
    check_checkpoint_exists(checkpoint)  # before torch is imported
    check_inputs_exist(items)

    from landcover.predict import predict_many, predict_scene, scene_name

    if part is not None and part[1] > 1:
        if out_path.suffix.lower() in (".tif", ".tiff"):
            raise ConfigError(f"--out {out_path} is a file name but --shard splits a batch; pass a folder")
        items = shard_items(items, part, key=lambda p: scene_name(p))
        if not items:
            out.print(f"shard {part[0]}/{part[1]}: no scene (there are fewer scenes than shards)")
            return
    batch = from_list is not None or (part is not None and part[1] > 1)  # --out is then a folder
    options: dict[str, Any] = dict(overlap=overlap, tile=tile, batch_size=batch_size, device=device, probabilities=probabilities,
                   confidence=confidence, quicklook=quicklook, mask_clouds=mask_clouds)
    single = len(items) == 1 and not batch and out_path.suffix.lower() in (".tif", ".tiff")
    if not single and out_path.suffix.lower() in (".tif", ".tiff"):
        raise ConfigError(f"--out {out_path} is a file name but there are {len(items)} inputs; pass a folder")
    with progress_bars() as update:
        if single:
            summaries = [predict_scene(checkpoint, items[0], out_path, overwrite=overwrite, progress=update, **options)]
        else:
            summaries = predict_many(checkpoint, items, out_path, overwrite=overwrite, progress=update, **options)
    for s in summaries:
        if s["skipped"]:
            out.print(f"skipped {s['input']}: {s['out']['map']} is complete (pass --overwrite to redo it)")
            continue
        extra = ", ".join(Path(p).name for name, p in s["out"].items() if name != "map")
        out.print(f"wrote {s['out']['map']} ({s['grid']['width']} x {s['grid']['height']} px, {s['windows_run']} windows, "
                  f"{s['windows_skipped']} empty skipped, {s['seconds']:.1f} s on {s['device']}; {extra})")


@app.command()
@handles_errors
def explain(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from landcover train (RUN/checkpoints/best.ckpt).")],
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="A Sentinel-2 product or an ingested image.tif.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps, overlay.png and explain.json.")],
    classes: Annotated[str | None, typer.Option(
        help="Classification: codes or names, comma-separated, or 'all' (default: the classes found).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Show what a model relies on: Grad-CAM heat maps (classification) or entropy/margin maps (segmentation)."""
    from landcover.preflight import check_checkpoint_exists, check_inputs_exist

    check_checkpoint_exists(checkpoint)  # before torch is imported
    check_inputs_exist([input_path])

    from landcover.explain import explain as run_explain
    from landcover.explain import explain_command_summary

    with progress_bars() as update:
        result = run_explain(checkpoint, input_path, out_dir, classes=classes, device=device, overwrite=overwrite,
                             progress=update)
    out.print(explain_command_summary(result), highlight=False)


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output of the demo.")] = Path("runs/demo"),
    task: Annotated[str, typer.Option(help="segmentation, classification or all.")] = "segmentation",
    max_epochs: Annotated[int | None, typer.Option(help="Fewer epochs for a quicker look.")] = None,
) -> None:
    """Run ingest -> train -> predict -> evaluate on the embedded real samples."""
    from landcover.errors import ConfigError

    if task not in ("segmentation", "classification", "all"):
        raise ConfigError(f"unknown task {task!r}: use segmentation, classification or all")
    from landcover.demo import demo_summary, run_demo

    _state["resume_hint"] = "the finished steps are kept; run the same command again to continue (training starts over)"
    quiet_lightning()
    results = run_demo(out_dir, task, say=lambda line: out.print(line, highlight=False), max_epochs=max_epochs)
    out.print("\n" + demo_summary(results), highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
