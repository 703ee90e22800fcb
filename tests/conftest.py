"""Shared fixtures: tiny seeded rasters and vectors with real CRSs, written in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

# No download and no connection beyond loopback, in this process and every subprocess (landcover/offline.py);
# set before anything imports landcover
os.environ["LANDCOVER_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is absent (a user's machine)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def write_raster(path: Path, data: np.ndarray, crs: str, transform, nodata=None, **extra) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **extra,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def utm_grid(tmp_path: Path) -> Path:
    """An empty 10 m reference raster in EPSG:32633 (300 x 200 px near Vienna)."""
    return write_raster(
        tmp_path / "reference.tif",
        np.zeros((200, 300), np.uint16),
        "EPSG:32633",
        from_origin(600_000, 5_340_000, 10, 10),
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.fixture
def cog_server(tmp_path: Path, request: pytest.FixtureRequest):
    """A :class:`tests.http_server.CogServer` (in a child process: :class:`~tests.http_server.ServerProcess`) serving ``tmp_path / "served"`` on 127.0.0.1, inside a
    ``rasterio.Env`` of landcover's GDAL options with quick retries (3, after 0.05 s, doubled each time).

    Only for tests marked ``@pytest.mark.allow_hosts(["127.0.0.1"])`` (pytest-socket then lets sockets connect
    to 127.0.0.1 and nowhere else). GDAL's libcurl is not guarded by pytest-socket: give GDAL only the URLs of
    this server (``server.url(name)``, ``server.vsicurl(name)``)."""
    from landcover.io.grid import GDAL_ENV
    from tests.http_server import ServerProcess

    marker = request.node.get_closest_marker("allow_hosts")
    if marker is None or list(marker.args[0]) != ["127.0.0.1"]:
        pytest.fail('a test using cog_server must be marked @pytest.mark.allow_hosts(["127.0.0.1"])')
    root = tmp_path / "served"
    root.mkdir()
    options = {
        **GDAL_ENV,
        "GDAL_HTTP_MAX_RETRY": 3,
        "GDAL_HTTP_RETRY_DELAY": 0.05,
        "GDAL_HTTP_TIMEOUT": 10,
        "GDAL_HTTP_CONNECTTIMEOUT": 5,
    }
    with ServerProcess(root) as server, rasterio.Env(**options):
        yield server
