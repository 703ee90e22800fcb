"""Benchmark remote reads: a synthetic L2A tile as COGs over localhost HTTP against the same files on local disk.

What it does, in one run:

1. Writes (once; cached in ``--workdir``) the 12 L2A bands and SCL of the synthetic tile of
   ``scripts/bench_ingest.py`` (same landscape and noise) as Cloud-Optimized GeoTIFFs at their native 10/20/60 m
   resolutions: deflate with the horizontal predictor, 1024 px internal tiles, overviews, like Earth Search's
   Sentinel-2 COGs, named ``T33UUP_<date>_<band>_<res>m.tif``.
2. Serves that folder with ``tests/http_server.ServerProcess`` (a ``CogServer``: Range requests on 127.0.0.1, in a
   child process, so the server's Python threads do not compete with the reader for this process's GIL).
3. Reads the whole scene through ``SceneReader`` in full-width strips, as ``landcover ingest`` does (12 bands
   onto the 10 m grid, bilinear, SCL mask), from local disk, then over HTTP; prints both times and the ratio
   (the bytes sent over HTTP, too).
4. With ``--ingest``: runs ``landcover ingest`` (default settings, the CORINE-like labels of
   ``bench_ingest.make_clc``) of a STAC item of the COGs with local hrefs, then of one with HTTP hrefs, and prints
   both times and the ratio.
5. Reads a ``--window`` x ``--window`` px area of interest (1000 = 10 x 10 km) in the middle of the tile over
   HTTP as ``ingest --bbox`` does (``SceneReader(aoi=...)``, every band and SCL), with a cold cache (a fresh query
   string, so GDAL's /vsicurl/ cache does not answer), and prints the bytes sent against the size of the files.

Usage::

    .venv/bin/python scripts/bench_remote.py [--size 10980] [--workdir DIR] [--window 1000] [--ingest] [--json FILE]

The network options are landcover's (``landcover.io.grid.GDAL_ENV``). Localhost has no latency and no bandwidth
limit: this measures the overhead of GDAL's HTTP path (requests, range merging, caching), not a real network.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pystac
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_ingest import NATIVE, SENSING, TILE, band_pixels, bench_workdir, cpu_model, make_clc  # noqa: E402

from landcover.dataset.ingest import ingest  # noqa: E402
from landcover.dataset.settings import IngestConfig  # noqa: E402
from landcover.io.aoi import AOI  # noqa: E402
from landcover.io.grid import GDAL_ENV  # noqa: E402
from landcover.sources.band_files import assemble, classify  # noqa: E402
from landcover.sources.reader import SceneReader, strips, target_grid  # noqa: E402
from landcover.sources.sentinel2 import Product, open_product  # noqa: E402
from tests.http_server import ServerProcess  # noqa: E402
from tests.s2_fixtures import CRS, ORIGIN  # noqa: E402

GENERATOR_VERSION = "1"
COG_OPTIONS = {"driver": "COG", "compress": "deflate", "predictor": 2, "blocksize": 1024, "num_threads": 1}
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def _write_cog(args: tuple[str, Path, int]) -> str:
    band, path, size = args
    data = band_pixels(band, size, 7)
    res = NATIVE[band]
    profile = {"width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": data.dtype.name,
               "crs": CRS, "transform": from_origin(*ORIGIN, res, res), **COG_OPTIONS}  # fmt: skip
    tmp = path.with_name(path.name + ".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
    os.replace(tmp, path)
    return band


def make_cogs(workdir: Path, size: int, jobs: int) -> Path:
    """The folder of COGs for ``size`` (written once; reused when complete)."""
    folder = workdir / f"cog-{size}-v{GENERATOR_VERSION}"
    if (folder / "complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(b, folder / f"{TILE}_{SENSING}_{b}_{NATIVE[b]}m.tif", size) for b in (*BANDS, "SCL")]
    todo.sort(key=lambda t: NATIVE[t[0]])  # biggest first
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_write_cog, todo))
    (folder / "complete").write_text(json.dumps({"size": size}) + "\n")
    return folder


def read_all(product: Product) -> float:
    """Seconds to read the whole scene in full-width strips, as ingest does (32-px tiles, ~1024-row strips)."""
    start = time.perf_counter()
    with SceneReader(product, list(product.bands)) as reader:
        for window in strips(reader.grid, 32):
            reader.read(window)
    return time.perf_counter() - start


def read_aoi(product: Product, side: int) -> float:
    """Seconds to read a ``side`` x ``side`` px area of interest in the middle of the scene, as ingest --bbox does."""
    start = time.perf_counter()
    grid = target_grid(product, list(product.bands), 10.0)
    left, bottom, right, top = grid.bounds
    cx, cy, half = (left + right) / 2, (bottom + top) / 2, side * 10 / 2
    aoi = AOI(box(cx - half, cy - half, cx + half, cy + half), grid.crs.to_string(), "bench")
    with SceneReader(product, list(product.bands), aoi=aoi) as reader:
        for window in strips(reader.grid, 32):
            reader.read(window)
    return time.perf_counter() - start


def write_item(folder: Path, href: Callable[[str], str], out: Path) -> Path:
    """A STAC item (Planetary-Computer-shaped: asset keys B02..SCL, baseline 05.09) of the COGs, hrefs by ``href``."""
    item = pystac.Item(
        id=f"S2B_MSIL2A_{SENSING}_N0509_R022_{TILE}_{SENSING[:8]}T120000",
        geometry=None,
        bbox=None,
        datetime=datetime.datetime(2023, 1, 15, 10, 10, 21, tzinfo=datetime.UTC),
        properties={"s2:processing_baseline": "05.09", "s2:mgrs_tile": TILE[1:]},
    )
    for path in sorted(folder.glob("*.tif")):
        band = path.stem.split("_")[-2]
        item.add_asset(band, pystac.Asset(href(path.name), media_type=pystac.MediaType.COG, roles=["data"]))
    out.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return out


def time_ingest(item: Path, labels: Path, out: Path) -> float:
    """Seconds of ``landcover ingest`` of one item (default settings, CORINE-like labels)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ingest([item], out, labels=labels, config=IngestConfig())
    return time.perf_counter() - start


