"""Sliding windows over whole scenes, for ``predict`` and ``explain``: window geometry, the readers
that feed rows of windows (an ingested stack, or a Sentinel-2 product through the ingest reader), and
the writers (block rows of temporary GeoTIFFs, then Cloud-Optimized GeoTIFFs and quick looks).

See :mod:`landcover.inference.predict` for how the windows are blended and streamed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from landcover.errors import ConfigError

if TYPE_CHECKING:
    pass


# --- window geometry ------------------------------------------------------------------------------


class Plan(NamedTuple):
    """Windows over the reflect-padded scene: window (i, j) starts at (i, j) * stride - margin."""

    height: int
    width: int
    tile: int
    overlap: int
    margin: int
    stride: int
    rows: int
    cols: int
    padded_width: int


def make_plan(height: int, width: int, tile: int, overlap: int) -> Plan:
    """``margin = overlap``: every scene pixel lies in the flat part of a window or in two ramps."""
    if not 0 <= overlap <= tile // 2:
        raise ConfigError(f"--overlap {overlap} must be between 0 and half the tile ({tile // 2} px)")
    s = tile - overlap
    rows, cols = (max(1, math.ceil((n + overlap) / s)) for n in (height, width))
    return Plan(height, width, tile, overlap, overlap, s, rows, cols, (cols - 1) * s + tile)


def blend_weights(tile: int, overlap: int, hard: bool = False) -> np.ndarray:
    """(tile, tile) weights: 1 inside, cosine ramps over ``overlap`` px at each edge.

    The ramps of two windows ``tile - overlap`` apart add up to exactly 1 (0.5 - c + 0.5 + c). ``hard``:
    each pixel of an overlap is taken from the window where it lies deeper (weights 1 or 0, an even
    ``overlap``): a per-pixel model with ``overlap / 2`` px of context is then exact.
    """
    w = np.ones(tile, np.float64)
    if hard and overlap:
        w[: overlap // 2], w[tile - overlap // 2 :] = 0.0, 0.0
    elif overlap:
        ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap))
        w[:overlap], w[tile - overlap :] = ramp, ramp[::-1]
    return np.outer(w, w).astype(np.float32)


# --- inputs ----------------------------------------------------------------------------------------


# --- outputs ---------------------------------------------------------------------------------------
