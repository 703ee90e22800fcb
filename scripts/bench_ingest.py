"""Benchmark `landcover ingest` on a synthetic full-size Sentinel-2 L2A SAFE product.

What it does, in one run:

1. Builds (once; cached in ``--workdir``) a synthetic L2A product shaped like ESA's: a
   ``<name>.SAFE/GRANULE/<granule>/IMG_DATA/R10m|R20m|R60m`` tree of lossless JPEG 2000 files
   (JP2OpenJPEG, 1024 x 1024 code-stream tiles, 6 resolution levels), B02/B03/B04/B08 at 10 m,
   B05/B06/B07/B8A/B11/B12 and SCL at 20 m, B01/B09 at 60 m, and an ``MTD_MSIL2A.xml`` with
   processing baseline 04.00 and BOA_ADD_OFFSET -1000. Pixels are a landscape (parcels with
   curved borders and per-land-cover spectra, smooth gradients, clouds in SCL) plus sensor noise;
   they compress to about 8 bits per pixel, like real L2A bands. A synthetic CORINE vector
   (jittered polygons with CODE_18) covers the tile.
2. Measures the decode floor: GDAL alone decoding every JP2 file the ingest reads (12 bands +
   SCL), whole bands, in this process: (a) one thread, band after band; (b) both cores, one band
   per core (1 thread each); with ``--all-floors`` also (c) band after band with GDAL's own tile
   threads (GDAL_NUM_THREADS=ALL_CPUS). The fair floor is the fastest parallel decode, since ingest
   uses every core. CPU seconds are reported too: on a shared machine they vary less than wall time.
3. Runs ``landcover.dataset.ingest.ingest([product], out, labels=clc.gpkg, config=IngestConfig())`` in a
   child process and reports its wall time (of ``ingest()``), CPU time and peak RSS (``wait4``
   rusage of the child), and ratio = ingest time / decode floor. Target (issue): ratio <= 1.5,
   peak RSS < 3 GB. ``--variant`` repeats the ingest with other settings: IngestConfig fields
   (``overviews=false``) or image.tif creation options (``gtiff.interleave=band``, patched into
   ``landcover.dataset.scene._image_profile`` in the child) to measure a proposed change.

Usage::

    .venv/bin/python scripts/bench_ingest.py [--size 10980] [--workdir DIR] [--repeat 1]
        [--skip-sequential] [--all-floors] [--variant KEY=VALUE,...] [--profile] [--json FILE]

Time on the reference machine (2 cores, idle): --size 10980 about 7 min when the product is
cached in --workdir (1-thread decode 1.9 min, 2-core decode 1.1 min, ingest about 4 min), about
9.5 min the first time (2.5 min to make the product); each --variant adds its ingest time (2-4
min). --size 4096: about 1.5 min. On a shared machine expect longer. Without --workdir a temporary
folder is used and removed. The dataset of the default run stays in --workdir for bench_tiles.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.s2_fixtures (the synthetic SAFE metadata writer)

from tests.s2_fixtures import CRS, ORIGIN, mtd_xml, product_name  # noqa: E402

GENERATOR_VERSION = "1"
SENSING = "20230115T101021"
TILE = "T33UUP"
NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
          "B8A": 20, "B09": 60, "B11": 20, "B12": 20, "SCL": 20}  # fmt: skip
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
JP2_OPTIONS = {"QUALITY": "100", "REVERSIBLE": "YES", "BLOCKXSIZE": 1024, "BLOCKYSIZE": 1024,
               "RESOLUTIONS": 6, "CODEBLOCK_WIDTH": 64, "CODEBLOCK_HEIGHT": 64}  # fmt: skip
# Surface reflectance x 10000 per land-cover type (water, forest, crop, grass, bare, urban), per band.
SPECTRA = np.array([
    # B01  B02  B03  B04  B05  B06  B07  B08  B8A  B09  B11  B12
    [500, 450, 520, 380, 300, 250, 230, 200, 180, 100, 90, 60],  # water
    [250, 250, 450, 250, 700, 2200, 2700, 2900, 3000, 900, 1400, 650],  # forest
    [400, 450, 800, 500, 1200, 2600, 3200, 3500, 3600, 1100, 2200, 1200],  # crop
    [450, 500, 850, 700, 1300, 2300, 2700, 2900, 3000, 1000, 2500, 1500],  # grass
    [900, 1000, 1300, 1600, 1800, 2000, 2150, 2300, 2400, 800, 3100, 2500],  # bare soil
    [1100, 1100, 1200, 1250, 1400, 1550, 1650, 1750, 1800, 700, 2200, 1900],  # urban
], dtype=np.float32)  # fmt: skip
LAND_SCL = np.array([6, 4, 4, 4, 5, 5], dtype=np.uint8)  # SCL class of each land-cover type
PARCEL_M = 400.0  # mean parcel size
GB = 1024**3


# --- synthetic product -----------------------------------------------------------------------


def _interp_matrix(coords_m: np.ndarray, cell_m: float, count: int) -> np.ndarray:
    """Linear interpolation weights from control points every ``cell_m`` metres to ``coords_m``."""
    x = np.clip(coords_m / cell_m, 0, count - 1.000001)
    i = np.floor(x).astype(np.int64)
    f = (x - i).astype(np.float32)
    w = np.zeros((len(coords_m), count), np.float32)
    w[np.arange(len(x)), i] = 1 - f
    w[np.arange(len(x)), i + 1] = f
    return w


class Landscape:
    """A deterministic synthetic landscape over ``extent_m`` metres, sampled at any resolution."""

    def __init__(self, extent_m: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.extent_m = extent_m
        self.fields = {}
        for name, cell in (("warp_y", 1280.0), ("warp_x", 1280.0), ("gradient", 5000.0),
                           ("texture", 120.0), ("cloud", 3000.0)):  # fmt: skip
            count = math.ceil(extent_m / cell) + 2
            self.fields[name] = (cell, rng.normal(0, 1, (count, count)).astype(np.float32))
        parcels = math.ceil(extent_m / PARCEL_M) + 4
        self.land = rng.choice(len(SPECTRA), (parcels, parcels), p=[0.05, 0.3, 0.3, 0.15, 0.1, 0.1])
        self.brightness = rng.uniform(0.8, 1.2, (parcels, parcels)).astype(np.float32)

    def _field(self, name: str, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        cell, ctrl = self.fields[name]
        wy = _interp_matrix(ys, cell, ctrl.shape[0])
        wx = _interp_matrix(xs, cell, ctrl.shape[1])
        return (wy @ ctrl) @ wx.T

    def sample(self, res: float, rows: slice, n_cols: int):
        """(land type, parcel brightness, smooth gradient, cloud field) for ``rows`` at ``res``."""
        ys = (np.arange(rows.start, rows.stop) + 0.5) * res
        xs = (np.arange(n_cols) + 0.5) * res
        py = ((ys[:, None] + 150 * self._field("warp_y", ys, xs)) / PARCEL_M).astype(np.int64) + 2
        px = ((xs[None, :] + 150 * self._field("warp_x", ys, xs)) / PARCEL_M).astype(np.int64) + 2
        np.clip(py, 0, self.land.shape[0] - 1, out=py)
        np.clip(px, 0, self.land.shape[1] - 1, out=px)
        land = self.land[py, px]
        shade = self.brightness[py, px] + 0.08 * self._field("gradient", ys, xs) + 0.04 * self._field("texture", ys, xs)
        return land, shade, self._field("cloud", ys, xs)


def band_shape(res: float, size: int) -> tuple[int, int]:
    n = math.ceil(size * 10 / res)
    return (n, n)


def band_pixels(band: str, size: int, seed: int) -> np.ndarray:
    """The synthetic pixels of ``band`` (or SCL) at its native resolution, for a ``size``-pixel 10 m tile."""
    res = NATIVE[band]
    n = band_shape(res, size)[0]
    scape = Landscape(size * 10.0, seed)
    dtype = np.uint8 if band == "SCL" else np.uint16
    data = np.empty((n, n), dtype)
    step = 1024
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        land, shade, cloud = scape.sample(res, rows, n)
        if band == "SCL":
            scl = LAND_SCL[land]
            scl[cloud > 1.2] = 8  # cloud medium probability
            scl[cloud > 1.6] = 9  # cloud high probability
            scl[(cloud > 0.9) & (cloud <= 1.2)] = 10  # thin cirrus
            data[rows] = scl
        else:
            rng = np.random.default_rng([seed, BANDS.index(band), r0])
            value = SPECTRA[land, BANDS.index(band)] * shade
            value += 1000 * np.clip(cloud - 1.2, 0, None)  # clouds are bright in every band
            value += rng.normal(0, 25, value.shape).astype(np.float32)
            data[rows] = np.clip(value + 1000, 1001, 65535).astype(np.uint16)  # baseline 04.00: DN + 1000
    return data


def _write_band(args: tuple[str, Path, int, int]) -> str:
    band, path, size, seed = args
    res = NATIVE[band]
    data = band_pixels(band, size, seed)
    n = data.shape[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "JP2OpenJPEG", "width": n, "height": n, "count": 1, "dtype": data.dtype.name,
               "crs": CRS, "transform": from_origin(*ORIGIN, res, res)}  # fmt: skip
    tmp = path.with_name(path.name + ".partial.jp2")
    with rasterio.Env(GDAL_NUM_THREADS="1"), rasterio.open(tmp, "w", **profile, **JP2_OPTIONS) as dst:
        dst.write(data, 1)
    os.replace(tmp, path)
    return band


def make_product(workdir: Path, size: int, jobs: int = 2) -> Path:
    """The synthetic L2A SAFE folder for ``size`` (built once; reused when complete)."""
    name = product_name("L2A", SENSING, "04.00", TILE)
    root = workdir / f"s2-{size}-v{GENERATOR_VERSION}"
    safe = root / f"{name}.SAFE"
    if (root / "complete").exists():
        return safe
    if root.exists():
        shutil.rmtree(root)
    granule = f"L2A_{TILE}_A039000_{SENSING}"
    img = safe / "GRANULE" / granule / "IMG_DATA"
    todo, written = [], []
    for band in (*BANDS, "SCL"):
        res = NATIVE[band]
        rel = f"GRANULE/{granule}/IMG_DATA/R{res}m/{TILE}_{SENSING}_{band}_{res}m"
        todo.append((band, img / f"R{res}m" / f"{TILE}_{SENSING}_{band}_{res}m.jp2", size, 7))
        written.append(rel)
    todo.sort(key=lambda t: NATIVE[t[0]])  # biggest first
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_write_band, todo))
    iso = f"{SENSING[:4]}-{SENSING[4:6]}-{SENSING[6:11]}:{SENSING[11:13]}:{SENSING[13:]}.024Z"
    (safe / "MTD_MSIL2A.xml").write_text(
        mtd_xml("L2A", f"{name}.SAFE", iso, "04.00", -1000.0, written), encoding="utf-8"
    )
    (safe / "manifest.safe").write_text("<xfdu:XFDU/>\n")
    (root / "complete").write_text(json.dumps({"size": size, "generator": GENERATOR_VERSION}) + "\n")
    return safe


def make_clc(workdir: Path, size: int, per_side: int | None = None, seed: int = 0) -> Path:
    """A CORINE-like vector (EPSG:3035, CODE_18): jittered polygons sharing their borders."""
    import geopandas as gpd
    from pyproj import Transformer
    from shapely.geometry import Polygon

    from landcover.nomenclature import corine_classes

    path = workdir / f"clc-{size}-v{GENERATOR_VERSION}.gpkg"
    if path.exists():
        return path
    n = per_side or max(2, round(size / 180))  # about 1.8 km polygons: ~3700 over a full tile
    rng = np.random.default_rng(seed)
    extent = size * 10.0
    step = (extent + 2000) / n  # overhang of 1 km on every side
    x0, y0 = ORIGIN[0] - 1000, ORIGIN[1] + 1000
    k = 12  # intermediate points per edge
    vx = x0 + np.arange(n + 1)[None, :] * step + rng.uniform(-0.25, 0.25, (n + 1, n + 1)) * step
    vy = y0 - np.arange(n + 1)[:, None] * step + rng.uniform(-0.25, 0.25, (n + 1, n + 1)) * step
    vx[:, 0], vx[:, -1], vy[0], vy[-1] = x0, x0 + n * step, y0, y0 - n * step
    t = np.linspace(0, 1, k + 2)[1:-1]

    def edge(a: tuple[int, int], b: tuple[int, int], wiggle: np.ndarray) -> list[tuple[float, float]]:
        (ax, ay), (bx, by) = (vx[a], vy[a]), (vx[b], vy[b])
        nx, ny = -(by - ay), bx - ax
        xs = ax + t * (bx - ax) + wiggle * nx
        ys = ay + t * (by - ay) + wiggle * ny
        return [(ax, ay), *zip(xs, ys, strict=True)]

    horizontal = rng.uniform(-0.06, 0.06, (n + 1, n, k))
    vertical = rng.uniform(-0.06, 0.06, (n, n + 1, k))
    for arr in (horizontal[0], horizontal[-1], vertical[:, 0], vertical[:, -1]):
        arr[...] = 0
    to_laea = Transformer.from_crs(CRS, "EPSG:3035", always_xy=True)
    codes = [c.code for c in corine_classes()]
    polys, values = [], []
    for i in range(n):
        for j in range(n):
            ring = (edge((i, j), (i, j + 1), horizontal[i, j])
                    + edge((i, j + 1), (i + 1, j + 1), vertical[i, j + 1])
                    + edge((i + 1, j + 1), (i + 1, j), -horizontal[i + 1, j][::-1])
                    + edge((i + 1, j), (i, j), -vertical[i, j][::-1]))  # fmt: skip
            xs, ys = to_laea.transform(*zip(*ring, strict=True))
            polys.append(Polygon(zip(xs, ys, strict=True)))
            values.append(str(rng.choice(codes)))
    frame = gpd.GeoDataFrame({"CODE_18": values}, geometry=polys, crs="EPSG:3035")
    tmp = path.with_name(path.stem + ".partial.gpkg")
    frame.to_file(tmp)
    os.replace(tmp, path)
    return path


def band_files(safe: Path) -> list[Path]:
    """The JP2 files ingest decodes: 12 spectral bands and SCL."""
    return sorted((safe / "GRANULE").glob("*/IMG_DATA/R*m/*.jp2"))


# --- measurements ----------------------------------------------------------------------------


def _decode(path: Path) -> int:
    with rasterio.open(path) as src:
        return int(src.read(1).size)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_floor(files: list[Path], threads: str, workers: int) -> dict[str, float]:
    """Decode every file fully (``workers`` files at once, GDAL_NUM_THREADS=threads): seconds, CPU s."""
    with rasterio.Env(GDAL_NUM_THREADS=threads, GDAL_CACHEMAX=512):
        cpu, start = _cpu_seconds(), time.perf_counter()
        if workers == 1:
            pixels = sum(_decode(f) for f in files)
        else:
            biggest_first = sorted(files, key=lambda f: -f.stat().st_size)
            with ThreadPoolExecutor(workers) as pool:
                pixels = sum(pool.map(_decode, biggest_first))
        return {"s": time.perf_counter() - start, "cpu_s": _cpu_seconds() - cpu, "megapixels": pixels / 1e6}


CHILD = """
import cProfile, json, pstats, sys, time
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
import landcover.dataset.scene as scene_module
product, labels, out, profile, config, image_profile = sys.argv[1:7]
cfg = IngestConfig.model_validate(json.loads(config))
if json.loads(image_profile):  # a proposed change of ingest's GeoTIFF options, measured here
    make_profile = scene_module._image_profile
    scene_module._image_profile = lambda *a: {**make_profile(*a), **json.loads(image_profile)}
