"""Benchmark: a 3-date composite ingest against 3 single-date ingests of the same products, and the
NaN-aware median candidates on one strip's time stack.

    python scripts/bench_composite.py --width 10980 --height 10980      # a full tile (long)
    python scripts/bench_composite.py --width 10980 --height 2048       # full-width strips, 2 of them

Synthetic products (GeoTIFF, 4 bands at 10 m + an SCL at 20 m with ~30 % clouds) are written into
``--workdir``. Each ingest runs in its own process, which reports its wall time and peak RSS
(``ru_maxrss``); ingests write no overviews and read no labels. Time scales with the rows; peak RSS
depends on the strip (full width x 1024 rows) and the number of dates, not on the height.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DATES = tuple(f"201804{day:02d}T101021" for day in range(5, 31, 3))  # up to 9 dates of April 2018
BANDS = ("B02", "B03", "B04", "B08")

CHILD = """
import json, resource, sys, time
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
inputs, out, composite = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
cfg = IngestConfig(bands=json.loads(sys.argv[4]), overviews=False, split={"min_valid_fraction": 0.0}, composite=composite)
start = time.perf_counter()
ingest(inputs, out, config=cfg)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_product(folder: Path, sensing: str, width: int, height: int, seed: int) -> Path:
    """One dated folder product: the bands at 10 m, an SCL at 20 m (about 30 % cloud classes 8/9)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = {"driver": "GTiff", "crs": "EPSG:32633", "tiled": True, "blockxsize": 512, "blockysize": 512}
    for band in BANDS:
        data = rng.integers(100, 5000, (height, width), dtype=np.uint16)
        profile = {**base, "width": width, "height": height, "count": 1, "dtype": "uint16"}
        with rasterio.open(folder / f"T33UUP_{sensing}_{band}_10m.tif", "w", **profile,
                           transform=from_origin(300000, 5400000, 10, 10)) as dst:  # fmt: skip
            dst.write(data, 1)
    h2, w2 = -(-height // 2), -(-width // 2)
    scl = rng.choice(np.array([4, 5, 6, 8, 9], np.uint8), (h2, w2), p=[0.4, 0.2, 0.1, 0.15, 0.15])
    profile = {**base, "width": w2, "height": h2, "count": 1, "dtype": "uint8"}
    with rasterio.open(folder / f"T33UUP_{sensing}_SCL_20m.tif", "w", **profile,
                       transform=from_origin(300000, 5400000, 20, 20)) as dst:  # fmt: skip
        dst.write(scl, 1)
    return folder


def run_ingest(inputs: list[Path], out: Path, composite: dict | None) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)  # a dataset left by an earlier run would be resumed (skipped)
    args = [
        sys.executable,
        "-c",
        CHILD,
        json.dumps([str(p) for p in inputs]),
        str(out),
        json.dumps(composite),
        json.dumps(BANDS),
    ]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_candidates(width: int, rows: int, repeat: int = 3) -> dict[str, float]:
    """Seconds (best of ``repeat``; one run when over 2 s) of each NaN-aware median over time of a (3, 4, rows, width) float32 stack."""
    import warnings

    import bottleneck as bn
    import xarray as xr

    rng = np.random.default_rng(0)
    data = rng.integers(1, 5000, (3, len(BANDS), rows, width)).astype(np.float32)
    data[np.broadcast_to(rng.random((3, 1, rows, width)) < 0.3, data.shape)] = np.nan
    stack = xr.DataArray(data, dims=("time", "band", "y", "x"))

    def xr_median(bottleneck: bool, numbagg: bool) -> np.ndarray:
        with xr.set_options(use_bottleneck=bottleneck, use_numbagg=numbagg):
            return np.asarray(stack.median("time").data)

    def masked_partition() -> np.ndarray:
        ordered = np.sort(data, axis=0)
        n = np.count_nonzero(~np.isnan(data), axis=0)
        lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None], 0)[0]
        hi = np.take_along_axis(ordered, (n // 2)[None], 0)[0]
        return np.where(n > 0, (lo + hi) / 2, np.nan)

    candidates = {
        "xarray + bottleneck (used)": lambda: xr_median(True, False),
        "bottleneck.nanmedian": lambda: bn.nanmedian(data, axis=0),
        "np.nanmedian": lambda: np.nanmedian(data, axis=0),
        "masked partition (np.sort + take)": masked_partition,
    }
    try:
        import numbagg

        candidates["xarray + numbagg"] = lambda: xr_median(False, True)
        candidates["numbagg.nanmedian"] = lambda: numbagg.nanmedian(data, axis=0)
    except ImportError:
        pass
    reference = None
    times = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, fn in candidates.items():
            result = fn()  # warm up (numba compiles)
            if reference is None:
                reference = result
            assert np.array_equal(np.asarray(result, np.float32), reference, equal_nan=True), name
            first = _timed(fn)
            times[name] = first if first > 2 else min([first, *(_timed(fn) for _ in range(repeat - 1))])
    return times


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=10980)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each ingest (interleaved); the fastest counts")
    parser.add_argument("--more-dates", type=int, default=6, help="dates of a second composite (peak RSS per date)")
    parser.add_argument("--median-rows", type=int, default=256, help="rows of the median candidates' strip (0: skip)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_composite_"))
    count = max(3, args.more_dates)
    products = [write_product(work / f"p{i}", d, args.width, args.height, i) for i, d in enumerate(DATES[:count])]
    recipe = {"periods": ["2018-04-01/2018-04-30"]}
    singles: list[list[dict[str, float]]] = [[], [], []]
    composites: list[dict[str, float]] = []
    for r in range(args.repeat):  # interleaved, so a busy moment of the machine hits both kinds
        for i, p in enumerate(products[:3]):
            singles[i].append(run_ingest([p], work / f"single{i}_{r}", None))
        composites.append(run_ingest(products[:3], work / f"composite_{r}", recipe))
    more = run_ingest(products[: args.more_dates], work / "composite_more", recipe) if args.more_dates > 3 else None
    best = [min(runs, key=lambda s: s["seconds"]) for runs in singles]
    composite = min(composites, key=lambda s: s["seconds"])
    total = sum(s["seconds"] for s in best)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.width} x {args.height} px, {len(BANDS)} bands; fastest of {args.repeat} runs")  # fmt: skip
    for i, s in enumerate(best):
        print(f"single-date ingest {i + 1}: {s['seconds']:.1f} s, peak RSS {s['peak_rss_gb']:.2f} GB")
    print(f"sum of single-date ingests: {total:.1f} s")
    print(f"3-date composite ingest: {composite['seconds']:.1f} s, peak RSS {composite['peak_rss_gb']:.2f} GB")
    print(f"time ratio composite / sum of singles: {composite['seconds'] / total:.2f} (target <= 1.3)")
    if more is not None:
        per_date = (more["peak_rss_gb"] - composite["peak_rss_gb"]) / (args.more_dates - 3)
        print(f"{args.more_dates}-date composite ingest: {more['seconds']:.1f} s, peak RSS {more['peak_rss_gb']:.2f} GB "
              f"({per_date * 1024:.0f} MB more per date)")  # fmt: skip
    if not args.median_rows:
        return
    print(f"median over time of a (3, {len(BANDS)}, {args.median_rows}, {args.width}) float32 stack (best of 3 runs):")
    for name, seconds in median_candidates(args.width, args.median_rows).items():
        print(f"  {name:36s} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
