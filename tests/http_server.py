"""A small HTTP server for remote-read tests and benchmarks: files of a folder over 127.0.0.1 with Range support.

:class:`CogServer` serves ``root`` on ``127.0.0.1`` (a free port) from background threads, like a static object
store: ``GET`` and ``HEAD``, single byte ranges (206 + ``Content-Range``), multi-range requests
(``multipart/byteranges``), 416 for a range past the end, ``Accept-Ranges: bytes`` and keep-alive. Every URL
starts with a random prefix unique to the server (:meth:`CogServer.url`), so GDAL's process-wide
``/vsicurl/`` caches never answer one test with another test's file. It counts requests and body bytes sent per
file, and injects faults per file: an HTTP status ``times`` times (then serves) or always, or a dropped
connection (:meth:`CogServer.fail`, :meth:`CogServer.drop`).

Tests and ``scripts/bench_remote.py`` run it in a child process through :class:`ServerProcess` (the
``cog_server`` fixture, tests/conftest.py): GDAL may hold Python's GIL during network I/O, which would stall a
server running on a thread of the client's process.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

HOST = "127.0.0.1"
_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass
class Fault:
    """What to answer instead of the file: ``status`` (or a dropped connection when 0), ``times`` more times
    (None: always)."""

    status: int
    times: int | None


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # relative to the served folder
    range: str | None  # the Range header as sent
    status: int  # 0: connection dropped
    sent: int  # body bytes


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Inclusive (start, end) byte ranges of a ``Range: bytes=...`` header clipped to ``size``; [] when none is
    satisfiable, None when the header is not a bytes range (then the whole file is sent)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    ranges = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if m is None or m.group(1) == m.group(2) == "":
            return None
        if m.group(1) == "":  # suffix: the last n bytes
            n = int(m.group(2))
            if n > 0 and size > 0:
                ranges.append((max(0, size - n), size - 1))
            continue
        start = int(m.group(1))
        end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < start:
            return None
        if start < size:
            ranges.append((start, end))
    return ranges


class CogServer:
    """Files under ``root`` over HTTP on 127.0.0.1; see the module doc. Use as a context manager or call
    :meth:`close`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.prefix = secrets.token_hex(6)
        self.requests: Counter[str] = Counter()  # requests per path (faults included)
        self.bytes_sent: Counter[str] = Counter()  # body bytes per path
        self.log: list[Request] = []
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((HOST, 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="cog-server", daemon=True)
        self._thread.start()

    def url(self, name: str, query: str = "") -> str:
        """``http://127.0.0.1:PORT/<prefix>/<name>`` (plus ``?query``)."""
        return f"http://{HOST}:{self.port}/{self.prefix}/{name}" + (f"?{query}" if query else "")

    def vsicurl(self, name: str, query: str = "") -> str:
        """The GDAL path of ``name``."""
        return "/vsicurl/" + self.url(name, query)

    def fail(self, name: str, status: int, times: int | None = None) -> None:
        """Answer ``status`` to requests for ``name``: the next ``times`` ones, or always (None)."""
        with self._lock:
            self._faults[name] = Fault(status, times)

    def drop(self, name: str, times: int | None = None) -> None:
        """Close the connection without an answer to requests for ``name`` (the next ``times``, or always)."""
        self.fail(name, 0, times)

    def heal(self, name: str) -> None:
        with self._lock:
            self._faults.pop(name, None)

    def total_sent(self, name: str | None = None) -> int:
        with self._lock:
            return self.bytes_sent[name] if name is not None else sum(self.bytes_sent.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()
            self.log.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> CogServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- used by the handler ---

    def _fault(self, name: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(name)
            if fault is None:
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return Fault(fault.status, fault.times)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests[request.path] += 1
            self.bytes_sent[request.path] += request.sent
            self.log.append(request)


def _handler(server: CogServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object stores answer

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            parts = unquote(urlsplit(self.path).path).lstrip("/").split("/", 1)
            name = parts[1] if len(parts) == 2 and parts[0] == server.prefix else ""
            file = (server.root / name).resolve()
            rng = self.headers.get("Range")
            if name and (fault := server._fault(name)) is not None:
                if fault.status == 0:
                    server._record(Request(self.command, name, rng, 0, 0))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._answer(name, rng, fault.status, b"injected failure\n", head)
                return
            if not name or not file.is_file() or server.root not in file.parents:
                self._answer(name, rng, 404, b"not found\n", head)
                return
            size = file.stat().st_size
            ranges = parse_ranges(rng, size) if rng else None

            def data(a: int, b: int) -> bytes:  # bytes a..b (inclusive) of the file, read when sent
                with open(file, "rb") as f:
                    f.seek(a)
                    return f.read(b - a + 1)

            if ranges is None:
                self._answer(name, rng, 200, b"" if head else data(0, size - 1), head, length=size)
            elif not ranges:
                self._answer(name, rng, 416, b"", head, {"Content-Range": f"bytes */{size}"})
            elif len(ranges) == 1:
                ((a, b),) = ranges
                body = b"" if head else data(a, b)
                self._answer(name, rng, 206, body, head, {"Content-Range": f"bytes {a}-{b}/{size}"}, b - a + 1)
            else:
                boundary = secrets.token_hex(8)
                body = (
                    b"".join(
                        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n".encode()
                        + data(a, b)
                        + b"\r\n"
                        for a, b in ranges
                    )
                    + f"--{boundary}--\r\n".encode()
                )
                ctype = f"multipart/byteranges; boundary={boundary}"
                self._answer(name, rng, 206, body, head, {"Content-Type": ctype})

        def _answer(
            self,
            name: str,
            rng: str | None,
            status: int,
            body: bytes,
            head: bool,
            extra: dict[str, str] | None = None,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            headers = {"Content-Type": "image/tiff", "Accept-Ranges": "bytes", **(extra or {})}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            sent = 0 if head else len(body)
            # counted before the body goes out: a client that has the bytes sees them counted
            server._record(Request(self.command, name, rng, status, sent))
            if sent:
                self.wfile.write(body)

    return Handler


def _serve_in_child(root: str, conn: Connection) -> None:
    """Child process of :class:`ServerProcess`: a :class:`CogServer` driven by ``(method, args)`` messages."""
    with CogServer(root) as server:
        conn.send((server.port, server.prefix))
        while (message := conn.recv()) is not None:
            name, args = message
            if name == "stats":
                conn.send((dict(server.requests), dict(server.bytes_sent), list(server.log)))
            else:
                conn.send(getattr(server, name)(*args))


class ServerProcess:
    """A :class:`CogServer` in a child process, with the same methods and counters.

    GDAL sometimes performs network I/O while holding Python's GIL (rasterio's mask-flag lookups read TIFF
    directories, for instance); a server on a thread of the same process then cannot answer until curl times
    out. A server in its own process never waits for the client's GIL. Methods are proxied over a pipe, so call
    them from the test's thread, never while a read is in flight.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_in_child, args=(str(self.root), child), daemon=True)
        self._process.start()
        self.port, self.prefix = self._conn.recv()

    def _call(self, name: str, *args: object) -> Any:
        self._conn.send((name, args))
        return self._conn.recv()

    def url(self, name: str, query: str = "") -> str:
        return f"http://{HOST}:{self.port}/{self.prefix}/{name}" + (f"?{query}" if query else "")

    def vsicurl(self, name: str, query: str = "") -> str:
        return "/vsicurl/" + self.url(name, query)

    def fail(self, name: str, status: int, times: int | None = None) -> None:
        self._call("fail", name, status, times)

    def drop(self, name: str, times: int | None = None) -> None:
        self._call("drop", name, times)

    def heal(self, name: str) -> None:
        self._call("heal", name)

    def total_sent(self, name: str | None = None) -> int:
        return int(self._call("total_sent", name))

    def reset_counts(self) -> None:
        self._call("reset_counts")

    @property
    def requests(self) -> Counter[str]:
        return Counter(self._call("stats")[0])

    @property
    def bytes_sent(self) -> Counter[str]:
        return Counter(self._call("stats")[1])

    @property
    def log(self) -> list[Request]:
        return list(self._call("stats")[2])

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