def remote_product(local: Product, url: str, query: str = "") -> Product:
    """``local`` with every band read from ``url`` + its file name (+ ``query``, like a signed URL)."""
    names = [Path(f.path).name for f in (*local.bands.values(), local.scl) if f is not None]
    files = assemble([c for n in names if (c := classify(n, f"/vsicurl/{url}/{n}{query}"))], url)
    scl = files.pop("SCL")
    return dataclasses.replace(local, path=url, bands={b: files[b] for b in local.bands}, scl=scl)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10980, help="10 m pixels per side (10980 = full tile)")
    parser.add_argument("--workdir", type=Path, help="cache the COGs here (default: a temp folder)")
    parser.add_argument("--window", type=int, default=1000, help="window side in 10 m pixels (1000 = 10 km)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--ingest", action="store_true", help="also time `landcover ingest` of a STAC item both ways")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    res: dict[str, object] = {"size": args.size, "cores": cores, "cpu": cpu_model(),
                              "gdal": rasterio.__gdal_version__, "load_before": os.getloadavg()}  # fmt: skip
    with bench_workdir(args.workdir, "bench-remote-") as workdir:
        start = time.perf_counter()
        folder = make_cogs(workdir, args.size, jobs=min(cores, 4))
        files = sorted(folder.glob("*.tif"))
        total = sum(f.stat().st_size for f in files)
        print(f"COGs: {folder} ({len(files)} files, {total / 2**20:.0f} MiB; ready in "
              f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        with ServerProcess(folder) as server, rasterio.Env(**GDAL_ENV):
            url = f"http://127.0.0.1:{server.port}/{server.prefix}"
            local = open_product(folder).select(BANDS)
            remote = remote_product(local, url)
            t_local = read_all(local)
            print(f"whole scene from local disk: {t_local:.1f} s", flush=True)
            t_remote = read_all(remote)
            sent, requests = server.total_sent(), sum(server.requests.values())
            print(f"whole scene over HTTP: {t_remote:.1f} s ({sent / 2**20:.0f} MiB in {requests} requests); "
                  f"ratio HTTP / local {t_remote / t_local:.2f}", flush=True)  # fmt: skip
            if args.ingest:
                labels = make_clc(workdir, args.size)
                local_item = write_item(folder, lambda n: str(folder / n), workdir / "local_item.json")
                remote_item = write_item(folder, lambda n: f"{url}/{n}?run=ingest", workdir / "remote_item.json")
                t_ingest_local = time_ingest(local_item, labels, workdir / "ds_local")
                print(f"ingest from local disk: {t_ingest_local:.1f} s", flush=True)
                t_ingest_http = time_ingest(remote_item, labels, workdir / "ds_http")
                print(f"ingest over HTTP: {t_ingest_http:.1f} s; ratio HTTP / local "
                      f"{t_ingest_http / t_ingest_local:.2f}", flush=True)  # fmt: skip
                res.update(ingest_local_s=t_ingest_local, ingest_http_s=t_ingest_http)
            server.reset_counts()
            side = min(args.window, args.size)
            t_window = read_aoi(remote_product(local, url, "?run=aoi"), side)  # another URL: a cold GDAL cache
            w_sent, w_requests = server.total_sent(), sum(server.requests.values())
            print(f"{side} x {side} px AOI over HTTP ({side / 100:g} x {side / 100:g} km, ingest's reader): "
                  f"{w_sent / 2**20:.1f} MiB in {w_requests} requests of {total / 2**20:.0f} MiB in the files "
                  f"({100 * w_sent / total:.2f} %), {t_window:.1f} s")  # fmt: skip
    res.update(cog_mib=total / 2**20, local_s=t_local, http_s=t_remote, ratio=t_remote / t_local,
               http_mib=sent / 2**20, http_requests=requests, window=side, window_mib=w_sent / 2**20,
               window_requests=w_requests, window_fraction=w_sent / total, window_s=t_window,
               load_after=os.getloadavg())  # fmt: skip
    print(f"load average before {res['load_before']}, after {res['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
