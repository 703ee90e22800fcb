"""The pixel check of STAC radiometry: an item that asks for the -1000 DN offset although its COGs already have it
applied (Earth Search items with a wrong ``earthsearch:boa_offset_applied: false``) is not offset twice."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.enums import Resampling

from landcover.sources.sentinel2 import open_product
from landcover.sources.stac_pixels import APPLIED_SHARE
from tests.test_stac_input import FLAG, item_dict, save, stack


def _rewrite_blue(folder, low: int, high: int, overviews: bool) -> None:
    """Blue-band DNs drawn from [low, high) (a harmonised scene: mostly under 1000), optionally with overviews."""
    (path,) = folder.glob("**/B02.tif")
    with rasterio.open(path, "r+") as ds:
        ds.write(np.random.default_rng(0).integers(low, high, (ds.height, ds.width)).astype("uint16"), 1)
        if overviews:
            ds.build_overviews([2], Resampling.nearest)


def test_an_item_whose_pixels_already_have_the_offset_is_not_offset_again(tmp_path):
    item = item_dict("earth_search_l2a.json", **{FLAG: False, "s2:processing_baseline": "05.10"})
    doc = save(item, tmp_path / "harmonised")
    _rewrite_blue(tmp_path / "harmonised", 50, 1600, overviews=False)  # about 60 % below DN 1000
    product = open_product(doc)
    assert product.offsets == {}
    check = product.radiometry["pixel_check"]
    assert check["band"] == "B02" and check["share_below_offset"] > APPLIED_SHARE
    assert product.radiometry["rule"].startswith("pixel check")
    assert any("already have it applied" in w for w in product.warnings)
    # the stack is the DNs as they are (no second -1000)
    with rasterio.open(product.bands["B02"].path) as ds:
        raw = ds.read(1)
    assert np.array_equal(stack(product, ["B02"])[0], np.maximum(raw, 1))


def test_raw_pixels_keep_the_offset_and_the_check_reads_an_overview(tmp_path):
    item = item_dict("earth_search_l2a.json", **{FLAG: False, "s2:processing_baseline": "05.10"})
    doc = save(item, tmp_path / "raw")
    _rewrite_blue(tmp_path / "raw", 1050, 6000, overviews=True)  # DN + 1000 of a real post-04.00 scene
    product = open_product(doc)
    assert product.offsets["B02"] == -1000.0 and not product.warnings
    assert product.radiometry["pixel_check"]["share_below_offset"] == 0.0
