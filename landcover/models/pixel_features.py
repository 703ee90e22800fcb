"""Per-pixel features of the gradient-boosting baseline: the bands, spectral indices and local statistics.

What eo-learn's land-cover example and most operational land-cover classifiers feed a pixel classifier:
reflectance, normalised-difference indices, and a little spatial context (means over square neighbourhoods
at a few scales, a local standard deviation). Everything is computed from a window of reflectance and its
valid mask, ignoring no-data pixels (a neighbourhood mean is the mean of its valid pixels), so a feature at
a pixel depends only on the pixels within :attr:`FeatureRecipe.halo` of it: read a window grown by the halo
and the features of its interior equal those of the whole scene. numpy + scipy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import uniform_filter1d

from landcover.models.config import INDICES, FeatureRecipe, index_bands

REFLECTANCE_SCALE = (
    10000.0  # ingested stacks hold reflectance x 10000; bands and indices are summed as integers of this scale
)


def compute_features(
    reflectance: np.ndarray, valid: np.ndarray, bands: Sequence[str], recipe: FeatureRecipe
) -> np.ndarray:
    """(F, H, W) float32 features of a (C, H, W) reflectance window (0..1-ish) with its (H, W) valid mask.

    Invalid pixels get features too (they are not classified); neighbourhoods average valid pixels only.
    Bands and indices are summed as integers (reflectance x 10000, index x 10000 rounded), so a
    neighbourhood's sums are exact wherever the window starts: the features of a pixel do not depend on
    the window it was computed in.
    """
    if reflectance.shape[0] != len(bands):
        raise ValueError(f"{reflectance.shape[0]} bands given for the {len(bands)} names {list(bands)}")
    x = np.rint(reflectance.astype(np.float64) * REFLECTANCE_SCALE)
    x[:, ~valid] = 0.0
    base = [x[i] for i in range(len(bands))]
    for name in recipe.index_names(bands):
        a, b = (x[list(bands).index(n)] for n in index_bands(name))
        with np.errstate(invalid="ignore", divide="ignore"):
            base.append(np.rint(np.where(a + b > 0, (a - b) / (a + b), 0.0) * REFLECTANCE_SCALE) * valid)
    stack = np.stack(base)
    out = [stack]
    v = valid.astype(np.float64)
    for side in recipe.mean_scales:
        out.append(_local_mean(stack, v, side))
    if recipe.std_scale:
        mean = _local_mean(stack, v, recipe.std_scale)
        square = _local_mean(stack * stack, v, recipe.std_scale)
        out.append(np.sqrt(np.maximum(square - mean * mean, 0.0)))
    return (np.concatenate(out) / REFLECTANCE_SCALE).astype(np.float32)


def _local_mean(stack: np.ndarray, valid: np.ndarray, side: int) -> np.ndarray:
    """Mean of the valid pixels of the ``side`` x ``side`` neighbourhood, per layer (0 where none is valid).

    Box sums of integer-valued float64 layers (below 2**53) are exact, hence independent of the window."""
    count, total = _box_sum(valid, side), _box_sum(stack * valid, side)
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def _box_sum(layers: np.ndarray, side: int) -> np.ndarray:
    """Sums over ``side`` x ``side`` neighbourhoods (zero outside) of integer-valued layers, exactly: one
    running-sum pass per axis, each rounded back to the integer it is."""
    rows = np.rint(uniform_filter1d(layers, size=side, axis=-1, mode="constant") * side)
    return np.rint(uniform_filter1d(rows, size=side, axis=-2, mode="constant") * side)


__all__ = ["INDICES", "REFLECTANCE_SCALE", "FeatureRecipe", "compute_features"]
