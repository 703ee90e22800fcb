"""Does a map show the window grid it was predicted on? The class-change rate across window edges vs elsewhere.

A map predicted window by window can draw the window lattice: classes that change along the lines where
windows start and end (a model trained on small tiles deciding each window on its own). :func:`seam_check`
compares the share of neighbouring pixel pairs with different classes among the pairs that straddle a
window edge (vertical and horizontal lines at ``k * stride - margin`` and ``k * stride - margin + tile``)
with the share among all other pairs. A ratio near 1 means no structure at the window grid. Read strip
by strip (bounded memory); pairs with a no-data pixel are not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from landcover.io.grid import GDAL_ENV
from landcover.nomenclature import IGNORE


@dataclass(frozen=True)
class SeamCheck:
    """Class-change rates of neighbouring pixel pairs on the window-edge lines and elsewhere."""

    tile: int
    overlap: int
    pairs_on_edges: int
    pairs_elsewhere: int
    change_rate_on_edges: float
    change_rate_elsewhere: float

    @property
    def ratio(self) -> float:
        return self.change_rate_on_edges / self.change_rate_elsewhere if self.change_rate_elsewhere else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def edge_lines(n: int, tile: int, overlap: int) -> np.ndarray:
    """(n - 1,) bool: whether the pair (i, i + 1) of an axis of n pixels straddles a window edge of the plan
    ``landcover predict`` uses (windows of ``tile`` every ``tile - overlap`` px, starting at ``-overlap``)."""
    stride = tile - overlap
    starts = np.arange(-overlap, n + stride, stride)
    lines = np.concatenate([starts, starts + tile])  # a window covers [start, start + tile)
    on = np.zeros(max(n - 1, 0), bool)
    inside = lines[(lines >= 1) & (lines <= n - 1)]
    on[inside - 1] = True  # the pair (line - 1, line)
    return on


def seam_check(path: str | Path, tile: int, overlap: int, strip: int = 1024) -> SeamCheck:
    """:class:`SeamCheck` of the class map ``path`` (band 1, 255 = no data) for windows ``tile``/``overlap``."""
    counts = np.zeros((2, 2), np.int64)  # [on edge?][changed?]
    with rasterio.Env(**GDAL_ENV), rasterio.open(path) as ds:
        col_edges = edge_lines(ds.width, tile, overlap)
        row_edges = edge_lines(ds.height, tile, overlap)
        previous: np.ndarray | None = None
        for r0 in range(0, ds.height, strip):
            rows = ds.read(1, window=Window(0, r0, ds.width, min(strip, ds.height - r0)))
            _count(counts, rows[:, :-1], rows[:, 1:], np.broadcast_to(col_edges, (len(rows), ds.width - 1)))
            block = rows if previous is None else np.concatenate([previous[-1:], rows])
            first = r0 - (0 if previous is None else 1)
            on = row_edges[first : first + len(block) - 1][:, None]
            _count(counts, block[:-1], block[1:], np.broadcast_to(on, (len(block) - 1, ds.width)))
            previous = rows
    on_total, off_total = counts[1].sum(), counts[0].sum()
    return SeamCheck(
        tile,
        overlap,
        int(on_total),
        int(off_total),
        float(counts[1, 1] / on_total) if on_total else float("nan"),
        float(counts[0, 1] / off_total) if off_total else float("nan"),
    )


def _count(counts: np.ndarray, a: np.ndarray, b: np.ndarray, on_edge: np.ndarray) -> None:
    ok = (a != IGNORE) & (b != IGNORE)
    changed = a != b
    for edge in (0, 1):
        sel = ok & (on_edge == bool(edge))
        counts[edge, 1] += int((sel & changed).sum())
        counts[edge, 0] += int((sel & ~changed).sum())


__all__ = ["SeamCheck", "edge_lines", "seam_check"]
