"""Benchmark training-tile reads: an ingested landcover dataset versus torchgeo over the JP2 files.

Both sides draw random 256 x 256 windows of all 12 L2A bands at 10 m from one synthetic Sentinel-2
L2A product (the one ``scripts/bench_ingest.py`` builds, shared through ``--workdir``), in this
process, without DataLoader workers, each sample ending as a float32 torch tensor (12, 256, 256):

* **landcover**: ``scenes/*/image.tif`` of the dataset ``landcover ingest`` made with the default
  settings (uint16, ZSTD, 256 x 256 blocks), opened once with rasterio; ``read(window=...)``. It also
  runs for half the time with windows on its 256-px tile grid (one GeoTIFF block per window), the
  way its catalog tiles are read.
* **torchgeo** (the peer): ``torchgeo.datasets.Sentinel2(paths=<IMG_DATA>, bands=<12 bands>,
  res=10)``, a RasterDataset over the product's original JP2 files (R10m/R20m/R60m, resampled on
  the fly), sampled with ``torchgeo.samplers.RandomGeoSampler(size=256)``: ``dataset[query]``.

Each side runs for ``--seconds`` (or ``--samples``), starting from freshly opened files. GDAL keeps
decoded blocks in its cache (GDAL_CACHEMAX, by default 5 % of RAM, 1.2 GiB here): torchgeo decodes
1024 x 1024 JPEG 2000 tiles on demand and gets faster as the cache fills ("last half" column);
a decoded full tile (1.3 GiB) about fits that cache, a training set of many tiles never does. At
``--size 4096`` both sides fit in the cache, so both measure warm-cache rates. The ratio uses the
whole run of each side.

Usage::

    .venv/bin/python scripts/bench_tiles.py [--size 10980] [--workdir DIR] [--seconds 60]

Time on the reference machine (2 cores, idle): about 3 min when ``--workdir`` holds the product and
dataset that ``bench_ingest.py --size 10980`` left there; about 9 min from nothing (2.5 min to make
the product, 4 min to ingest it); ``--size 4096`` about 3 min from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import BANDS, band_files, bench_workdir, cpu_model, make_clc, make_product

TILE = 256


def ingested(workdir: Path, size: int) -> Path:
    """The dataset of the synthetic product (made with the default IngestConfig once; reused)."""
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig

    out = workdir / f"dataset-{size}"
    marker = workdir / f"dataset-{size}.defaults"  # written by bench_ingest.py after its default run
    if (out / "dataset.json").exists() and marker.exists():
        return out
    marker.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    safe = make_product(workdir, size)
    start = time.perf_counter()
    ingest([safe], out, labels=make_clc(workdir, size), config=IngestConfig())
    marker.write_text(json.dumps({"config": "IngestConfig()"}) + "\n")
    print(f"ingested {safe.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def run_for(sample, seconds: float, limit: int) -> dict[str, float]:
    """Call ``sample()`` until ``seconds`` pass or ``limit`` samples; rates overall and in the last half."""
    times = []
    start = time.perf_counter()
    while len(times) < limit and (not times or times[-1] - start < seconds):
        sample()
        times.append(time.perf_counter())
    total = times[-1] - start
    half = len(times) // 2
    warm = (
        (len(times) - half) / (times[-1] - times[half - 1])
        if half >= 1 and times[-1] > times[half - 1]
        else float("nan")
    )
    return {"samples": len(times), "seconds": total, "per_s": len(times) / total,
            "first_s": times[0] - start, "warm_per_s": warm}  # fmt: skip


def bench_landcover(dataset: Path, seconds: float, limit: int, seed: int, aligned: bool = False) -> dict[str, float]:
    """Random windows of ``image.tif``; ``aligned``: on the 256-px tile grid, as the catalog's tiles
    (and landcover's DataModule without random crops) are, so a window is one GeoTIFF block."""
    import torch

    images = sorted(dataset.glob("scenes/*/image.tif"))
    sources = [rasterio.open(p) for p in images]
    rng = np.random.default_rng(seed)

    def sample() -> None:
        src = sources[rng.integers(len(sources))]
        if aligned:
            row = TILE * rng.integers(0, src.height // TILE)
            col = TILE * rng.integers(0, src.width // TILE)
        else:
            row, col = rng.integers(0, src.height - TILE + 1), rng.integers(0, src.width - TILE + 1)
        data = src.read(window=Window(col, row, TILE, TILE))
        tensor = torch.from_numpy(data.astype(np.float32))
        assert tensor.shape == (len(BANDS), TILE, TILE)

    try:
        return run_for(sample, seconds, limit)
    finally:
        for src in sources:
            src.close()


def bench_torchgeo(safe: Path, seconds: float, limit: int, seed: int) -> dict[str, float]:
    import torch
    from torchgeo.datasets import Sentinel2
    from torchgeo.samplers import RandomGeoSampler

    img_data = next(safe.glob("GRANULE/*/IMG_DATA"))
    start = time.perf_counter()
    ds = Sentinel2(paths=img_data, bands=list(BANDS), res=10)
    opened = time.perf_counter() - start
    sampler = RandomGeoSampler(ds, size=TILE, length=limit, generator=torch.Generator().manual_seed(seed))
    queries = iter(sampler)

    def sample() -> None:
        image = ds[next(queries)]["image"]
        assert image.shape == (len(BANDS), TILE, TILE) and image.dtype == torch.float32, image.shape

    result = run_for(sample, seconds, limit)
    result["open_s"] = opened
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10980, help="10 m pixels per side (10980 = full tile)")
    parser.add_argument("--workdir", type=Path, help="product and dataset cache (default: a temp folder)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per side")
    parser.add_argument("--samples", type=int, default=100_000, help="at most this many samples per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "bench-tiles-") as args.workdir:
        safe = make_product(args.workdir, args.size)
        dataset = ingested(args.workdir, args.size)
        decoded_mib = sum(_pixels(f) for f in band_files(safe)) * 2 / 2**20
        load_before = os.getloadavg()
        ours = bench_landcover(dataset, args.seconds, args.samples, args.seed)
        print(f"landcover: {ours['per_s']:.1f} tiles/s ({ours['samples']} in {ours['seconds']:.1f} s)", flush=True)
        grid = bench_landcover(dataset, args.seconds / 2, args.samples, args.seed, aligned=True)
        print(f"landcover, tile-aligned: {grid['per_s']:.1f} tiles/s ({grid['samples']} in {grid['seconds']:.1f} s)",
              flush=True)  # fmt: skip
        peer = bench_torchgeo(safe, args.seconds, args.samples, args.seed)
        print(f"torchgeo: {peer['per_s']:.2f} tiles/s ({peer['samples']} in {peer['seconds']:.1f} s; first "
              f"sample {peer['first_s']:.1f} s; last half {peer['warm_per_s']:.2f}/s)", flush=True)  # fmt: skip
        load_after = os.getloadavg()
        ratio = ours["per_s"] / peer["per_s"]
        res = {"size": args.size, "cpu": cpu_model(), "cores": os.cpu_count(), "tile": TILE,
               "bands": len(BANDS), "decoded_product_mib": decoded_mib, "landcover": ours, "landcover_aligned": grid,
               "torchgeo": peer, "ratio": ratio, "warm_ratio": ours["warm_per_s"] / peer["warm_per_s"],
               "load_before": load_before, "load_after": load_after}  # fmt: skip
        load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, load_after, strict=True))
        print(f"\nmachine: {os.cpu_count()} cores, {res['cpu']}; load average 1/5/15 min before/after: {load}")
        print(f"product {args.size} x {args.size} px at 10 m ({decoded_mib:.0f} MiB decoded; GDAL cache "
              f"{_gdal_cache_mib():.0f} MiB); random {TILE} x {TILE} windows, {len(BANDS)} bands, float32 tensors")  # fmt: skip
        print("| reader | tiles/s (whole run) | tiles/s (last half) | samples | ratio |\n|---|---|---|---|---|")
        print(f"| landcover dataset (image.tif) | {ours['per_s']:.1f} | {ours['warm_per_s']:.1f} | "
              f"{ours['samples']} | {ratio:.0f}x (aim >= 10x) |")  # fmt: skip
        print(f"| landcover dataset, windows on the 256-px tile grid | {grid['per_s']:.1f} | {grid['warm_per_s']:.1f} | "
              f"{grid['samples']} | {grid['per_s'] / peer['per_s']:.0f}x |")  # fmt: skip
        print(f"| torchgeo Sentinel2 + RandomGeoSampler (JP2) | {peer['per_s']:.2f} | {peer['warm_per_s']:.2f} | "
              f"{peer['samples']} | 1 |")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")


def _pixels(path: Path) -> int:
    with rasterio.open(path) as src:
        return src.width * src.height if "SCL" not in path.name else 0


def _gdal_cache_mib() -> float:
    """GDAL's block cache size: GDAL_CACHEMAX (MB or %) or its default, 5 % of physical RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    value = os.environ.get("GDAL_CACHEMAX")
    if value is None:
        return total * 0.05 / 2**20
    return float(value.rstrip("%")) * total / 100 / 2**20 if value.endswith("%") else float(value)


if __name__ == "__main__":
    main()
