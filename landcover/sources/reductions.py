"""The per-period reductions of a composite, on one strip's time stack.

A strip's observations of one period are an :class:`xarray.DataArray` ``(time, band, y, x)`` float32 with NaN
where an observation is unusable (no data, or cloudy). Each reduction returns ``(band, y, x)`` float32, NaN where
the period has no usable observation, and :func:`to_reflectance` rounds it to the stack's uint16 (0 = no data):

* ``median``: bottleneck's ``nanmedian`` through xarray (``scripts/bench_composite.py`` measured it against
  numbagg, ``np.nanmedian`` and a masked sort; bottleneck was fastest). The mean of the two middle values of an
  even count is exact in float32 (reflectances are integers below 2**24).
* ``quantile``: a masked sort along time and NumPy's ``linear`` interpolation (``np.nanquantile``'s default,
  the same formula in float64), vectorised: ``np.nanquantile`` along an axis with NaNs loops per pixel.
* ``best``: per pixel the usable observation with the lowest cloud probability (the earliest on ties).

Rounding: ``np.rint`` (half to even), clipped to 1..65535 so a reduced value never becomes no data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from landcover.errors import ConfigError
from landcover.sources.recipe import Period


def time_stack(
    images: Sequence[np.ndarray],
    usable: Sequence[np.ndarray],
    times: Sequence[np.datetime64],
    bands: Sequence[str],
    out: np.ndarray | None = None,
) -> xr.DataArray:
    """The observations ``images`` ((C, H, W) uint16 each) as float32 ``(time, band, y, x)``, NaN where not
    ``usable``. ``out`` (float32, that shape) is filled instead of a new array: a buffer reused strip after strip
    saves the page faults of a fresh one (as long as a strip's reading and reducing)."""
    height, width = images[0].shape[1:] if images else (0, 0)
    shape = (len(images), len(bands), height, width)
    data = out if out is not None and out.shape == shape else np.empty(shape, dtype=np.float32)
    for t, (image, ok) in enumerate(zip(images, usable, strict=True)):
        fill_observation(data[t], image, ok)
    return xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"time": list(times), "band": list(bands)})


def fill_observation(out: np.ndarray, image: np.ndarray, usable: np.ndarray) -> None:
    """``out`` (C, H, W) float32 = ``image`` (C, H, W) uint16 where ``usable`` (H, W), else NaN."""
    keep = np.where(usable, np.float32(1), np.float32(np.nan))  # one pass: x * 1 = x, x * NaN = NaN
    for c in range(image.shape[0]):  # per band: a broadcast with a cast would go through numpy's slow buffering
        np.multiply(image[c], keep, out=out[c], casting="unsafe")


def reduce_period(stack: xr.DataArray, period: Period, cloud_probability: xr.DataArray | None = None) -> np.ndarray:
    """One period's ``(band, y, x)`` float32 composite of ``stack`` (NaN where it has no usable observation).

    ``cloud_probability`` ``(time, y, x)`` is needed by method ``best`` only."""
    if period.method == "median":
        return median(stack)
    if period.method == "quantile":
        assert period.quantile is not None  # the recipe checks it
        return quantile(stack.data, period.quantile)
    if cloud_probability is None:
        raise ConfigError(
            f"period {period.label()} uses method 'best' (lowest cloud probability), but its products give no "
            "cloud probability; use method median or quantile, or inputs with a cloud detector's probability"
        )
    return best(stack.data, cloud_probability.data)


def median(stack: xr.DataArray) -> np.ndarray:
    """NaN-aware median over time: bottleneck's nanmedian through xarray (numbagg's was slower, see module doc)."""
    with xr.set_options(use_bottleneck=True, use_numbagg=False):
        result = stack.median("time", skipna=True)
    return np.asarray(result.data, dtype=np.float32)


def quantile(data: np.ndarray, q: float) -> np.ndarray:
    """NaN-aware quantile ``q`` over axis 0, as ``np.nanquantile(data.astype(float64), q, axis=0)`` (method linear)."""
    ordered = np.sort(data, axis=0)  # NaN last
    n = np.count_nonzero(~np.isnan(data), axis=0)
    # NumPy's virtual index for 'linear' (alpha = beta = 1), the same float64 arithmetic
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1
    lower = np.floor(virtual)
    gamma = virtual - lower
    lo = np.clip(lower.astype(np.intp), 0, np.maximum(n - 1, 0))
    hi = np.clip(lo + 1, 0, np.maximum(n - 1, 0))
    a = np.take_along_axis(ordered, lo[None], 0)[0].astype(np.float64)
    b = np.take_along_axis(ordered, hi[None], 0)[0].astype(np.float64)
    diff = b - a
    value = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # NumPy's _lerp
    return np.where(n > 0, value, np.nan).astype(np.float32)


def best(data: np.ndarray, cloud_probability: np.ndarray) -> np.ndarray:
    """Per pixel the usable observation (not NaN) with the lowest cloud probability; NaN where none is usable."""
    usable = ~np.isnan(data).any(axis=1)  # (time, y, x)
    score = np.where(usable, cloud_probability, np.inf)
    pick = np.argmin(score, axis=0)  # the earliest on ties
    chosen = np.take_along_axis(data, pick[None, None], 0)[0]
    return np.where(usable.any(axis=0), chosen, np.nan).astype(np.float32)


def to_reflectance(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Reduced float32 values -> uint16 reflectance: ``rint`` (half to even) clipped to 1..65535; NaN -> 0.
    ``values`` is rounded in place (no temporary of a strip's size)."""
    result = np.empty(values.shape, np.uint16) if out is None else out
    np.rint(values, out=values)
    np.maximum(values, 1, out=values)  # NaN stays NaN
    np.minimum(values, 65535, out=values)
    np.fmax(values, 0, out=values)  # fmax ignores NaN: NaN -> 0, the rest is >= 1
    np.copyto(result, values, casting="unsafe")
    return result
