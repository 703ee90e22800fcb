"""Composite scenes of an ingest: the inputs grouped (per MGRS tile, or all together), one scene per group.

A composite scene is a scene folder like a single product's (:mod:`landcover.dataset.scene`) whose image.tif
holds the bands of every period (``B04@spring``, period-major), plus ``counts.tif`` (uint8, one band per period:
the valid observations of each pixel). Its id is ``<tile>_<first period start>_<last period end>_composite``;
scene.json records the recipe and the inputs of every period (``provenance.composite``, ``provenance.periods``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import rasterio

from landcover.dataset.scene import Progress, SceneAbout, write_scene
from landcover.dataset.settings import IngestConfig
from landcover.io.grid import GDAL_ENV
from landcover.sources.composite import CompositeReader
from landcover.sources.product import Product
from landcover.sources.recipe import CompositeRecipe, sensing_date


def composite_groups(products: Sequence[Product], recipe: CompositeRecipe) -> list[list[Product]]:
    """The inputs of each composite, by date: one group per MGRS tile (``group: tile``; products without a
    known tile form one group), or one group of every input (``group: all``)."""
    ordered = sorted(products, key=lambda p: (sensing_date(p), p.product_id))
    if recipe.group == "all":
        return [ordered]
    groups: dict[str, list[Product]] = {}
    for product in ordered:
        groups.setdefault(product.tile or "", []).append(product)
    return [groups[tile] for tile in sorted(groups)]


def composite_scene_id(products: Sequence[Product], recipe: CompositeRecipe) -> str:
    """``T<MGRS tile of the first product>_<YYYYMMDD of the first period's start>_<... last period's end>_composite``."""
    first = min(products, key=lambda p: (sensing_date(p), p.product_id))
    start = min(p.start for p in recipe.periods).strftime("%Y%m%d")
    end = max(p.end for p in recipe.periods).strftime("%Y%m%d")
    tile = f"T{first.tile}" if first.tile else re.sub(r"[^A-Za-z0-9_.-]+", "_", first.product_id)
    prefix = "all_" if recipe.group == "all" else ""
    return f"{prefix}{tile}_{start}_{end}_composite"


def ingest_composite_scene(
    products: Sequence[Product],
    labels: Path | None,
    out: Path,
    cfg: IngestConfig,
    bands: Sequence[str],
    progress: Progress | None = None,
) -> Path:
    """Build the composite scene of ``products`` (one group) under ``out/scenes`` and return its folder."""
    assert cfg.composite is not None
    recipe = cfg.composite
    with rasterio.Env(**GDAL_ENV), CompositeReader(products, bands, recipe, **cfg.reader_options()) as reader:
        reader.check_best()
        ids = [p.product_id for p in reader.products]
        about = SceneAbout(
            scene_id=composite_scene_id(products, recipe),
            product=reader.product,
            input=", ".join(Path(p.path).name for p in reader.products),  # no path of the user's machine
            sensing_time=None,
            tags={
                "PRODUCT_ID": ",".join(ids),
                "PROCESSING_LEVEL": str(reader.provenance()["level"]),
                "COMPOSITE": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
                "PERIOD_INPUTS": json.dumps({k: [p.product_id for p in v] for k, v in reader.periods.items()}),
            },
            periods=tuple(recipe.names),
        )
        return write_scene(reader, about, labels, out, cfg, progress)
