"""Statistics over the tiles of a catalog: pooled band mean/std of the train tiles, class pixel totals.

:func:`band_statistics` gives the normalisation of ``dataset.json`` (called by
:func:`landcover.dataset.catalog.finalize` and by training for the official split);
:func:`class_pixel_totals` the summed class pixel counts of a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from landcover.errors import DatasetError


def band_statistics(table: pa.Table, bands: Sequence[str], split_column: str = "split") -> dict[str, Any]:
    """Pooled per-band mean/std over the train tiles of a catalog table.

    ``split_column="split"``: the spatial split's train tiles outside the buffer; another column
    (``official_split``): all its train tiles (the buffer belongs to the spatial split only).
    """
    if split_column == "split":
        train = table.filter(pc.and_(pc.equal(table["split"], "train"), pc.invert(table["buffer"])))
        source, what = "train tiles (buffer excluded)", "train tile"
    else:
        train = table.filter(pc.equal(table[split_column], "train"))
        source, what = f"{split_column} train tiles", f"{split_column} train tile"
    sums, sumsqs = train["band_sum"].to_pylist(), train["band_sumsq"].to_pylist()
    count = sum(train["band_count"].to_pylist())
    for row in sums:
        if len(row) != len(bands):
            raise DatasetError(
                f"catalog tiles hold {len(row)} band sums but {len(bands)} bands "
                f"({', '.join(bands)}) were named; re-run `landcover ingest --overwrite`"
            )
    if count == 0:  # e.g. a prediction-only scene; training on this dataset will refuse
        return {
            "bands": list(bands),
            "mean": None,
            "std": None,
            "count": 0,
            "from": f"none of the {table.num_rows} tiles is a {what} with cloud-free pixels; "
            "ingest more scenes, or change the split seed, block_size_m or fractions",
        }
    mean, std = [], []
    for b in range(len(bands)):
        m = math.fsum(row[b] for row in sums) / count
        var = math.fsum(row[b] for row in sumsqs) / count - m * m
        mean.append(m)
        std.append(math.sqrt(max(var, 0.0)))
    return {"bands": list(bands), "mean": mean, "std": std, "count": int(count), "from": source}


def class_pixel_totals(
    catalog: gpd.GeoDataFrame, split: str | None = "train", num_classes: int | None = None
) -> np.ndarray:
    """Summed ``class_counts`` (int64) of the non-buffer tiles of ``split`` (None: all splits)."""
    rows = catalog[~catalog["buffer"].to_numpy(dtype=bool)]
    if split is not None:
        rows = rows[rows["split"] == split]
    counts = [np.asarray(c, dtype=np.int64) for c in rows["class_counts"]]
    if not counts:
        return np.zeros(num_classes or 0, dtype=np.int64)
    return np.asarray(np.sum(counts, axis=0, dtype=np.int64))
