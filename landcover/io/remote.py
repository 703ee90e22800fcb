"""Remote rasters: where an href points (local path, ``http(s)://``, ``s3://``) and the GDAL options for reading it.

Every GDAL network option landcover sets lives in :data:`NETWORK_ENV`; it is part of
:data:`landcover.io.grid.GDAL_ENV`, which every stage applies through ``rasterio.Env``. Nothing here
touches ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

NETWORK_ENV: dict[str, object] = {
    # do not list a remote "folder" when opening a file in it (a request per open otherwise)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.xml,.vrt",
    # transient failures (429, 5xx, timeouts) are retried with exponential back-off
    "GDAL_HTTP_MAX_RETRY": 4,
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


def is_remote(href: str) -> bool:
    """Whether ``href`` is a URL (http(s)://, s3://) or a GDAL network path (/vsicurl/, /vsis3/)."""
    return urlparse(href).scheme in REMOTE_SCHEMES or href.startswith(("/vsicurl/", "/vsis3/"))


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
