"""The ``landcover`` command line: the only package that imports typer. Each command parses its
options, calls one function of a stage and prints the result; heavy libraries (torch, Lightning,
geopandas) are imported inside the commands, so ``landcover --help`` stays fast."""

from __future__ import annotations

from landcover.cli import data, demo, export, maps, stac, training  # noqa: F401  (they register their commands)
from landcover.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
