"""Predict from raw products with a multi-date model: the composite its training data was made of, built again.

A checkpoint trained on a composite dataset records the recipe (``landcover.dataset_settings.composite``: its
periods, their methods, the grouping) and its bands are period-qualified (``B04@spring``). ``predict`` given the
raw products (SAFE, folders, STAC items) builds the identical composite with ingest's
:class:`~landcover.sources.composite.CompositeReader`, strip by strip, on the grid of the first product by date,
so the map equals a prediction on the ingested composite stack. Inputs that cannot satisfy a period are refused,
naming it; inputs of several tiles (with ``group: tile``) are several maps (:func:`composite_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from landcover.dataset.composite_scene import composite_groups, composite_scene_id
from landcover.errors import ConfigError, InputFormatError, MissingBandError
from landcover.inference.model_info import ModelInfo
from landcover.io.aoi import AOI
from landcover.sources.clouds import CloudConfig, bands_to_read
from landcover.sources.composite import CompositeReader
from landcover.sources.product import Product
from landcover.sources.recipe import CompositeRecipe, split_band


def recipe_of(lm: ModelInfo) -> CompositeRecipe:
    """The model's compositing recipe (a ConfigError for a single-date model)."""
    if lm.composite is None:
        raise ConfigError("this model was trained on single dates: predict one product (or stack) per map")
    return CompositeRecipe.model_validate(lm.composite)


def source_bands(lm: ModelInfo) -> list[str]:
    """The single-date bands a composite model's period bands are made of, in order (B04@spring -> B04)."""
    return list(dict.fromkeys(split_band(b)[0] for b in lm.bands))


def cloud_settings(lm: ModelInfo) -> CloudConfig | None:
    """The cloud settings the model's dataset was ingested with (the detector, its threshold, dilation)."""
    return CloudConfig.model_validate(lm.reader["clouds"]) if lm.reader.get("clouds") else None


def open_products(paths: Sequence[str | Path], lm: ModelInfo, sign: Callable[[str], str] | None) -> list[Product]:
    """The products at ``paths`` with the bands the model's composite needs (and the cloud detector's)."""
    from landcover.sources.sentinel2 import open_product

    bands, products, clouds = source_bands(lm), [], cloud_settings(lm)
    for path in paths:
        product = open_product(path, sign=sign)
        if missing := [b for b in bands if b not in product.bands]:
            raise MissingBandError(
                f"{path} lacks band(s) {','.join(missing)} that the composite model needs (it has "
                f"{','.join(product.bands) or 'none'}); use products with the bands {','.join(bands)}"
            )
        products.append(product.select(bands_to_read(product, bands, clouds)))
    return products


def composite_inputs(
    paths: Sequence[str | Path], lm: ModelInfo, sign: Callable[[str], str] | None = None
) -> list[tuple[str, list[Path]]]:
    """The maps a composite model makes of ``paths``: (name, the inputs of its composite) per group of the recipe
    (one per MGRS tile with ``group: tile``, one of all inputs with ``group: all``)."""
    recipe = recipe_of(lm)
    products = open_products(paths, lm, sign)
    by_id = {id(p): Path(path) for p, path in zip(products, paths, strict=True)}
    return [
        (composite_scene_id(group, recipe), [by_id[id(p)] for p in group])
        for group in composite_groups(products, recipe)
    ]


class CompositeSource:
    """Raw products read as the composite of the model's recipe (the feeder's source interface)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        lm: ModelInfo,
        aoi: AOI | None = None,
        sign: Callable[[str], str] | None = None,
    ):
        recipe = recipe_of(lm)
        products = open_products(paths, lm, sign)
        groups = composite_groups(products, recipe)
        if len(groups) > 1:
            raise InputFormatError(
                f"the {len(paths)} inputs are of {len(groups)} MGRS tiles, and the model's composites are made per "
                "tile (composite.group: tile): predict into a folder (one map per tile) or give one tile's products"
            )
        options = {k: v for k, v in lm.reader.items() if k in ("resampling", "harmonize", "scl_invalid")}
        self.reader = CompositeReader(
            products, source_bands(lm), recipe, resolution=lm.resolution, aoi=aoi, clouds=cloud_settings(lm), **options
        )
        try:
            self.reader.check_best()
            if missing := [b for b in lm.bands if b not in self.reader.bands]:
                raise ConfigError(
                    f"the recipe recorded with the model makes bands {','.join(self.reader.bands)}, not "
                    f"{','.join(missing)}: the checkpoint is inconsistent; retrain it on a composite dataset"
                )
        except BaseException:
            self.reader.close()
            raise
        self.indexes = [self.reader.bands.index(b) for b in lm.bands]
        self.grid, self.window = self.reader.grid, self.reader.window
        self.product_id = composite_scene_id(products, recipe)
        self.baseline: str | None = ",".join(
            sorted({str(p.processing_baseline or "unknown") for p in self.reader.products})
        )
        self.level = str(self.reader.provenance()["level"])
        dates = sorted(p.sensing_time or "" for p in self.reader.products)
        self.sensing_time: str | None = f"{dates[0]}/{dates[-1]}"

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        win = self.reader.read(Window(0, r0, self.grid.width, r1 - r0))
        image = win.image if self.indexes == list(range(len(win.image))) else win.image[self.indexes]
        return image, win.valid, None

    def close(self) -> None:
        self.reader.close()
