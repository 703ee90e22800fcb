"""A Sentinel-2 input as the rest of landcover sees it: band files in ESA order, masks, radiometric metadata.

:func:`landcover.sources.sentinel2.open_product` (SAFE, band folders, GeoTIFFs, BigEarthNet patches) and
:func:`landcover.sources.stac.open_stac` (STAC items) make them; ``Product`` and ``product_grid_band`` are
re-exported by :mod:`landcover.sources.sentinel2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from landcover import nomenclature as tables
from landcover.errors import MissingBandError
from landcover.sources.band_files import BandFile


@dataclass
class Product:
    """A Sentinel-2 input: band files in ESA order, masks, and radiometric metadata."""

    path: str
    product_id: str
    kind: str  # 'safe' | 'folder' | 'multiband' | 'bigearthnet' | 'stac'
    level: str  # 'L1C' | 'L2A' | 'unknown'
    bands: dict[str, BandFile]
    scl: BandFile | None = None
    cloud_mask: BandFile | None = None
    tile: str | None = None
    sensing_time: str | None = None
    processing_baseline: str | None = None
    offsets: dict[str, float] = field(default_factory=dict)
    quantification: float = 10000.0
    metadata_source: str = "none"
    warnings: list[str] = field(default_factory=list)
    radiometry: dict[str, Any] = field(default_factory=dict)  # STAC items: the offset rule applied and why

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(self.bands)

    def select(self, bands: Sequence[str] | None) -> Product:
        """This product with only ``bands``, in that order.

        ``None`` means the level's default bands (13 for L1C, 12 for L2A; every band found when
        the level is unknown). Raises :class:`MissingBandError` naming missing and found bands.
        """
        if bands is None and self.level == "unknown":
            wanted = list(self.bands)
        elif bands is None:
            wanted = list(tables.default_bands(self.level))
        else:
            wanted = list(dict.fromkeys(tables.normalize_band_name(b) for b in bands))
        if missing := [b for b in wanted if b not in self.bands]:
            found = ",".join(self.bands)
            raise MissingBandError(
                f"band(s) {', '.join(missing)} not in {self.path} ({self.level} {self.kind} input "
                f"with bands {found}); pass --bands {found} (or a subset), or use a product that has them"
            )
        offsets = {b: v for b, v in self.offsets.items() if b in wanted}
        bands_ = {b: self.bands[b] for b in wanted}
        return replace(self, bands=bands_, offsets=offsets, warnings=list(self.warnings))


def product_grid_band(product: Product) -> BandFile:
    """The finest-resolution band (the first one on ties): it defines the 10 m output grid."""
    if not product.bands:
        raise MissingBandError(f"{product.path} has no spectral band; point at a Sentinel-2 product")
    return min(product.bands.values(), key=lambda b: b.resolution)
