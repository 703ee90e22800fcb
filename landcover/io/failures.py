"""Write failures told as they are: one place turns a permission problem, a read-only file system or a
full disk into an :class:`~landcover.errors.OutputError` that names the path and the reason.

:func:`writing` guards a block that writes an output (the atomic-output helpers of :mod:`landcover.io.grid`,
:func:`landcover.io.outputs.temporaries`, a scene of ingest); :func:`output_error` translates a stray ``OSError``
(the CLI's last resort); :func:`gdal_stderr_filtered` keeps GDAL's own messages about such a failure (libtiff
prints them straight to file descriptor 2) from the user's terminal. Light: no rasterio at import time (the CLI
imports this module).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from landcover.errors import ConfigError, LandcoverError, OutputError

DENIED = {errno.EACCES, errno.EPERM}
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
WRITE_ERRNOS = DENIED | NO_SPACE | {errno.EROFS}
# what GDAL (through rasterio's logger or an exception) says when a write failed
GDAL_NO_SPACE = re.compile(r"No space left|Disk quota|database or disk is full", re.I)
GDAL_WRITE_FAILED = re.compile(
    r"No space left|Disk quota|disk is full|disk I/O error|Write error|IO error writing"
    r"|error writing|_tiffWriteProc"
    r"|Failed to create mask|Read-only file system",
    re.I,
)
GDAL_DENIED = re.compile(r"Permission denied", re.I)
GDAL_READ_ONLY = re.compile(r"Read-only file system", re.I)


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xff`` (never a UnicodeEncodeError)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def has_undecodable_bytes(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above ``path``."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def _mount_point(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def no_space_message(path: str | os.PathLike[str], needed: int | None, quota: bool = False) -> str:
    """'no space left on DEVICE (X MB free, about Y MB needed)' for ``path``."""
    where = Path(os.fspath(path))
    free = shutil.disk_usage(_existing(where)).free
    need = f", about {_mb(needed)} MB needed" if needed else ""
    what = "disk quota exceeded" if quota else "no space left"
    return (
        f"cannot write {shown(where)}: {what} on {shown(_mount_point(where))} ({_mb(free)} MB free{need}); "
        "free space or choose another --out"
    )


def output_error(
    exc: BaseException | None, path: str | os.PathLike[str] | None = None, needed: int | None = None
) -> OutputError | None:
    """An :class:`OutputError` for a failed write, or None when ``exc`` is not a write failure.

    ``path`` is used when the exception names none; ``needed`` (bytes, rough) is told with a full disk.
    """
    code = getattr(exc, "errno", None)
    name = getattr(exc, "filename", None) or path
    if name is None or code not in WRITE_ERRNOS:
        return None
    target = shown(name)
    if code in DENIED:
        return OutputError(
            f"cannot write {target}: permission denied (read-only folder?); choose another --out or fix its permissions"
        )
    if code == errno.EROFS:
        return OutputError(f"cannot write {target}: read-only file system; choose another --out")
    return OutputError(no_space_message(name, needed, quota=code == errno.EDQUOT))


ACTIVE: list[Guard] = []  # the guards of the blocks being written now (innermost last)


@dataclass
class Guard:
    """What :func:`writing` knows of the output: its path, the bytes it needs (rough) and its temporaries."""

    path: Path | None  # None: not known yet (temporaries set it with their first final path)
    needed: int | Callable[[], int | None] | None = None  # or a function that estimates it when asked
    temporaries: list[Path] = field(default_factory=list)
    gdal_messages: list[str] = field(default_factory=list)

    def remove_temporaries(self) -> None:
        """Remove the temporaries of every block being written (this one and those around it) before measuring the
        free space: the failure removes them anyway, and their space is the user's."""
        for tmp in [*self.temporaries, *(t for guard in ACTIVE for t in guard.temporaries)]:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()

    def no_space(self, code: int) -> OutputError:
        """A full disk is told for the whole output (the outermost block): its path and what it needs."""
        self.remove_temporaries()
        outer = next((guard for guard in ACTIVE if guard.path is not None), self)
        sizes = [s for s in (outer.size(), self.size()) if s]
        return OutputError(
            no_space_message(outer.path or Path.cwd(), max(sizes, default=None), quota=code == errno.EDQUOT)
        )

    def error(self, exc: BaseException | None) -> OutputError | None:
        """The :class:`OutputError` for ``exc`` (or for GDAL's logged write errors when ``exc`` is None)."""
        if isinstance(exc, OSError) and getattr(exc, "errno", None) in WRITE_ERRNOS:
            named = self._named(getattr(exc, "filename", None))
            if named is None:
                return None
            if exc.errno in NO_SPACE:
                return self.no_space(exc.errno)
            self.remove_temporaries()
            return output_error(exc, named, self.size())
        text = " ".join([str(exc) if exc is not None else "", *self.gdal_messages])
        if exc is not None and not _is_gdal_error(exc):
            return None
        if GDAL_DENIED.search(text):
            code = errno.EACCES
        elif GDAL_READ_ONLY.search(text):
            code = errno.EROFS
        elif GDAL_NO_SPACE.search(text) or (
            (exc is not None or GDAL_WRITE_FAILED.search(text)) and self._nearly_full()
        ):
            code = errno.ENOSPC  # GDAL's texts rarely say why ("Failed to commit transaction"): the free space does
        elif exc is None and GDAL_WRITE_FAILED.search(text):
            return OutputError(
                f"cannot write {shown(self.path or Path.cwd())}: GDAL reported "
                f"{self.gdal_messages[0]}; check the disk and choose another --out"
            )
        else:
            return None
        if code == errno.ENOSPC:
            return self.no_space(code)
        self.remove_temporaries()
        return output_error(OSError(code, os.strerror(code), None), self.path, self.size())

    def size(self) -> int | None:
        return self.needed() if callable(self.needed) else self.needed

    def _named(self, filename: str | None) -> Path | None:
        """The path to name: our output rather than one of its hidden temporaries; None for a file outside the
        output's folder (an input that cannot be read is not a write failure)."""
        if filename is None or any(Path(filename) == t or t in Path(filename).parents for t in self.temporaries):
            return self.path
        if self.path is None:
            return Path(filename)
        name, folder = Path(os.path.abspath(filename)), Path(os.path.abspath(self.path)).parent
        return Path(filename) if name == folder or folder in name.parents or name in folder.parents else None

    def _nearly_full(self) -> bool:
        """Whether the disk would be (nearly) full even without the temporaries (measured, not removed: the
        caller may still handle the error)."""
        free = shutil.disk_usage(_existing(self.path or Path.cwd())).free
        return free + sum(_size(t) for t in {*self.temporaries, *(t for g in ACTIVE for t in g.temporaries)}) < max(
            self.size() or 0, 1 << 20
        )


