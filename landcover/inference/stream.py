"""The streaming core of ``landcover predict``: rows of windows through the model, blended into a strip
whose finished rows go to the block writers (see :mod:`landcover.inference.predict` for the geometry)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import rasterio
import torch

from landcover.inference.checkpoint import LoadedModel, probabilities
from landcover.inference.feeder import Feeder
from landcover.inference.sliding import Plan, blend_weights
from landcover.inference.writers import BlockWriter
from landcover.io.grid import GDAL_ENV
from landcover.sources.reader import stop_pool


def stream_windows(
    lm: LoadedModel,
    plan: Plan,
    feeder: Feeder,
    writers: dict[str, BlockWriter],
    dev: torch.device,
    amp: torch.dtype | None,
    dtype: str,
    nodata: int,
    progress: Callable[[int], Any],
) -> tuple[int, int, int]:
    """Run the model row of windows by row, blend into a strip, hand finished rows to the writer.

    Returns the windows run and skipped, and the number of scene pixels that got a class."""
    t, s, m, o, width = plan.tile, plan.stride, plan.margin, plan.overlap, plan.width
    k = lm.nomenclature.num_classes
    weights = torch.from_numpy(blend_weights(t, o, hard=lm.context > 0)).to(dev)
    acc = torch.zeros((k, t, plan.padded_width), device=dev)
    wsum = torch.zeros((t, plan.padded_width), device=dev)
    reader, writer = (ThreadPoolExecutor(1, initializer=_enter_env, initargs=(GDAL_ENV,)) for _ in range(2))
    pending: list[Future[None]] = []
    run = skipped = valid_px = 0
    try:
        ahead = reader.submit(feeder, 0)
        with torch.inference_mode():
            for i in range(plan.rows):
                row = ahead.result()
                if i + 1 < plan.rows:
                    ahead = reader.submit(feeder, i + 1)  # read the next row while the model runs
                skipped += row.skipped
                for cols, x in row.batches:
                    probs = probabilities(lm, feeder.to_device(x, dev), amp)
                    if probs.ndim == 2:  # classification: one probability vector per tile
                        probs = probs[:, :, None, None].expand(-1, -1, t, t)
                    for b, j in enumerate(cols):
                        acc[:, :, j * s : j * s + t].addcmul_(probs[b], weights)
                        wsum[:, j * s : j * s + t].add_(weights)
                    run += len(cols)
                lo, hi = max(0, m - i * s), min(s, plan.height - (i * s - m))  # finished rows in the strip
                if hi > lo:
                    valid_px += int(row.valid[lo:hi, m : m + width].sum())
                    outputs = _finish(
                        acc[:, lo:hi, m : m + width],
                        wsum[lo:hi, m : m + width],
                        row.valid[lo:hi, m : m + width],
                        dtype,
                        nodata,
                        "probabilities" in writers,
                        "confidence" in writers,
                    )
                    pending.append(writer.submit(_write, writers, outputs))
                    while len(pending) > 2 or (pending and pending[0].done()):
                        pending.pop(0).result()
                if o:  # move the strip down by one stride
                    acc[:, :o].copy_(acc[:, s:])
                    wsum[:o].copy_(wsum[s:])
                acc[:, o:].zero_()
                wsum[o:].zero_()
                progress(i + 1)
        for future in pending:
            future.result()
        for bw in writers.values():
            writer.submit(bw.flush).result()
    finally:
        stop_pool(reader)  # every read and write has ended before the caller closes the files
        stop_pool(writer)
    return run, skipped, valid_px


def _finish(
    acc: torch.Tensor,
    wsum: torch.Tensor,
    valid: np.ndarray,
    dtype: str,
    nodata: int,
    probabilities: bool,
    confidence: bool,
    chunk: int = 1024,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Finished rows -> class ids (nodata outside ``valid``), optional probabilities and confidence x 255."""
    parts: dict[str, list[np.ndarray]] = {"map": [], "probabilities": [], "confidence": []}
    for c in range(0, acc.shape[2], chunk):  # column chunks keep the temporaries small
        p = acc[:, :, c : c + chunk] / wsum[:, c : c + chunk].clamp_min(1e-12)
        best, ids = p.max(dim=0)
        parts["map"].append(ids.cpu().numpy().astype(dtype)[None])
        if probabilities:
            parts["probabilities"].append(p.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy())
        if confidence:
            parts["confidence"].append(best.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()[None])
    result = {}
    for name, arrays in parts.items():
        if arrays:
            data = np.concatenate(arrays, axis=2)
            data[:, ~valid] = nodata if name == "map" else 0
            result[name] = (data, valid)
    return result


def _write(writers: dict[str, BlockWriter], outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (data, valid) in outputs.items():
        writers[name].add(data, valid)


def _enter_env(options: dict[str, Any]) -> None:
    """Give a worker thread landcover's GDAL options (rasterio's environment is per thread)."""
    rasterio.Env(**options).__enter__()
