"""Real Sentinel-2 files through STAC and HTTP: the real T31TCJ L2A JPEG 2000 bands (baseline 04.00, ../shared/data)
described by a Copernicus-Data-Space-shaped item and served from 127.0.0.1 read to exactly the stack of the SAFE
product itself (same bands, same -1000 offset), also for an area of interest. Skipped without the shared data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box

from landcover.io.aoi import AOI
from landcover.io.grid import GDAL_ENV
from landcover.sources.reader import SceneReader
from landcover.sources.sentinel2 import open_product
from tests.conftest import shared_data
from tests.test_stac_input import item_dict

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
BANDS = ["B02", "B03", "B04", "B8A"]


def _item(r60m: Path, href) -> dict:
    """The Data Space fixture item made to describe the real product: its id, baseline and the R60m files."""
    item = item_dict("copernicus_dataspace_l2a.json")
    item["id"] = "S2A_MSIL2A_20221116T105321_N0400_R051_T31TCJ_20221116T170958"
    item["properties"] |= {"processing:version": "04.00", "datetime": "2022-11-16T10:53:21Z", "grid:code": "MGRS-31TCJ"}
    assets = {}
    for band in BANDS:
        (path,) = r60m.glob(f"*_{band}_60m.jp2")
        asset = item["assets"][f"{band}_60m"] | {"href": href(path.name), "proj:code": "EPSG:32631"}
        asset.pop("alternate", None)
        assets[f"{band}_60m"] = asset
    item["assets"] = assets
    return item


def _stack(product, aoi=None) -> np.ndarray:
    with rasterio.Env(**GDAL_ENV), SceneReader(product, BANDS, resolution=60.0, prefetch=False, aoi=aoi) as reader:
        return reader.read(Window(0, 0, reader.grid.width, reader.grid.height)).image


def test_real_l2a_bands_through_a_stac_item_over_http_equal_the_safe(tmp_path, cog_server):
    safe = shared_data("s2-l2a-T31TCJ-safe-r60m", "SENTINEL.SAFE")
    (r60m,) = safe.glob("GRANULE/*/IMG_DATA/R60m")
    for band in BANDS:
        (path,) = r60m.glob(f"*_{band}_60m.jp2")
        shutil.copy(path, cog_server.root / path.name)
    doc = tmp_path / "item.json"
    doc.write_text(json.dumps(_item(r60m, cog_server.url)))
    from_safe = open_product(safe).select(BANDS)
    from_stac = open_product(doc)
    assert from_stac.offsets == from_safe.offsets == dict.fromkeys(BANDS, -1000.0)
    assert from_stac.product_id == from_safe.product_id and from_stac.level == "L2A"
    assert all(from_stac.bands[b].path.startswith("/vsicurl/http://127.0.0.1:") for b in BANDS)
    whole = _stack(from_safe)
    np.testing.assert_array_equal(_stack(from_stac), whole)
    assert from_stac.radiometry["pixel_check"]["share_below_offset"] < 0.25  # real DNs keep the offset
    # an area of interest (about 20 x 15 km near the middle of the tile): the window of the same pixels
    grid = rasterio.open(from_safe.bands["B02"].path)
    left, top = grid.transform.c + 900 * 60, grid.transform.f - 800 * 60
    grid.close()
    aoi = AOI(box(left, top - 250 * 60, left + 330 * 60, top), "EPSG:32631", "box")
    part = _stack(from_stac, aoi)
    assert part.shape == (4, 250, 330)
    np.testing.assert_array_equal(part, whole[:, 800:1050, 900:1230])
