"""Remote rasters: where an href points (local path, ``http(s)://``, ``s3://``), the GDAL options for reading
it, and what a failed remote read becomes.

Every GDAL network option landcover sets lives here: :data:`NETWORK_ENV` plus :func:`s3_env` make
:data:`landcover.io.grid.GDAL_ENV`, which every stage applies through ``rasterio.Env``. Nothing here writes
``os.environ``.

* Transient failures (HTTP 429, 500, 502, 503, 504, timeouts, reset connections) are retried by GDAL
  ``GDAL_HTTP_MAX_RETRY`` times, waiting ``GDAL_HTTP_RETRY_DELAY`` seconds, doubled after each try.
* A failure that persists becomes a :class:`~landcover.errors.RemoteReadError` (:func:`remote_error`) naming
  the URL without its query string (a signature never lands in a message or log) and the HTTP status.
* ``s3://`` is read through ``/vsis3/``: with the user's AWS credentials when there are any (the usual
  ``AWS_*`` variables or ``~/.aws``), else unsigned (``AWS_NO_SIGN_REQUEST=YES``, public buckets). GDAL's own
  ``AWS_S3_ENDPOINT`` variable points it at another S3 service (the Copernicus Data Space's
  ``eodata.dataspace.copernicus.eu``); path-style addressing is then used unless ``AWS_VIRTUAL_HOSTING``
  says otherwise.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from landcover.errors import CorruptFileError, RemoteReadError

NETWORK_ENV: dict[str, object] = {
    # do not list a remote "folder" when opening a file in it (a request per open otherwise)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.xml,.vrt",
    # transient failures (429, 500, 502, 503, 504, timeouts) are retried, the delay doubling each time:
    # 0.5 + 1 + 2 + 4 + 8 s, then the read fails
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 0.5,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_CONNECTTIMEOUT": 20,
    # COG reads: merge neighbouring ranges, keep what was fetched
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "CPL_VSIL_CURL_CACHE_SIZE": 64 * 1024 * 1024,
}
"""GDAL's network options, applied with the rest of GDAL_ENV through ``rasterio.Env``."""

REMOTE_SCHEMES = ("http", "https", "s3")
NETWORK_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/")
AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
_STATUS_RE = re.compile(r"HTTP (?:response|error) code:?\s*(\d{3})", re.I)
_CURL_RE = re.compile(r"CURL error:\s*([^\n]+)", re.I)
_QUERY_RE = re.compile(r"\?[^\s'\"]*")


def s3_env(environ: Mapping[str, str] | None = None, home: Path | None = None) -> dict[str, object]:
    """GDAL options for ``/vsis3/``: unsigned requests when the user has no AWS credentials, path-style
    addressing for a custom ``AWS_S3_ENDPOINT``. Options the user set in the environment are left to GDAL."""
    env = os.environ if environ is None else environ
    aws = (home if home is not None else Path.home()) / ".aws"
    options: dict[str, object] = {}
    has_credentials = any(env.get(v) for v in AWS_CREDENTIAL_VARIABLES) or any(
        (aws / name).is_file() for name in ("credentials", "config")
    )
    if not has_credentials and "AWS_NO_SIGN_REQUEST" not in env:
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    if env.get("AWS_S3_ENDPOINT") and "AWS_VIRTUAL_HOSTING" not in env:
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


def is_remote(href: str) -> bool:
    """Whether ``href`` is a URL (http(s)://, s3://) or a GDAL network path (/vsicurl/, /vsis3/, ...)."""
    return urlparse(href).scheme in REMOTE_SCHEMES or href.startswith(NETWORK_PREFIXES)


def gdal_path(href: str, base: str | Path | None = None) -> str:
    """The GDAL path of ``href``: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3, an absolute path for a file.

    A relative ``href`` is resolved against ``base`` (the folder or URL of the document holding it).
    """
    scheme = urlparse(href).scheme
    if scheme in ("http", "https"):
        return "/vsicurl/" + href
    if scheme == "s3":
        return "/vsis3/" + href[len("s3://") :]
    if scheme == "file":
        return urlparse(href).path
    if href.startswith("/vsi") or Path(href).is_absolute():
        return href
    if base is None:
        return str(Path(href).resolve())
    base_s = str(base)
    if urlparse(base_s).scheme in REMOTE_SCHEMES:
        return gdal_path(base_s.rstrip("/") + "/" + href)
    return str((Path(base_s) / href).resolve())


def public_url(path: str) -> str:
    """The URL of a GDAL path or href without its query string (signatures, SAS tokens): safe to print."""
    if path.startswith("/vsicurl/"):
        path = path[len("/vsicurl/") :]
    elif path.startswith("/vsis3/"):
        path = "s3://" + path[len("/vsis3/") :]
    return path.split("?", 1)[0].split("#", 1)[0]


def scrub(text: str) -> str:
    """``text`` with every query string (``?...`` up to a space or quote) removed."""
    return _QUERY_RE.sub("", text)


def _messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of the exceptions it was raised from (rasterio chains GDAL's error stack)."""
    seen: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(seen) < 20:
        seen.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return seen


def probe_status(path: str, timeout: float = 10.0) -> int | None:
    """The HTTP status a one-byte GET of an http(s) ``path`` gets now, or None (not http, no answer).

    Used after a failed read, whose GDAL error does not always carry the status."""
    url = path[len("/vsicurl/") :] if path.startswith("/vsicurl/") else path
    if urlparse(url).scheme not in ("http", "https"):
        return None
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _advice(status: int | None) -> str:
    if status in (401, 403):
        return (
            "the server refused access: the link may need signing (--sign) or its signature has expired "
            "(search again for fresh links)"
        )
    if status in (404, 410):
        return "the file is not there: check the URL, or that the item has not been removed (search again)"
    if status is not None and status >= 500:
        return "the server kept failing after retries: try again later (an interrupted run resumes)"
    return "check the URL and the network connection, then run again (an interrupted run resumes)"


def remote_error(path: str, exc: BaseException, probe: bool = True) -> RemoteReadError | CorruptFileError:
    """The :class:`RemoteReadError` for a failed open or read of the remote ``path``: one line naming the URL
    (without query string) and the HTTP status (from GDAL's messages, else asked again with one
    ``Range: bytes=0-0`` request when ``probe``), and what to do; a :class:`CorruptFileError` when that request
    succeeds (the file is there but is not a readable raster). Raise it ``from None``: the GDAL messages it
    replaces may hold the signed URL."""
    messages = _messages(exc)
    status = next((int(m.group(1)) for text in messages if (m := _STATUS_RE.search(text))), None)
    curl = next((m.group(1).strip() for text in messages if (m := _CURL_RE.search(text))), None)
    if status is None and curl is None and probe:
        answer = probe_status(path)
        if answer is not None and answer < 400:  # the server answers: the file itself is bad
            return CorruptFileError(
                f"cannot read {public_url(path)} as a raster ({scrub(messages[-1])}); the file is truncated or "
                "not a raster: check the URL points at a GeoTIFF/JPEG 2000 file"
            )
        status = answer
    what = f"HTTP {status}" if status is not None else scrub(curl or messages[-1])
    return RemoteReadError(f"cannot read {public_url(path)} ({what}); {_advice(status)}")
