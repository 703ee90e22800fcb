"""What every command shares: the typer app, the consoles, one-line errors and exit codes, interruptions
(SIGINT/SIGTERM -> 130/143), progress bars and the root options."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

if TYPE_CHECKING:
    from landcover.io.aoi import AOI

from landcover.errors import LandcoverError
from landcover.version import __version__


class OneLineErrors(TyperGroup):
    """Click's usage errors (unknown option, a value that is not a number...) as one line, exit code 2,
    like every other error, instead of a usage text and a framed panel."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # click's errors (typer bundles click)
            if type(exc).__name__ != "NoArgsIsHelpError":  # the help is shown already
                ctx = getattr(exc, "ctx", None)
                command = ctx.command_path if ctx is not None else "landcover"
                err.print(
                    f"error: {exc.format_message().rstrip('.')}; see `{command} --help`",
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                )
            raise SystemExit(exc.exit_code) from None
        except typer.Abort:
            err.print("aborted", highlight=False)
            raise SystemExit(1) from None
        raise SystemExit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="landcover",
    help="Sentinel-2 + CORINE Land Cover: analysis-ready data, CNN training, land-cover maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)
PROGRESS_ENV = "LANDCOVER_PROGRESS"  # lines: machine-readable progress on stderr (progress_lines)
state: dict[str, Any] = {"debug": False, "signal": None, "resume_hint": None}

F = TypeVar("F", bound=Callable[..., Any])


def quiet_lightning() -> None:
    """Keep Lightning's info chatter (GPU available, tips, ...) out of the command's output."""
    import logging
    import warnings

    if not state["debug"]:
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
        again, state["signal"] = state["signal"], state["signal"] or signal.Signals(signum).name
        if callable(state.get("forward_sigterm")):  # a sweep stops its variants (own session) with SIGTERM
            state["forward_sigterm"](signal.SIGTERM)
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
    state["signal"] = None
    for signum in previous:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_command() -> str:
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


def interrupted(name: str) -> typer.Exit:
    hint = (
        state.get("resume_hint")
        or "finished outputs are kept, partial ones were removed; run the same command again to resume"
    )
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
        from landcover.io.failures import gdal_stderr_filtered, stray_error, undecodable_path_error

        state["resume_hint"], state["forward_sigterm"] = None, False
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
            if state["debug"]:
                traceback.print_exc()
            err.print(f"[bold red]error:[/] {printable(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise interrupted(state.get("signal") or "SIGINT") from None
        except SystemExit as exc:  # Lightning exits on SIGTERM (SIGTERMException, no code) and Ctrl-C (code 1)
            if state.get("signal"):
                raise interrupted(state["signal"]) from None
            raise exc

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars driven by ``update(stage, done, total)``: one bar for the ``scenes``
    stage, one for the current step (its description follows the stage). With ``LANDCOVER_PROGRESS=lines``
    (the QGIS plugin sets it) instead one line ``progress: DONE/TOTAL STAGE`` on stderr per whole percent."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if os.environ.get(PROGRESS_ENV, "").strip().lower() == "lines":
        yield progress_lines()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            key = "scenes" if stage == "scenes" else "step"
            if key not in tasks:
                tasks[key] = progress.add_task(stage, total=total)
            progress.update(tasks[key], completed=done, total=total, description=stage)

        yield update


def progress_lines() -> Callable[[str, int, int], None]:
    """``update(stage, done, total)`` printing ``progress: DONE/TOTAL STAGE`` when the whole percent or the
    stage changes (a program reading stderr parses them)."""
    last: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        percent = 100 * done // max(1, total)
        if last.get(stage) != percent:
            last[stage] = percent
            print(f"progress: {done}/{total} {stage}", file=sys.stderr, flush=True)

    return update


FROM_LIST_HELP = "Text file with one input per line (# comments; relative paths are relative to the file)."
SHARD_HELP = (
    "Process only shard I/N (0 <= I < N) of the inputs (by sorted scene name); default inside a SLURM "
    "job array: the array task."
)


# options and arguments several commands share, declared once (typer copies them per command)
FromListOption = Annotated[Path | None, typer.Option(help=FROM_LIST_HELP)]
CheckpointArgument = Annotated[
    Path, typer.Argument(help="Checkpoint from landcover train (RUN/checkpoints/best.ckpt).")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ModelArgument = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint from landcover train (RUN/checkpoints/best.ckpt), or a model from landcover export "
        "(MODEL.onnx: run by onnxruntime, without PyTorch)."
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="auto (float32 on CPU, autocast on CUDA), fp32, or bf16 (a checkpoint on a CPU with bfloat16 "
        "instructions: faster, maps may differ at a few pixels; see docs/benchmarks.md)."
    ),
]
AOIOption = Annotated[
    Path | None,
    typer.Option(
        "--aoi",
        help="Area of interest: a vector file of polygons (any format and CRS); only the scene grid's window over it is processed, pixels outside the polygons are no data.",
    ),
]
BBoxOption = Annotated[
    str | None,
    typer.Option(
        "--bbox",
        help="Area of interest as minx,miny,maxx,maxy[,CRS] (default CRS EPSG:4326, lon/lat); instead of --aoi.",
    ),
]


def read_aoi_options(aoi: Path | None, bbox: str | None) -> AOI | None:
    """The AOI of ``--aoi``/``--bbox`` (checked before anything heavy is imported)."""
    from landcover.io.aoi import aoi_option

    return aoi_option(aoi, bbox)


CodeColumnOption = Annotated[str | None, typer.Option(help="Label attribute (default CODE_18, ...).")]
SignOption = Annotated[
    str | None,
    typer.Option(
        help="Sign the http(s) hrefs of STAC items: planetary-computer (needs `pip install planetary-computer`) "
        "or module:function (your function href -> href)."
    ),
]


def input_list(inputs: list[Path] | None, from_list: Path | None, what: str) -> list[Path]:
    """The inputs of a command: its arguments, then the entries of --from-list; none is an error naming ``what``."""
    from landcover.cluster import read_list
    from landcover.errors import ConfigError

    items = list(inputs or []) + (read_list(from_list) if from_list else [])
    if not items:
        raise ConfigError(f"no input given: pass {what}")
    return items


def print_version(value: bool) -> None:
    if value:
        out.print(f"landcover {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", "-v", help="Show tracebacks of errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Sentinel-2 + CORINE Land Cover: analysis-ready data, CNN training, land-cover maps."""
    state["debug"] = debug
    if not debug:  # a raster without georeferencing gets our own one-line error, not rasterio's warning above it
        import warnings

        warnings.filterwarnings("ignore", message="Dataset has no geotransform")


NOMENCLATURE_HELP = "Classes to produce: level3 (44), level2 (15), level1 (5) or ben19 (BigEarthNet 19)."
