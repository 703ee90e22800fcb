"""LANDCOVER_OFFLINE: test processes and their subprocesses never reach the network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

OFFLINE = "LANDCOVER_OFFLINE"


def run_python(code: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter (not covered by pytest-socket) with the test session's environment."""
    full_env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), **env}  # an empty hub cache
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_the_test_session_is_offline_for_subprocesses_too():
    assert os.environ.get(OFFLINE) == "1"  # set by tests/conftest.py, inherited by every subprocess


def test_a_subprocess_asked_to_download_weights_fails_at_once(tmp_path):
    proc = run_python(
        """
        import time
        from landcover.errors import LandcoverError
        from landcover.models.weight_files import find_weight_file, resolve_weights
        source = resolve_weights("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18")
        start = time.perf_counter()
        try:
            find_weight_file(source, None, allow_download=True)
        except LandcoverError as exc:
            print(f"{time.perf_counter() - start:.3f}")
            print(exc)
            raise SystemExit(exc.exit_code)
    """,
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    seconds, message = proc.stdout.splitlines()
    assert float(seconds) < 1.0
    assert OFFLINE in message and "resnet18_sentinel2_all_moco" in message and "copy it to" in message
    assert not list((tmp_path / "torch").rglob("*.pth"))


def test_a_subprocess_cannot_connect_beyond_loopback(tmp_path):
    proc = run_python(
        """
        import socket, threading, time
        import landcover
        from landcover.errors import LandcoverError

        server = socket.create_server(("127.0.0.1", 0))  # loopback keeps working (local test servers)
        threading.Thread(target=server.accept, daemon=True).start()
        socket.create_connection(server.getsockname(), timeout=5).close()
        a, b = socket.socketpair()  # and so do unix sockets
        a.close(); b.close()
        start = time.perf_counter()
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=20)  # TEST-NET-1: never answers
        except OSError as exc:
            print(f"{time.perf_counter() - start:.3f}")
            print(isinstance(exc, LandcoverError), exc)
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, message = proc.stdout.splitlines()
    assert float(seconds) < 1.0
    assert message.startswith("True") and OFFLINE in message and "192.0.2.1" in message
