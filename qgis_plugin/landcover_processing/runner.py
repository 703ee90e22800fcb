"""Running the installed ``landcover`` command for QGIS: which executable, its progress, cancelling, its error.

Plain Python (no qgis import), so it is tested without QGIS. ``landcover`` prints ``progress: DONE/TOTAL STAGE``
lines on stderr when ``LANDCOVER_PROGRESS=lines`` is set, and one line ``error: ...`` (exit code 2) when the
user's input is wrong.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ENV = "LANDCOVER_EXECUTABLE"
PROGRESS = re.compile(r"^progress: (\d+)/(\d+) (.*)$")


class LandcoverNotFound(RuntimeError):
    """No ``landcover`` executable where the setting, the environment or PATH says."""


def find_executable(setting: str = "") -> str:
    """The ``landcover`` to run: the provider's setting if set, else ``$LANDCOVER_EXECUTABLE``, else PATH."""
    for candidate, origin in ((setting, "the provider setting"), (os.environ.get(ENV, ""), f"${ENV}")):
        if candidate.strip():
            found = shutil.which(os.path.expanduser(candidate.strip()))
            if found is None:
                raise LandcoverNotFound(
                    f"{origin} names {candidate!r}, which is not an executable file; set it to the full path of "
                    "`landcover` (e.g. /path/to/.venv/bin/landcover)"
                )
            return found
    found = shutil.which("landcover")
    if found is None:
        raise LandcoverNotFound(
            "`landcover` is not on PATH: set the full path of it in Settings > Options > Processing > Providers > "
            f"landcover, or in the environment variable {ENV}"
        )
    return found


@dataclass
class Progress:
    """Overall percentage from ``progress:`` lines: a ``scenes`` stage (several inputs) splits 0-100 % into
    scenes; within a scene the furthest fraction of its steps counts (the COG step after the windows does not
    move the bar back)."""

    scene: int = 0
    scenes: int = 1
    fraction: float = 0.0
    stage: str = ""
    percent: float = field(default=0.0)

    def update(self, line: str) -> bool:
        """Read one stderr line; True when it was a progress line."""
        match = PROGRESS.match(line.strip())
        if match is None:
            return False
        done, total, stage = int(match[1]), max(1, int(match[2])), match[3]
        if stage == "scenes":
            if done != self.scene:
                self.fraction = 0.0
            self.scene, self.scenes = done, total
        else:
            self.fraction = max(self.fraction, min(1.0, done / total))
            self.stage = stage
        self.percent = min(100.0, 100.0 * (min(self.scene, self.scenes) + self.fraction) / self.scenes)
        return True


@dataclass
class Outcome:
    returncode: int
    canceled: bool
    error: str  # the ``error:`` line (or the last stderr line) when it failed, else ""
    log: list[str]


def error_line(lines: Sequence[str]) -> str:
    """The one-line error landcover printed, or the last line of stderr."""
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    text = [line for line in lines if line.strip()]
    return text[-1].strip() if text else ""


def _reader(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip("\r\n"))
    lines.put(None)


def run(
    args: Sequence[str],
    on_progress: Callable[[float, str], None],
    is_canceled: Callable[[], bool],
    on_line: Callable[[str], None] = lambda line: None,
    grace_s: float = 10.0,
) -> Outcome:
    """Run ``args`` (the executable first) with progress lines on; report the percentage and each other line;
    poll ``is_canceled`` and, when it says so, SIGTERM the command (landcover then removes its partial files)
    and SIGKILL it after ``grace_s``."""
    env = {**os.environ, "LANDCOVER_PROGRESS": "lines", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    progress, log, canceled = Progress(), [], False
    while True:
        if not canceled and is_canceled():
            canceled = True
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        if progress.update(line):
            on_progress(progress.percent, progress.stage)
        else:
            log.append(line)
            on_line(line)
    returncode = proc.wait()
    proc.stdout.close()
    return Outcome(returncode, canceled, error_line(log) if returncode else "", log)
