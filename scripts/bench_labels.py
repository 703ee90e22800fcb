"""Benchmark `landcover labels` on a full Sentinel-2 tile grid (10980 x 10980 at 10 m).

Builds a synthetic CLC-like vector (EPSG:3035, N x N random-code polygons) and a CLC-like index
raster (EPSG:3035, 100 m) over a 10 m UTM grid, then burns/warps each onto the grid and reports
wall time and peak RSS of this process. Usage:

    .venv/bin/python scripts/bench_labels.py [--size 10980] [--polygons 60]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin
from shapely.geometry import Polygon

from landcover.nomenclature import corine_classes
from landcover.sources.labels import labels_like


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--polygons", type=int, default=60, help="polygons per side")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    codes = [c.code for c in corine_classes()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x0, y0, n = 300_000.0, 5_400_000.0, args.size
        ref = tmp / "ref.tif"
        with rasterio.open(
            ref,
            "w",
            driver="GTiff",
            width=n,
            height=n,
            count=1,
            dtype="uint8",
            crs="EPSG:32633",
            transform=from_origin(x0, y0, 10, 10),
            tiled=True,
            compress="deflate",
            sparse_ok=True,
        ):
            pass
        to_laea = Transformer.from_crs("EPSG:32633", "EPSG:3035", always_xy=True)
        step = n * 10 / args.polygons
        polys, values = [], []
        for i in range(args.polygons):
            for j in range(args.polygons):
                xs = [x0 + i * step, x0 + (i + 1) * step, x0 + (i + 1) * step, x0 + i * step]
                ys = [y0 - j * step, y0 - j * step, y0 - (j + 1) * step, y0 - (j + 1) * step]
                polys.append(Polygon(zip(*to_laea.transform(xs, ys), strict=True)))
                values.append(str(rng.choice(codes)))
        vector = tmp / "clc.gpkg"
        gpd.GeoDataFrame({"CODE_18": values}, geometry=polys, crs="EPSG:3035").to_file(vector)
        left, bottom = to_laea.transform(x0, y0 - n * 10)
        raster = tmp / "clc.tif"
        size = int(n * 10 / 100) + 200
        with rasterio.open(
            raster,
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=1,
            dtype="uint8",
            crs="EPSG:3035",
            transform=from_origin(left - 10_000, bottom + size * 100 - 10_000, 100, 100),
            tiled=True,
            compress="deflate",
        ) as dst:
            dst.write(rng.integers(1, 45, (1, size, size), dtype=np.uint8))
        print(f"grid {n} x {n} at 10 m; {len(polys)} polygons; raster {size} x {size} at 100 m")
        base = peak_rss_mb()
        for name, source in (("vector", vector), ("raster", raster)):
            start = time.perf_counter()
            summary = labels_like(source, ref, tmp / f"out_{name}.tif")
            print(
                f"{name}: {time.perf_counter() - start:.1f} s, {summary.labelled_fraction:.1%} labelled, "
                f"peak RSS {peak_rss_mb():.0f} MB (before: {base:.0f} MB)"
            )


if __name__ == "__main__":
    main()
