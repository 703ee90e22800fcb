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
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DATES = ("20180410T101021", "20180415T101021", "20180420T101021")
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
    """Seconds (best of ``repeat``) of each NaN-aware median over time of a (3, 4, rows, width) float32 stack."""
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
            best = min(_timed(fn) for _ in range(repeat))
            times[name] = best
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
    parser.add_argument("--median-rows", type=int, default=256, help="rows of the median candidates' strip")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_composite_"))
    products = [write_product(work / f"p{i}", d, args.width, args.height, i) for i, d in enumerate(DATES)]
    singles = [run_ingest([p], work / f"single{i}", None) for i, p in enumerate(products)]
    recipe = {"periods": ["2018-04-01/2018-04-30"]}
    composite = run_ingest(products, work / "composite", recipe)
    total = sum(s["seconds"] for s in singles)
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.width} x {args.height} px, {len(BANDS)} bands, 3 dates")  # fmt: skip
    for i, s in enumerate(singles):
        print(f"single-date ingest {i + 1}: {s['seconds']:.1f} s, peak RSS {s['peak_rss_gb']:.2f} GB")
    print(f"sum of single-date ingests: {total:.1f} s")
    print(f"3-date composite ingest: {composite['seconds']:.1f} s, peak RSS {composite['peak_rss_gb']:.2f} GB")
    print(f"time ratio composite / sum of singles: {composite['seconds'] / total:.2f} (target <= 1.3)")
    print(f"median over time of a (3, {len(BANDS)}, {args.median_rows}, {args.width}) float32 stack:")
    for name, seconds in median_candidates(args.width, args.median_rows).items():
        print(f"  {name:36s} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