start = time.perf_counter()
if profile != "-":
    prof = cProfile.Profile()
    prof.enable()
ds = ingest([product], out, labels=labels, config=cfg)
seconds = time.perf_counter() - start
if profile != "-":
    prof.disable()
    prof.dump_stats(profile)
    pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
print(json.dumps({"seconds": seconds, "tiles": ds.dataset["scenes"][0]["tiles"]}))
"""


def run_ingest(
    safe: Path,
    labels: Path,
    out: Path,
    profile: Path | None = None,
    config: dict[str, object] | None = None,
    image_profile: dict[str, object] | None = None,
) -> dict[str, float]:
    """Ingest in a child process; its wall time, ingest() time, CPU time and peak RSS (wait4 rusage)."""
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(safe), str(labels), str(out), str(profile or "-"),
         json.dumps(config or {}), json.dumps(image_profile or {})],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"ingest failed (exit {proc.returncode})")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"ingest_s": result["seconds"], "process_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / GB,
            "cpu_s": usage.ru_utime + usage.ru_stime, "tiles": result["tiles"],
            "output_gb": size / GB}  # fmt: skip


@contextlib.contextmanager
def bench_workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if needed and kept), or a temporary folder removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _parse_variant(text: str) -> tuple[dict[str, object], dict[str, object]]:
    """'overviews=false,gtiff.zstd_level=1' -> (IngestConfig overrides, image.tif creation options).

    Values are parsed as JSON when they can be. ``gtiff.KEY`` patches ingest's image.tif profile
    (landcover.dataset.scene._image_profile) in the child process: a way to measure a proposed change.
    """
    config: dict[str, object] = {}
    gtiff: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        key = key.strip()
        if key.startswith("gtiff."):
            gtiff[key.removeprefix("gtiff.")] = value
        else:
            config[key] = value
    return config, gtiff


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10980, help="10 m pixels per side (10980 = full tile)")
    parser.add_argument("--workdir", type=Path, help="cache the product here (default: a temp folder)")
    parser.add_argument("--repeat", type=int, default=1, help="ingest runs (the fastest is reported)")
    parser.add_argument("--skip-sequential", action="store_true", help="skip the 1-thread decode")
    parser.add_argument("--all-floors", action="store_true",
                        help="also decode with GDAL's own tile threads (GDAL_NUM_THREADS=ALL_CPUS)")  # fmt: skip
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also ingest with these IngestConfig settings (e.g. overviews=false) or "
                             "image.tif creation options (gtiff.interleave=band,gtiff.zstd_level=1)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest (main thread; slower)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with bench_workdir(args.workdir, "bench-ingest-") as args.workdir:
        start = time.perf_counter()
        safe = make_product(args.workdir, args.size, jobs=min(cores, 4))
        labels = make_clc(args.workdir, args.size)
        files = band_files(safe)
        mib = sum(f.stat().st_size for f in files) / 2**20
        print(f"product: {safe} ({len(files)} JP2 files, {mib:.0f} MiB; ready in "
              f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        res: dict[str, object] = {"size": args.size, "cores": cores, "cpu": cpu_model(),
                                  "gdal": rasterio.__gdal_version__, "jp2_mib": mib,
                                  "load_before": os.getloadavg()}  # fmt: skip
        decode_floor(files[-1:], "1", 1)  # imports, GDAL drivers
        floors = {}
        if not args.skip_sequential:
            floors["1 thread, band after band"] = decode_floor(files, "1", 1)
        if args.all_floors:
            floors["GDAL_NUM_THREADS=ALL_CPUS, band after band"] = decode_floor(files, "ALL_CPUS", 1)
        floors[f"{cores} bands at once, 1 thread each"] = decode_floor(files, "1", cores)
        for name, f in floors.items():
            print(f"decode {f['megapixels']:.0f} Mpx, {name}: {f['s']:.1f} s (CPU {f['cpu_s']:.1f} s)", flush=True)
        parallel = [f for name, f in floors.items() if not name.startswith("1 thread")]
        floor = min(parallel, key=lambda f: f["s"])
        res["floors"] = floors
        res["decode_floor_s"] = floor["s"]
        res["decode_cpu_s"] = min(f["cpu_s"] for f in floors.values())
        runs: dict[str, dict[str, float]] = {}
        for variant in ["", *args.variant]:
            overrides, gtiff = _parse_variant(variant)
            best = None
            for i in range(args.repeat):
                prof = args.workdir / f"ingest-{args.size}.prof" if args.profile else None
                # the defaults' dataset is kept (bench_tiles.py reads it); variants' are removed
                out = args.workdir / (f"dataset-{args.size}" + ("-variant" if variant else ""))
                marker = args.workdir / f"dataset-{args.size}.defaults"
                if not variant:
                    marker.unlink(missing_ok=True)
                run = run_ingest(safe, labels, out, prof, overrides, gtiff)
                if variant:
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    marker.write_text(json.dumps({"config": "IngestConfig()"}) + "\n")
                print(f"ingest{' ' + variant if variant else ''} run {i + 1}: {run['ingest_s']:.1f} s "
                      f"(process {run['process_s']:.1f} s, CPU {run['cpu_s']:.0f} s), peak RSS "
                      f"{run['peak_rss_gb']:.2f} GB, {run['tiles']} tiles, output {run['output_gb']:.2f} GiB",
                      flush=True)  # fmt: skip
                best = run if best is None or run["ingest_s"] < best["ingest_s"] else best
            assert best is not None
            best["ratio"] = best["ingest_s"] / floor["s"]
            best["cpu_ratio"] = best["cpu_s"] / float(res["decode_cpu_s"])  # type: ignore[arg-type]
            runs[variant or "defaults"] = best
        res["ingest"] = runs
        res["load_after"] = os.getloadavg()
        load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(res["load_before"], res["load_after"], strict=True))  # type: ignore[call-overload]
        print(f"\nmachine: {cores} cores, {res['cpu']}, GDAL {res['gdal']}; load average 1/5/15 min "
              f"before/after: {load}")  # fmt: skip
        print("| measure | wall s | CPU s | wall / floor | peak RSS GB |\n|---|---|---|---|---|")
        for name, f in floors.items():
            fair = " (floor)" if f is floor else ""
            print(f"| JP2 decode, {name}{fair} | {f['s']:.1f} | {f['cpu_s']:.1f} | {f['s'] / floor['s']:.2f} | |")
        for name, run in runs.items():
            print(f"| landcover ingest, {name} | {run['ingest_s']:.1f} | {run['cpu_s']:.1f} | "
                  f"{run['ratio']:.2f} (target <= 1.5) | {run['peak_rss_gb']:.2f} (target < 3) |")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
