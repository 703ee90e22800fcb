"""The streaming core of ``landcover predict``: rows of windows through an engine, blended by a
:class:`~landcover.inference.blend.Strip` that carries only the overlap; finished rows go to the block writers
(see :mod:`landcover.inference.predict` for the geometry). Imports no torch: the torch engine brings its own."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import rasterio

from landcover.inference.blend import NumpyOps, Outputs, Strip, TorchOps
from landcover.inference.engine import Engine
from landcover.inference.feeder import Feeder
from landcover.inference.sliding import Plan, blend_weights
from landcover.inference.writers import BlockWriter
from landcover.io.grid import GDAL_ENV
from landcover.sources.reader import stop_pool


def stream_windows(
    engine: Engine,
    plan: Plan,
    feeder: Feeder,
    writers: dict[str, BlockWriter],
    dtype: str,
    nodata: int,
    progress: Callable[[int], Any],
) -> tuple[int, int, int]:
    """Run the engine row of windows by row, blend, hand finished rows to the writer thread.

    Returns the windows run and skipped, and the number of scene pixels that got a class."""
    ops = TorchOps(engine.device, engine.classes_last) if engine.backend == "torch" else NumpyOps()
    weights = blend_weights(plan.tile, plan.overlap, hard=engine.info.context > 0)
    strip = Strip(ops, engine.info.nomenclature.num_classes, plan, weights, feeder.batch_size)
    strip.wanted = ("probabilities" in writers, "confidence" in writers)
    reader, writer = (ThreadPoolExecutor(1, initializer=_enter_env, initargs=(GDAL_ENV,)) for _ in range(2))
    pending: list[Future[None]] = []
    run = skipped = valid_px = 0
    try:
        ahead = reader.submit(feeder, 0)
        for i in range(plan.rows):
            row = ahead.result()
            if i + 1 < plan.rows:
                ahead = reader.submit(feeder, i + 1)  # read the next row while the model runs
            skipped += row.skipped
            m, s = plan.margin, plan.stride
            lo, hi = max(0, m - i * s), min(s, plan.height - (i * s - m))  # finished rows in the scene
            outputs = _row_outputs(plan, hi - lo, strip, dtype)
            strip.start_row((lo, hi), _sink(outputs, plan))
            for cols, raw in feeder.batches(row):
                probs = engine.probabilities(raw)
                for b, j in enumerate(cols):
                    strip.add(j, probs[b])
                del probs  # before the next batch's probabilities exist (K x tile x tile x batch: 92 MB for 44 classes)
                run += len(cols)
            strip.end_row()
            if hi > lo:
                valid = row.valid[lo:hi, m : m + plan.width]
                valid_px += int(valid.sum())
                pending.append(writer.submit(_write, writers, _mask(outputs, valid, nodata), valid))
                while len(pending) > 2 or (pending and pending[0].done()):
                    pending.pop(0).result()
            progress(i + 1)
        for future in pending:
            future.result()
        for bw in writers.values():
            writer.submit(bw.flush).result()
    finally:
        stop_pool(reader)  # every read and write has ended before the caller closes the files
        stop_pool(writer)
    return run, skipped, valid_px


def _row_outputs(plan: Plan, rows: int, strip: Strip, dtype: str) -> Outputs:
    """Empty output rows of one row of windows (filled column block by column block)."""
    out = {"map": np.zeros((rows, plan.width), dtype)}
    if strip.wanted[0]:
        out["probabilities"] = np.zeros((strip.k, rows, plan.width), np.uint8)
    if strip.wanted[1]:
        out["confidence"] = np.zeros((1, rows, plan.width), np.uint8)
    return out


def _sink(outputs: Outputs, plan: Plan) -> Callable[[int, int, Outputs], None]:
    """Where the strip's finished padded columns a..b go: their scene columns of ``outputs``."""

    def put(a: int, b: int, done: Outputs) -> None:
        x0, x1 = max(a - plan.margin, 0), min(b - plan.margin, plan.width)
        if x1 > x0:
            for name, data in done.items():
                outputs[name][..., x0:x1] = data[..., x0 + plan.margin - a : x1 + plan.margin - a]

    return put


def _mask(outputs: Outputs, valid: np.ndarray, nodata: int) -> Outputs:
    """No data where a pixel gets no class: the map's nodata, 0 in the probability and confidence bands."""
    for name, data in outputs.items():
        data[..., ~valid] = nodata if name == "map" else 0
        if name == "map":
            outputs[name] = data[None]
    return outputs


def _write(writers: dict[str, BlockWriter], outputs: Outputs, valid: np.ndarray) -> None:
    for name, data in outputs.items():
        writers[name].add(data, valid)


def _enter_env(options: dict[str, Any]) -> None:
    """Give a worker thread landcover's GDAL options (rasterio's environment is per thread)."""
    rasterio.Env(**options).__enter__()
