"""Outputs written whole or not at all: a file, a folder or a group of files is written under hidden temporary
names next to its final one and renamed when complete, so nothing half-written ever carries a final name;
what a killed run left is removed by the next. Write failures become OutputErrors (:mod:`landcover.io.failures`)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from landcover.errors import OutputExistsError
from landcover.io.failures import writing


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary siblings of ``path`` that a killed run (SIGKILL, node failure) left.

    Call it only where this process is the one writer of ``path`` (one shard per scene).
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial{glob.escape(path.suffix)}*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``path`` only when the block completes.

    An error or interruption (Ctrl-C) removes the temporary file: nothing half-written ever
    carries the final name. A write failure (permission, full disk, also one GDAL only logged) is an
    :class:`~landcover.errors.OutputError` naming ``path``; ``needed`` (bytes, rough) is told with a full disk.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    tmp = temporary_sibling(path)
    try:
        with writing(path, needed, [tmp, Path(f"{tmp}.aux.xml")]):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`: whole or not at all."""
    with atomic_output(path, overwrite=True, needed=len(text.encode("utf-8", "surrogateescape"))) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


EXPECTED: dict[Path, int] = {}  # uncompressed bytes of each temporary GeoTIFF a BlockWriter writes (full-disk messages)


@contextlib.contextmanager
def temporaries(output: Path | None = None) -> Iterator[Callable[[Path], Path]]:
    """``tmp(final)`` gives a temporary sibling; every one left over is removed at the end.

    A write failure in the block (permission, full disk) is an :class:`~landcover.errors.OutputError` naming
    ``output`` (default: the first final path); with a full disk it tells about what the GeoTIFFs of :class:`BlockWriter` and their COG
    copies need (uncompressed, so at most).
    """
    made: list[Path] = []

    def needed() -> int | None:
        return sum(2 * EXPECTED.get(path, 0) for path in made) or None

    try:
        with writing(output, needed) as guard:

            def tmp(final: Path) -> Path:
                if guard.path is None:
                    guard.path = final
                made.append(temporary_sibling(final))
                guard.temporaries.extend([made[-1], Path(f"{made[-1]}.aux.xml")])
                return made[-1]

            yield tmp
    finally:
        for path in made:
            EXPECTED.pop(path, None)
            for stale in (path, Path(f"{path}.aux.xml")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path, replace: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes ``path`` when the block completes.

    An existing ``path`` is an :class:`~landcover.errors.OutputExistsError` unless ``replace``: then it is
    swapped out after the block and removed, so a reader sees the old folder or the new one, never a mix.
    An error or interruption removes the temporary folder; a write failure is an OutputError naming ``path``
    (``needed``: bytes, rough, told with a full disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.{tag}.partial")
    try:
        with writing(path, needed, [tmp]):
            tmp.mkdir()
            yield tmp
            if path.exists() and not replace:
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or choose another --out")
            if path.exists():
                old = path.with_name(f".{path.name}.{tag}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