def _size(path: Path) -> int:
    """Bytes of a file, or of the files in a folder (0 when it is gone)."""
    with contextlib.suppress(OSError):
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    return 0


def _is_gdal_error(exc: BaseException) -> bool:
    """An error of GDAL (rasterio, pyogrio) or SQLite (GeoPackages): its text says why a write failed."""
    return type(exc).__module__.split(".")[0] in ("rasterio", "pyogrio", "sqlite3")


class _GdalLog(logging.Handler):
    """Collects what rasterio logs of GDAL errors that say a write failed (GDAL does not always raise them,
    e.g. when a GeoTIFF is closed on a full disk)."""

    def __init__(self, into: list[str]):
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = record.getMessage()
            if GDAL_WRITE_FAILED.search(message):
                self.into.append(message.removeprefix("GDAL signalled an error: "))


@contextlib.contextmanager
def writing(
    path: str | os.PathLike[str] | None,
    needed: int | Callable[[], int | None] | None = None,
    temporaries: list[Path] | None = None,
) -> Iterator[Guard]:
    """Guard a block that writes ``path``: a write failure becomes an :class:`OutputError`; so do write errors
    GDAL only logged (checked when the block ends, before the caller renames its temporary)."""
    guard = Guard(
        None if path is None else Path(os.fspath(path)), needed, temporaries if temporaries is not None else []
    )
    ACTIVE.append(guard)
    logger = logging.getLogger("rasterio")
    handler, level = _GdalLog(guard.gdal_messages), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        try:
            yield guard
        except OutputError:
            raise
        except Exception as exc:
            if (error := guard.error(exc)) is None:
                raise
            raise error from exc
        if guard.gdal_messages and (error := guard.error(None)) is not None:
            raise error
    finally:
        ACTIVE.remove(guard)
        logger.removeHandler(handler)
        logger.setLevel(level)


