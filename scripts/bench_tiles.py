"""Benchmark training-tile reads: raw reads, landcover's training loader and torchgeo, side by side.

All draw 256 x 256 windows of all 12 L2A bands at 10 m from one synthetic Sentinel-2 L2A product (the
one ``scripts/bench_ingest.py`` builds, shared through ``--workdir``), in this process, each sample
ending as a float32 torch tensor (12, 256, 256); one run prints them in one table (samples/s):

* **raw reads** (the floor): random windows of ``scenes/*/image.tif`` of the dataset ``landcover
  ingest`` made with the default settings (uint16, ZSTD, 256 x 256 blocks), opened once with rasterio,
  ``read(window=...)`` and ``astype(float32)``; then, for half the time, windows on its 256-px tile
  grid (one GeoTIFF block per window), the way its catalog tiles are read.
* **landcover DataModule**: ``LandcoverDataModule.train_dataloader()``, the batches the trainer gets, with
  the default ``DataConfig`` (batches of 16 whole tiles: normalised image, int64 mask, targets) but
  rare-class sampling with an epoch cap (one long epoch instead of a restart every few batches), once
  with 0 workers and once with ``--workers`` processes; the rate counts from the first batch (worker
  start-up left out). The "vs raw reads" column is its share of the floor.
* **torchgeo** (the peer): ``torchgeo.datasets.Sentinel2(paths=<IMG_DATA>, bands=<12 bands>,
  res=10)``, a RasterDataset over the product's original JP2 files (R10m/R20m/R60m, resampled on
  the fly), sampled with ``torchgeo.samplers.RandomGeoSampler(size=256)``: ``dataset[query]``.

Each side runs for ``--seconds`` (or ``--samples``), starting from freshly opened files. GDAL keeps
decoded blocks in its cache (GDAL_CACHEMAX, by default 5 % of RAM, 1.2 GiB here): torchgeo decodes
1024 x 1024 JPEG 2000 tiles on demand and gets faster as the cache fills ("last half" column);
a decoded full tile (1.3 GiB) about fits that cache, a training set of many tiles never does. At
``--size 4096`` all sides fit in the cache, so all measure warm-cache rates.

Usage::

    .venv/bin/python scripts/bench_tiles.py [--size 10980] [--workdir DIR] [--seconds 60] [--workers 2]

Time on the reference machine (2 cores, idle): about 5 min when ``--workdir`` holds the product and
dataset that ``bench_ingest.py --size 10980`` left there; about 11 min from nothing (2.5 min to make
the product, 4 min to ingest it); ``--size 4096`` about 5 min from nothing.
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


def bench_datamodule(dataset: Path, seconds: float, limit: int, seed: int, workers: int) -> dict[str, float]:
    """landcover's training loader as the trainer gets it: ``LandcoverDataModule.train_dataloader()`` batches
    (images + masks + targets) with the default ``DataConfig`` (batch 16, whole tiles), ``workers`` processes;
    rare-class sampling with an epoch cap of ``limit`` makes one long epoch (uniform sampling would restart
    the loader every pass over the few train tiles of a small product). The rate counts from the first
    batch (which pays for worker start-up) to the last; ``first_s`` is that start-up."""
    import torch

    from landcover.training.config import DataConfig
    from landcover.training.datamodule import LandcoverDataModule

    cfg = DataConfig(dataset=dataset, num_workers=workers, sampling="rare_classes", max_train_tiles_per_epoch=limit)
    dm = LandcoverDataModule(cfg, task="segmentation", seed=seed)
    dm.datasets["train"] = dm._dataset("train")  # the train split only: no validation tiles needed
    start = time.perf_counter()
    times, sizes = [], []
    for batch in dm.train_dataloader():
        image, mask = batch["image"], batch["mask"]
        assert image.dtype == torch.float32 and mask.ndim == 3 and image.shape[1] == len(dm.bands), image.shape
        times.append(time.perf_counter())
        sizes.append(len(image))
        if times[-1] - times[0] >= seconds or sum(sizes) >= limit:
            break
    n, half = sum(sizes[1:]), len(times) // 2
    span = times[-1] - times[0]
    warm = sum(sizes[half + 1 :]) / (times[-1] - times[half]) if times[-1] > times[half] else float("nan")
    return {"samples": n, "seconds": span, "per_s": n / span if span > 0 else float("nan"),
            "first_s": times[0] - start, "warm_per_s": warm, "batch": cfg.batch_size, "workers": workers}  # fmt: skip


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
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second DataModule run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with bench_workdir(args.workdir, "bench-tiles-") as args.workdir:
        safe = make_product(args.workdir, args.size)
        dataset = ingested(args.workdir, args.size)
        decoded_mib = sum(_pixels(f) for f in band_files(safe)) * 2 / 2**20
        load_before = os.getloadavg()
        rows = run_sides(args, safe, dataset)
        load_after = os.getloadavg()
        raw, peer = rows["raw"], rows["torchgeo"]
        res = {"size": args.size, "cpu": cpu_model(), "cores": os.cpu_count(), "tile": TILE, "bands": len(BANDS),
               "decoded_product_mib": decoded_mib, **rows, "ratio": raw["per_s"] / peer["per_s"],
               "warm_ratio": raw["warm_per_s"] / peer["warm_per_s"],
               "datamodule_vs_raw": rows["datamodule_0"]["per_s"] / raw["per_s"],
               "load_before": load_before, "load_after": load_after}  # fmt: skip
        load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, load_after, strict=True))
        print(f"\nmachine: {os.cpu_count()} cores, {res['cpu']}; load average 1/5/15 min before/after: {load}")
        print(f"product {args.size} x {args.size} px at 10 m ({decoded_mib:.0f} MiB decoded; GDAL cache "
              f"{_gdal_cache_mib():.0f} MiB); {TILE} x {TILE} windows, {len(BANDS)} bands, float32 tensors")  # fmt: skip
        print_table(rows, args.workers)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")


def run_sides(args: argparse.Namespace, safe: Path, dataset: Path) -> dict[str, dict[str, float]]:
    """Every reader in turn, each for ``--seconds`` (the tile-aligned reads for half of it)."""
    rows: dict[str, dict[str, float]] = {}
    runs = [
        ("raw", "raw random windows", lambda: bench_landcover(dataset, args.seconds, args.samples, args.seed)),
        ("aligned", "raw windows on the tile grid",
         lambda: bench_landcover(dataset, args.seconds / 2, args.samples, args.seed, aligned=True)),
        ("datamodule_0", "DataModule, 0 workers", lambda: bench_datamodule(dataset, args.seconds, args.samples,
                                                                          args.seed, 0)),
        ("datamodule_n", f"DataModule, {args.workers} workers",
         lambda: bench_datamodule(dataset, args.seconds, args.samples, args.seed, args.workers)),
        ("torchgeo", "torchgeo", lambda: bench_torchgeo(safe, args.seconds, args.samples, args.seed)),
    ]  # fmt: skip
    for key, name, run in runs:
        rows[key] = row = run()
        print(f"{name}: {row['per_s']:.1f} samples/s ({row['samples']} in {row['seconds']:.1f} s; first "
              f"{row['first_s']:.2f} s; last half {row['warm_per_s']:.1f}/s)", flush=True)  # fmt: skip
    return rows


def print_table(rows: dict[str, dict[str, float]], workers: int) -> None:
    raw, peer = rows["raw"]["per_s"], rows["torchgeo"]["per_s"]
    names = {
        "raw": "image.tif, random windows (`read` + float32; the floor)",
        "aligned": "image.tif, windows on its 256-px tile grid (one block each)",
        "datamodule_0": "landcover DataModule train loader, 0 workers (batches of 16: image, mask, label)",
        "datamodule_n": f"landcover DataModule train loader, {workers} workers",
        "torchgeo": "torchgeo `Sentinel2` + `RandomGeoSampler` (JP2), `dataset[query]`",
    }
    print("| reader | samples/s (whole run) | samples/s (last half) | samples | vs raw reads | vs torchgeo |")
    print("|---|---|---|---|---|---|")
    for key, name in names.items():
        r = rows[key]
        print(f"| {name} | {r['per_s']:.1f} | {r['warm_per_s']:.1f} | {r['samples']} | "
              f"{r['per_s'] / raw:.2f} | {r['per_s'] / peer:.1f}x |")  # fmt: skip


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
