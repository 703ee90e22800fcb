"""Benchmark the cloud detector (s2cloudless through landcover.sources.clouds): time per Mpx, per full tile, memory.

1. The detector (on 60 m blocks, then on the 10 m pixels) on one full-width ingest strip of a full 10980-px tile:
   ``--rows`` output rows (default 256) plus the halo above and below, 10 bands of real L1C pixels (the ../shared/data clip tiled to the width; seeded
   random reflectances without it). Timed: probability, post-processing, the whole; extrapolated to the
   10980 rows of a tile (the 1024-row strips ingest reads each compute their halo again: x (1024 + 2 halo) / 1024).
2. Reading the real clip with ``SceneReader`` (4 bands) without a detector, with ``clouds.detector=auto`` and with
   ``resolution_m=60`` too: what the detector adds to a read, and how the 60 m mask agrees with the 10 m one.

Peak RSS (ru_maxrss) is reported after each step; the full-width strip step dominates it.

    python scripts/bench_clouds.py [--rows 256] [--blocks 6 1] [--no-read] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from landcover.sources.clouds import DETECTOR_BANDS, CloudConfig, S2CloudlessDetector, bands_to_read
from landcover.sources.reader import SceneReader, strips
from landcover.sources.sentinel2 import open_product

TILE = 10980
STRIP = 1024  # rows of the strips ingest reads (tile_size 256)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def strip_pixels(clip: Path | None, rows: int) -> np.ndarray:
    """(10, rows, 10980) uint16: the clip's detector bands tiled to the width, or seeded random reflectances."""
    if clip is None:
        rng = np.random.default_rng(0)
        return rng.integers(200, 6000, (len(DETECTOR_BANDS), rows, TILE), dtype=np.uint16)
    product = open_product(clip).select(list(DETECTOR_BANDS))
    with SceneReader(product, list(DETECTOR_BANDS), prefetch=False) as reader:
        g = reader.grid
        image = reader.read(Window(0, 0, g.width, g.height)).image
    reps = (1, -(-rows // image.shape[1]), -(-TILE // image.shape[2]))
    return np.ascontiguousarray(np.tile(image, reps)[:, :rows, :TILE])


def bench_strip(clip: Path | None, rows: int, block: int) -> None:
    detector = S2CloudlessDetector(threshold=0.4, resolution=10.0, block=block)
    halo = detector.halo
    pixels = strip_pixels(clip, rows + 2 * halo)
    t0, c0 = time.perf_counter(), time.process_time()
    _, mask = detector.run(pixels)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    mpx = pixels.shape[1] * pixels.shape[2] / 1e6
    tile_s = dt / pixels.shape[1] * TILE * (STRIP + 2 * halo) / STRIP
    print(f"detector on {block * 10} m pixels: strip {pixels.shape[1]} x {TILE} px ({mpx:.2f} Mpx, halo {halo} rows)")
    print(f"  {dt:.1f} s wall, {cpu:.1f} s CPU ({dt / mpx:.3f} s/Mpx of the 10 m grid, CPU {cpu / mpx:.3f}); "
          f"masked {mask.mean():.1%}")  # fmt: skip
    print(f"  whole tile 10980^2 at 10 m: {tile_s / 60:.1f} min (extrapolated); peak RSS so far {rss_mb():.0f} MB")


def bench_read(clip: Path) -> None:
    bands = ["B02", "B03", "B04", "B08"]
    product = open_product(clip)
    masks = {}
    for cfg in (CloudConfig(), CloudConfig(detector="auto"), CloudConfig(detector="auto", resolution_m=60)):
        t0 = time.perf_counter()
        with SceneReader(product.select(bands_to_read(product, bands, cfg)), bands, clouds=cfg) as reader:
            wins = [reader.read(w) for w in strips(reader.grid, 256)]
        dt = time.perf_counter() - t0
        mpx = sum(w.valid.size for w in wins) / 1e6
        cloud = None if wins[0].cloud is None else np.concatenate([w.cloud for w in wins])
        masks[cfg.resolution_m] = cloud
        print(f"read clip {mpx:.2f} Mpx, clouds {cfg.detector} resolution_m={cfg.resolution_m}: {dt:.1f} s "
              f"({dt / mpx:.2f} s/Mpx), masked {0 if cloud is None else cloud.mean():.1%}")  # fmt: skip
    a, b = masks[None], masks[60]
    if a is not None and b is not None:
        print(
            f"  60 m blocks vs 10 m pixels: same class {np.mean(a == b):.1%}, IoU {np.sum(a & b) / np.sum(a | b):.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="output rows of the full-width strip")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--blocks", type=int, nargs="+", default=[6, 1], help="detector pixel sides in 10 m pixels")
    parser.add_argument("--no-read", action="store_true", help="skip the reads of the real clip")
    args = parser.parse_args()
    clip = args.data / "s2-l1c-T33UUU-jp2" / "IMG_DATA"
    clip_or_none = clip if clip.is_dir() else None
    print(f"{os.cpu_count()} CPUs; s2cloudless via landcover.sources.clouds")
    for block in args.blocks:
        bench_strip(clip_or_none, args.rows, block)
    if clip_or_none is not None and not args.no_read:
        bench_read(clip)


if __name__ == "__main__":
    main()
