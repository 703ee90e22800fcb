"""The ``demo`` command: the whole job on the embedded samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landcover.cli.common import app, handles_errors, out, quiet_lightning, state


@app.command()
@handles_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output of the demo.")] = Path(
        "runs/demo"
    ),
    task: Annotated[str, typer.Option(help="segmentation, classification or all.")] = "segmentation",
    max_epochs: Annotated[int | None, typer.Option(min=1, help="Fewer epochs for a quicker look.")] = None,
) -> None:
    """Run ingest -> train -> predict -> evaluate on the embedded real samples."""
    from landcover.errors import ConfigError
    from landcover.preflight import check_output_path

    if task not in ("segmentation", "classification", "all"):
        raise ConfigError(f"unknown task {task!r}: use segmentation, classification or all")
    check_output_path(out_dir)
    from landcover.demo import demo_summary, run_demo

    state["resume_hint"] = "the finished steps are kept; run the same command again to continue (training starts over)"
    quiet_lightning()
    results = run_demo(out_dir, task, say=lambda line: out.print(line, highlight=False), max_epochs=max_epochs)
    out.print("\n" + demo_summary(results), highlight=False)