def check_written() -> None:
    """Raise the :class:`OutputError` of a write error GDAL only logged in the blocks :func:`writing` guards now
    (call it before renaming what such a block wrote to its final name)."""
    for guard in ACTIVE:
        if guard.gdal_messages and (error := guard.error(None)) is not None:
            raise error


@contextlib.contextmanager
def gdal_stderr_filtered() -> Iterator[None]:
    """While a command runs, text written straight to file descriptor 2 by C libraries (libtiff's "No space left
    on device", GDAL's "ERROR 1: ...") passes through a pipe: lines about a failed write are held back and shown
    only if the command does not end in an :class:`OutputError` (which says it in one line); the rest pass on at
    once. Python's own ``sys.stderr`` keeps writing to the terminal directly (progress bars stay live)."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError):
        yield
        return
    held: list[bytes] = []
    swapped = _python_stderr_to(original)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = line.decode("utf-8", "replace")
                if GDAL_WRITE_FAILED.search(text) or GDAL_DENIED.search(text):
                    held.append(line)
                else:
                    with contextlib.suppress(OSError):
                        os.write(original, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    failed = False
    try:
        yield
    except OutputError:
        failed = True
        raise
    finally:
        os.dup2(original, 2)  # the pipe's last writer closes: the thread reads to its end
        thread.join(timeout=2)
        if swapped is not None:
            mine, sys.stderr = sys.stderr, swapped
            with contextlib.suppress(OSError, ValueError):
                mine.close()
        if not failed:
            for line in held:
                os.write(2, line)
        if not thread.is_alive():  # else a child process still holds the pipe: the thread forwards its output
            os.close(original)


def _python_stderr_to(fd: int):  # -> the previous sys.stderr, or None when it was left alone
    """Point ``sys.stderr`` at a duplicate of ``fd`` when it writes to descriptor 2 (not in test runners)."""
    try:
        if sys.stderr.fileno() != 2:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    previous = sys.stderr
    sys.stderr = open(  # noqa: SIM115 (stays open as sys.stderr until restored)
        os.dup(fd), "w", buffering=1, encoding=previous.encoding, errors="backslashreplace"
    )
    return previous


def stray_error(exc: BaseException, out: str | os.PathLike[str] | None = None) -> LandcoverError | None:
    """The CLI's last resort: an error no writer translated (a run folder that cannot be created, a checkpoint
    torch cannot save, a path that is not UTF-8) as a :class:`LandcoverError`, or None."""
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in exc.reason and isinstance(exc.object, str):
        return ConfigError(
            f"{shown(exc.object)} is not valid UTF-8 (GDAL cannot open or write such paths); rename "
            "it with UTF-8 characters or choose another path"
        )
    name = getattr(exc, "filename", None)
    if (
        isinstance(exc, OSError)
        and exc.errno in DENIED
        and name
        and os.path.isfile(name)
        and not os.access(name, os.R_OK)
    ):
        return ConfigError(f"cannot read {shown(name)}: permission denied; fix its permissions")
    if isinstance(exc, OSError):
        return output_error(exc, out)
    if isinstance(exc, RuntimeError) and "write failed" in str(exc) and out is not None:  # torch.save
        free = shutil.disk_usage(_existing(Path(os.fspath(out)))).free
        if free < 1 << 20:
            return output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), out)
    return None


def undecodable_path_error(values: object) -> ConfigError | None:
    """An error for the first path among ``values`` (a command's arguments) that is not UTF-8, or None."""
    for value in values if isinstance(values, list | tuple) else [values]:
        if isinstance(value, list | tuple):
            if (error := undecodable_path_error(value)) is not None:
                return error
        elif isinstance(value, os.PathLike) and has_undecodable_bytes(value):
            return ConfigError(
                f"{shown(value)} is not valid UTF-8 (GDAL cannot open or write such paths); rename "
                "it with UTF-8 characters or choose another path"
            )
    return None
