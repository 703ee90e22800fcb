"""Remote COGs over HTTP (issue 16): read through the product/reader code exactly as local files, windowed,
retried when the server fails for a while, and a clear RemoteReadError when it keeps failing.

Every test that talks HTTP uses the ``cog_server`` fixture (tests/conftest.py): a server on 127.0.0.1 only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from landcover.errors import CorruptFileError, RemoteReadError
from landcover.io import remote
from landcover.io.grid import Grid, open_raster
from landcover.sources.band_files import assemble, classify, read_band
from landcover.sources.band_reader import BandReader
from landcover.sources.reader import SceneReader, strips
from landcover.sources.sentinel2 import Product
from tests.http_server import CogServer, ServerProcess, parse_ranges
from tests.s2_fixtures import CRS, ORIGIN, pixels

LOCALHOST = pytest.mark.allow_hosts(["127.0.0.1"])
TILE = "T33UUP_20230601T100031"
BANDS = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B11": 20, "SCL": 20}


def write_cog(path: Path, data: np.ndarray, res: float = 10.0, blocksize: int = 256, **extra: object) -> Path:
    """A Cloud-Optimized GeoTIFF (deflate, internal tiles, overviews when larger than a tile)."""
    arr = data[None] if data.ndim == 2 else data
    profile = {
        "driver": "COG", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
        "dtype": arr.dtype.name, "crs": CRS, "transform": from_origin(*ORIGIN, res, res),
        "compress": "deflate", "blocksize": blocksize, **extra,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
    return path


def per_band_files(folder: Path, size: int = 128) -> list[str]:
    """A product as per-band COGs at native 10/20 m (128 px blocks), named like ESA's files."""
    names = []
    for seed, (band, res) in enumerate(BANDS.items()):
        n = size * 10 // res
        name = f"{TILE}_{band}_{res}m.tif"
        write_cog(folder / name, pixels((n, n), seed, band, offset=1000 if band != "SCL" else 0), res, 128)
        names.append(name)
    return names


def product(files: dict[str, tuple[str, int]]) -> Product:
    """A product of ``{band: (GDAL path, band index)}``, opened through read_band like every input."""
    bands = {b: read_band(b, path, index) for b, (path, index) in files.items()}
    scl = bands.pop("SCL", None)
    offsets = dict.fromkeys(bands, -1000.0)
    return Product("test", TILE, "folder", "L2A", bands, scl=scl, offsets=offsets, processing_baseline="05.09")


def read_scene(prod: Product, windows: list[Window]) -> list[tuple[np.ndarray, ...]]:
    with SceneReader(prod, list(prod.bands), threads=2) as reader:
        out = []
        for w in windows:
            sw = reader.read(w)
            out.append((sw.image, sw.valid, sw.cloud))
        return out


