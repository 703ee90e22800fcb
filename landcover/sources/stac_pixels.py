"""A look at the pixels of a STAC item before its radiometric offset is applied.

Metadata cannot tell every provider's COGs apart: some Earth Search items say
``earthsearch:boa_offset_applied: false`` (and ``raster:bands`` offset -0.1) although the -1000 DN offset was
already subtracted when the COGs were written (Element84/earth-search#66, #71, cirrus-earth-search#33).
Applying it again makes a large share of pixels negative reflectance, which valid surface reflectance never
is: with the offset still to apply, a DN below 1000 *is* negative reflectance, and in real scenes of
baseline 04.00+ such pixels are a fraction of a percent (dark water, shadows); in a harmonised scene most
blue-band pixels of land and water are below 0.1 reflectance (DN 1000).

:func:`check_offset` reads a small sample of the blue (else green or red) band, from the coarsest overview
of at least 256 px or, without overviews, nine 256-px windows (a few COG tiles, never the file), and when
more than :data:`APPLIED_SHARE` of its valid DNs lie below the offset, applies no offset, says so on
stderr and records the check in the product's ``radiometry`` (scene.json, dataset.json). Scenes that are
almost all cloud or snow may escape the check (their blue band is bright either way).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import rasterio
from rasterio.windows import Window

from landcover.io.grid import GDAL_ENV
from landcover.sources.band_files import BandFile
from landcover.sources.product import Product

PROBE_BANDS = ("B02", "B03", "B04")
APPLIED_SHARE = 0.25
"""Share of valid DNs below the offset above which the offset counts as already applied."""
MIN_PIXELS = 1000
SAMPLE = 256


def _sample(band: BandFile) -> np.ndarray:
    """A few tens of thousands of the band's DNs: an overview, or nine windows spread over the band."""
    with rasterio.Env(**GDAL_ENV), rasterio.open(band.path) as ds:
        factors = [f for f in ds.overviews(band.index) if min(ds.width, ds.height) // f >= SAMPLE]
        if factors:
            f = max(factors)
            return ds.read(band.index, out_shape=(ds.height // f, ds.width // f))
        size = min(SAMPLE, ds.width, ds.height)
        cols = np.linspace(0, ds.width - size, 3).astype(int)
        rows = np.linspace(0, ds.height - size, 3).astype(int)
        parts = [ds.read(band.index, window=Window(int(c), int(r), size, size)) for r in rows for c in cols]
        return np.concatenate([p.ravel() for p in parts])


def check_offset(product: Product) -> Product:
    """``product``, with no offset applied if its pixels show the provider applied it already (see module)."""
    probe = next((b for b in PROBE_BANDS if b in product.bands and product.offsets.get(b)), None)
    if probe is None:
        return product
    offset = product.offsets[probe]
    dns = _sample(product.bands[probe])
    valid = dns[dns > 0]
    if valid.size < MIN_PIXELS:
        return product
    share = float(np.count_nonzero(valid < -offset)) / valid.size
    check = {
        "band": probe,
        "pixels": int(valid.size),
        "share_below_offset": round(share, 4),
        "threshold": APPLIED_SHARE,
    }
    record = {**product.radiometry, "pixel_check": check}
    if share <= APPLIED_SHARE:
        return replace(product, radiometry=record)
    record |= {
        "dn_offsets_applied": dict.fromkeys(product.offsets, 0.0),
        "rule": f"pixel check: {share:.0%} of valid {probe} DNs are below {-offset:g}, i.e. negative reflectance "
        "if the offset were applied: the provider had applied it already",
    }
    warning = (
        f"{product.product_id}: the item asks for the offset {offset:g} DN but {share:.0%} of the valid {probe} pixels "
        f"are below {-offset:g} DN (they would be negative reflectance): the COGs already have it applied "
        "(a known Earth Search metadata error), so no offset was applied"
    )
    return replace(product, offsets={}, radiometry=record, warnings=[*product.warnings, warning])
