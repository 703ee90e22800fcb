"""The offline switch: ``LANDCOVER_OFFLINE=1`` forbids downloads and connections beyond this machine.

When the variable is set (any value but empty, 0, false, no, off):

* landcover never downloads: named weights must already be in ``model.weights_dir`` or the torch
  hub cache, else a :class:`~landcover.errors.ModelError` says which file to copy where;
* from ``import landcover`` on, the process refuses socket connections to anything but loopback
  (127.0.0.0/8, ::1) and unix sockets with :class:`~landcover.errors.OfflineError` (also a
  ``ConnectionRefusedError``), at once, so a library that tries the network fails with this message
  instead of waiting for a timeout;
* ``HF_HUB_OFFLINE=1`` is set for huggingface_hub (timm, smp) unless already set;
* :func:`check_url` refuses a URL beyond this machine before any name lookup (``landcover search``).

tests/conftest.py sets it for the test session; subprocesses inherit it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from landcover.errors import OfflineError

ENV = "LANDCOVER_OFFLINE"


def is_offline() -> bool:
    """True when ``LANDCOVER_OFFLINE`` is set to anything but empty, 0, false, no or off."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # a host name: loopback only if every address it resolves to is
        if host == "localhost":
            return True
        try:
            return all(_is_loopback(str(info[4][0])) for info in socket.getaddrinfo(host, None))
        except OSError:
            return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    host = str(address[0])
    if not _is_loopback(host):
        raise OfflineError(
            f"network connection to {host}:{address[1]} refused: {ENV} is set, so landcover and the "
            f"libraries it runs stay on this machine; provide the files locally, or unset {ENV}"
        )


def guard_network() -> None:
    """Refuse non-loopback connections in this process when offline (idempotent; see module doc)."""
    if not is_offline():
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the socket module's own class, also when a test plugin has replaced socket.socket by a subclass
    cls: Any = next(c for c in socket.socket.__mro__ if c.__module__ == "socket" and c.__name__ == "socket")
    if getattr(cls.connect, "_landcover_offline", False):
        return
    connect, connect_ex = cls.connect, cls.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return connect_ex(self, address)

    guarded: dict[str, Any] = {"connect": guarded_connect, "connect_ex": guarded_connect_ex}
    for name, fn in guarded.items():
        fn._landcover_offline = True
        setattr(cls, name, fn)


def check_url(url: str) -> None:
    """Raise :class:`~landcover.errors.OfflineError` at once for a URL beyond this machine when offline.

    No name is looked up (that could wait for a DNS timeout): only ``localhost`` and loopback addresses pass.
    """
    parts = urlsplit(url)
    if not is_offline() or not parts.netloc:  # a local path or file:// URL
        return
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        literal = True
    except ValueError:
        literal = False
    if host == "localhost" or (literal and _is_loopback(host)):
        return
    raise OfflineError(
        f"{urlsplit(url).hostname or url} is beyond this machine and {ENV} is set, so landcover stays on this machine; "
        f"unset {ENV} to reach it"
    )