def assert_same(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> None:
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if u is None or v is None:  # no cloud mask
                assert u is v
                continue
            assert u.dtype == v.dtype and u.shape == v.shape
            assert u.tobytes() == v.tobytes()


# --- reading --------------------------------------------------------------------------------------------


@LOCALHOST
def test_per_band_cogs_over_http_read_like_local_files(cog_server: ServerProcess) -> None:
    names = per_band_files(cog_server.root)
    local = assemble([c for n in names if (c := classify(n, str(cog_server.root / n)))], "local")
    remote_files = assemble([c for n in names if (c := classify(n, cog_server.vsicurl(n)))], "http")
    assert remote_files["B02"].path.startswith("/vsicurl/http://127.0.0.1:")
    assert {b: f.resolution for b, f in remote_files.items()} == {b: f.resolution for b, f in local.items()}
    grid = Grid(rasterio.crs.CRS.from_string(CRS), from_origin(*ORIGIN, 10, 10), 128, 128)
    windows = [*strips(grid, 32, 64), Window(17, 9, 50, 70)]  # full-scene strips, then a sub-window
    prods = [product({b: (f.path, 1) for b, f in files.items()}) for files in (local, remote_files)]
    by_http, on_disk = read_scene(prods[1], windows), read_scene(prods[0], windows)
    assert_same(by_http, on_disk)
    assert prods[1].bands["B05"].resolution == 20  # the 20 m bands were resampled by the reader
    assert cog_server.total_sent() > 0


@LOCALHOST
def test_multiband_cog_over_http_reads_like_the_local_file(cog_server: ServerProcess) -> None:
    data = np.stack([pixels((300, 300), seed, offset=1000) for seed in range(4)])
    write_cog(cog_server.root / "stack.tif", data, blocksize=128)
    bands = ("B02", "B03", "B04", "B08")

    def files(path: str) -> dict[str, tuple[str, int]]:
        return {b: (path, i) for i, b in enumerate(bands, 1)}

    windows = [Window(0, 0, 300, 128), Window(0, 128, 300, 172), Window(5, 137, 130, 11)]
    by_http = read_scene(product(files(cog_server.vsicurl("stack.tif"))), windows)
    on_disk = read_scene(product(files(str(cog_server.root / "stack.tif"))), windows)
    assert_same(by_http, on_disk)


@pytest.fixture
def large_cog(cog_server: ServerProcess) -> Path:
    """4096 x 4096 uint16, 256 px tiles, deflate, overviews: about 25 MB of hard-to-compress pixels."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4000, (4096, 4096), dtype=np.uint16)
    return write_cog(cog_server.root / "large.tif", data, overview_resampling="average")


def read_through_band_reader(path: str, res: float, side: int, resampling: Resampling, window: Window) -> np.ndarray:
    """``window`` of the B04 file at ``path`` read by a BandReader onto a ``side`` px grid of ``res`` m at ORIGIN."""
    grid = Grid(rasterio.crs.CRS.from_string(CRS), from_origin(*ORIGIN, res, res), side, side)
    reader = BandReader(read_band("B04", path), grid, resampling, None)
    try:
        return reader.read(window)
    finally:
        reader.close()


@LOCALHOST
def test_a_small_window_of_a_large_remote_cog_fetches_a_small_fraction(
    cog_server: ServerProcess, large_cog: Path
) -> None:
    size = large_cog.stat().st_size
    path = cog_server.vsicurl(large_cog.name)
    window = read_through_band_reader(path, 10, 4096, Resampling.nearest, Window(2000, 3000, 10, 10))
    with rasterio.open(large_cog) as ds:
        assert np.array_equal(window, ds.read(1, window=Window(2000, 3000, 10, 10)))
    sent = cog_server.total_sent()
    print(f"10x10 window: {sent} of {size} bytes sent ({100 * sent / size:.2f} %), {cog_server.requests}")
    assert sent < 0.05 * size


@LOCALHOST
def test_a_downsampled_read_of_a_remote_cog_uses_its_overviews(cog_server: ServerProcess, large_cog: Path) -> None:
    size = large_cog.stat().st_size
    with open_raster(cog_server.vsicurl(large_cog.name)) as ds:
        small = ds.read(1, out_shape=(256, 256), resampling=Resampling.average)
    sent = cog_server.total_sent()
    print(f"whole band at 1/16 (GDAL RasterIO): {sent} of {size} bytes sent ({100 * sent / size:.2f} %)")
    assert small.any() and sent < 0.05 * size


@LOCALHOST
def test_a_downsampled_band_reader_uses_the_overviews(cog_server: ServerProcess, large_cog: Path) -> None:
    size = large_cog.stat().st_size
    small = read_through_band_reader(
        cog_server.vsicurl(large_cog.name), 160, 256, Resampling.average, Window(0, 0, 256, 256)
    )
    assert small.shape == (256, 256) and small.any()
    sent = cog_server.total_sent()
    print(f"whole band at 1/16: {sent} of {size} bytes sent ({100 * sent / size:.2f} %)")
    assert sent < 0.10 * size


# --- reliability ----------------------------------------------------------------------------------------


@LOCALHOST
def test_a_server_that_answers_503_twice_is_survived(cog_server: ServerProcess) -> None:
    data = pixels((1024, 1024), 3)
    write_cog(cog_server.root / "B04.tif", data)
    cog_server.fail("B04.tif", 503, times=2)
    band = read_band("B04", cog_server.vsicurl("B04.tif"))  # opening: retried
    assert [r.status for r in cog_server.log[:3]] == [503, 503, 200]
    with open_raster(band.path) as ds:
        cog_server.fail("B04.tif", 503, times=2)  # reading a tile not fetched yet: retried
        before = len(cog_server.log)
        window = ds.read(1, window=Window(700, 900, 20, 20))
    assert np.array_equal(window, data[900:920, 700:720])
    statuses = [r.status for r in cog_server.log[before:]]
    assert statuses[:2] == [503, 503] and statuses[2] == 206


@LOCALHOST
def test_a_missing_remote_file_is_a_remote_read_error_naming_url_and_status(cog_server: ServerProcess) -> None:
    with pytest.raises(RemoteReadError, match=r"cannot read http://127\.0\.0\.1:\d+/\w+/T33UUP_B04\.tif \(HTTP 404\)"):
        read_band("B04", cog_server.vsicurl("T33UUP_B04.tif"))
    with pytest.raises(RemoteReadError, match="HTTP 404"):
        open_raster(cog_server.vsicurl("T33UUP_B04.tif"))


@LOCALHOST
def test_a_file_that_disappears_while_a_scene_is_read_is_a_remote_read_error(cog_server: ServerProcess) -> None:
    names = per_band_files(cog_server.root, size=1024)
    files = assemble([c for n in names if (c := classify(n, cog_server.vsicurl(n)))], "http")
    prod = product({b: (f.path, 1) for b, f in files.items()})
    with SceneReader(prod, list(prod.bands), threads=2, prefetch=False) as reader:
        reader.read(Window(0, 0, 1024, 256))
        cog_server.fail(names[2], 404)  # B04
        with pytest.raises(RemoteReadError, match=rf"{names[2]} \(HTTP 404\); the file is not there"):
            reader.read(Window(0, 768, 1024, 256))


@LOCALHOST
@pytest.mark.parametrize("status", [403, 500])
def test_a_signature_never_appears_in_the_error(cog_server: ServerProcess, status: int) -> None:
    write_cog(cog_server.root / "B04.tif", pixels((1024, 1024), 4))
    signed = cog_server.vsicurl("B04.tif", "se=2026-12-02&sig=S3CR3T%2Btoken")
    cog_server.fail("B04.tif", status)
    with pytest.raises(RemoteReadError) as opening:
        read_band("B04", signed)
    band = (cog_server.heal("B04.tif"), read_band("B04", signed))[1]
    with open_raster(band.path) as ds:
        cog_server.fail("B04.tif", status)
        grid = Grid(ds.crs, ds.transform, ds.width, ds.height)
    reader = BandReader(band, grid, Resampling.nearest, None)
    try:
        with pytest.raises(RemoteReadError) as reading:
            reader.read(Window(600, 900, 10, 10))
    finally:
        reader.close()
    for error in (opening.value, reading.value):
        message = str(error)
        assert f"HTTP {status}" in message and cog_server.url("B04.tif") in message
        assert "S3CR3T" not in message and "sig=" not in message and "?" not in message
        assert error.__suppress_context__  # the GDAL messages with the signed URL are not chained
    assert "--sign" in str(opening.value) if status == 403 else "try again later" in str(opening.value)


@LOCALHOST
def test_a_refused_connection_and_a_dropped_one_are_remote_read_errors(
    cog_server: ServerProcess, tmp_path: Path
) -> None:
    with CogServer(tmp_path) as gone:
        url = gone.vsicurl("B04.tif")
    with pytest.raises(RemoteReadError, match="Could not connect"):
        read_band("B04", url)
    write_cog(cog_server.root / "B04.tif", pixels((64, 64), 5))
    cog_server.drop("B04.tif")
    with pytest.raises(RemoteReadError, match="Empty reply"):
        read_band("B04", cog_server.vsicurl("B04.tif"))


@LOCALHOST
def test_a_remote_file_that_is_not_a_raster_is_a_corrupt_file_error(cog_server: ServerProcess) -> None:
    (cog_server.root / "B04.tif").write_bytes(b"<html>not a raster</html>" * 100)
    with pytest.raises(CorruptFileError, match=r"cannot read http://127\.0\.0\.1:\d+/\w+/B04\.tif as a raster"):
        read_band("B04", cog_server.vsicurl("B04.tif"))


# --- no network ---------------------------------------------------------------------------------------


def test_s3_is_unsigned_without_credentials_and_path_style_for_another_endpoint(tmp_path: Path) -> None:
    assert remote.s3_env({}, tmp_path) == {"AWS_NO_SIGN_REQUEST": "YES"}
    assert remote.s3_env({"AWS_ACCESS_KEY_ID": "x"}, tmp_path) == {}
    assert remote.s3_env({"AWS_NO_SIGN_REQUEST": "NO"}, tmp_path) == {}
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\n")
    assert remote.s3_env({}, tmp_path) == {}
    endpoint = {"AWS_S3_ENDPOINT": "eodata.dataspace.copernicus.eu"}
    assert remote.s3_env(endpoint, tmp_path) == {"AWS_VIRTUAL_HOSTING": "FALSE"}
    assert remote.s3_env({**endpoint, "AWS_VIRTUAL_HOSTING": "TRUE"}, tmp_path) == {}


def test_public_url_drops_signatures() -> None:
    assert remote.public_url("/vsicurl/https://x.blob.core.windows.net/a/B04.tif?st=1&sig=abc") == (
        "https://x.blob.core.windows.net/a/B04.tif"
    )
    assert remote.public_url("/vsis3/bucket/key/B04.tif") == "s3://bucket/key/B04.tif"
    assert remote.scrub("HTTP error code: 403 - https://h/a.tif?sig=abc. Retrying") == (
        "HTTP error code: 403 - https://h/a.tif Retrying"
    )


def test_range_headers_are_parsed_like_rfc_7233() -> None:
    assert parse_ranges("bytes=0-9", 100) == [(0, 9)]
    assert parse_ranges("bytes=90-", 100) == [(90, 99)]
    assert parse_ranges("bytes=-5", 100) == [(95, 99)]
    assert parse_ranges("bytes=0-1,50-199", 100) == [(0, 1), (50, 99)]
    assert parse_ranges("bytes=100-", 100) == []
    assert parse_ranges("items=0-1", 100) is None


@LOCALHOST
def test_a_remote_scene_ingests_like_the_local_one_and_a_failure_leaves_nothing(
    cog_server: ServerProcess, tmp_path: Path
) -> None:
    from landcover.dataset.scene import ingest_scene
    from landcover.dataset.settings import IngestConfig

    names = per_band_files(cog_server.root, size=512)
    cfg = IngestConfig(tile_size=64, nomenclature="level1")
    prods = {}
    for where, path_of in (("local", lambda n: str(cog_server.root / n)), ("http", cog_server.vsicurl)):
        files = assemble([c for n in names if (c := classify(n, path_of(n)))], where)
        prods[where] = product({b: (f.path, 1) for b, f in files.items()})
    bands = list(prods["local"].bands)
    cog_server.fail(names[1], 404)  # B03, after the product was opened
    with pytest.raises(RemoteReadError, match=rf"{names[1]} \(HTTP 404\)"):
        ingest_scene(prods["http"], None, tmp_path / "failed", cfg, bands)
    assert not (tmp_path / "failed" / "scenes").exists() or not any((tmp_path / "failed" / "scenes").iterdir())
    cog_server.heal(names[1])
    scenes = {w: ingest_scene(prods[w], None, tmp_path / w, cfg, bands) for w in ("local", "http")}
    for name in ("image.tif",):
        with rasterio.open(scenes["local"] / name) as a, rasterio.open(scenes["http"] / name) as b:
            assert a.read().tobytes() == b.read().tobytes()


def test_a_failed_band_read_raises_only_once_no_read_of_the_window_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raising while other bands of the window are still being read let ingest close its output under them: with
    remote files GDAL then stalled those reads until GDAL_HTTP_TIMEOUT (60 s, twice) before the error came out."""
    names = per_band_files(tmp_path, size=64)
    files = assemble([c for n in names if (c := classify(n, str(tmp_path / n)))], "local")
    prod = product({b: (f.path, 1) for b, f in files.items()})
    finished: list[str] = []
    read_into = BandReader.read_into

    def slow_or_failing(self: BandReader, window: Window, out: np.ndarray) -> None:
        if self.band.band == "B02":
            raise RemoteReadError("cannot read B02 (HTTP 404)")
        time.sleep(0.3)
        read_into(self, window, out)
        finished.append(self.band.band)

    monkeypatch.setattr(BandReader, "read_into", slow_or_failing)
    with SceneReader(prod, list(prod.bands), threads=4, prefetch=False) as reader:
        with pytest.raises(RemoteReadError):
            reader.read(Window(0, 0, 64, 64))
        assert sorted(finished) == sorted([*(b for b in prod.bands if b != "B02"), "SCL"])  # and the mask
