"""STAC items whose band assets are COGs served over HTTP from 127.0.0.1 (tests/http_server.py), end to end:
ingest and predict give the same pixels as the same items read from local files; transient 503s are survived;
a 404 is one clear line (exit 2) with nothing half-written, and the rerun resumes; a small AOI of a large COG
transfers a small fraction of the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.inference.predict import predict_scene
from landcover.io.aoi import AOI
from tests.s2_fixtures import ORIGIN
from tests.test_predict import Conv1x1, loaded
from tests.test_stac_input import item_dict, save

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
BANDS = ("B02", "B03", "B04", "B08")


def _served(item: dict, local: Path, server, name: str) -> Path:
    """The item saved next to its local files (``local``), the files copied to the server, and a copy of the item
    whose band hrefs are the server's URLs (written in ``local.parent / name``)."""
    shutil.copytree(local, server.root, dirs_exist_ok=True)
    remote = json.loads(json.dumps(item))
    for asset in remote["assets"].values():
        href = asset["href"]
        if "://" not in href and (local / href).exists():
            asset["href"] = server.url(href)
    path = local.parent / name
    path.write_text(json.dumps(remote))
    return path


def _labels(path: Path) -> Path:
    shapes = [
        box(ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 320, ORIGIN[1]),
        box(ORIGIN[0] + 320, ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1]),
    ]
    gpd.GeoDataFrame({"CODE_18": ["211", "311"]}, geometry=shapes, crs="EPSG:32633").to_file(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _cfg() -> IngestConfig:
    return IngestConfig(tile_size=16, nomenclature="level1", split={"by_scene": True})


def test_remote_items_ingest_and_predict_like_local_files(tmp_path, cog_server):
    item = item_dict("planetary_computer_l2a.json")  # baseline 05.09, -1000 to apply: the pixel check reads too
    local_doc = save(item, tmp_path / "local", dn_offset=1000)
    remote_doc = _served(item, tmp_path / "local", cog_server, "remote.json")
    labels = _labels(tmp_path / "labels.gpkg")
    ingest([local_doc], tmp_path / "ds_local", labels=labels, config=_cfg())
    cog_server.reset_counts()
    ingest([remote_doc], tmp_path / "ds_remote", labels=labels, config=_cfg())
    assert cog_server.total_sent() > 0  # it really read over HTTP
    (a,), (b,) = ((tmp_path / d / "scenes").iterdir() for d in ("ds_local", "ds_remote"))
    for name in ("image.tif", "labels.tif"):
        np.testing.assert_array_equal(_pixels(a / name), _pixels(b / name))
    local_cat, remote_cat = (pq.read_table(tmp_path / d / "catalog.parquet") for d in ("ds_local", "ds_remote"))
    assert local_cat.equals(remote_cat)
    scene = json.loads((b / "scene.json").read_text())
    assert scene["provenance"]["offsets_applied"]["B02"] == -1000.0
    lm = loaded(Conv1x1())
    predict_scene(lm, local_doc, tmp_path / "local.tif", tile=32, overlap=8, quicklook=False)
    predict_scene(lm, remote_doc, tmp_path / "remote.tif", tile=32, overlap=8, quicklook=False)
    np.testing.assert_array_equal(_pixels(tmp_path / "local.tif"), _pixels(tmp_path / "remote.tif"))


def test_two_503s_are_survived(tmp_path, cog_server):
    item = item_dict("planetary_computer_l2a.json")
    local_doc = save(item, tmp_path / "local", dn_offset=1000)
    remote_doc = _served(item, tmp_path / "local", cog_server, "remote.json")
    b04 = next(a["href"] for a in item["assets"].values() if a["href"].endswith("B04_10m.tif"))
    cog_server.fail(b04, 503, times=2)
    ingest([remote_doc], tmp_path / "ds", labels=_labels(tmp_path / "labels.gpkg"), config=_cfg())
    ingest([local_doc], tmp_path / "ds_local", labels=_labels(tmp_path / "labels.gpkg"), config=_cfg())
    (a,), (b,) = ((tmp_path / d / "scenes").iterdir() for d in ("ds_local", "ds"))
    np.testing.assert_array_equal(_pixels(a / "image.tif"), _pixels(b / "image.tif"))
    statuses = [r.status for r in cog_server.log if r.path.endswith(b04)]
    assert statuses[:2] == [503, 503] and all(s in (200, 206) for s in statuses[2:])


def test_a_persistent_404_is_one_line_nothing_half_written_and_the_rerun_resumes(tmp_path, cog_server):
    first = item_dict("planetary_computer_l2a.json")
    second = item_dict("planetary_computer_l2a.json")
    second["id"] = second["properties"]["s2:product_uri"] = (
        "S2B_MSIL2A_20230125T101021_N0509_R022_T33UUP_20230125T120000"
    )
    second["properties"]["datetime"] = "2023-01-25T10:10:21Z"
    for asset in second["assets"].values():
        asset["href"] = "second/" + asset["href"].rsplit("/", 1)[-1] if "://" not in asset["href"] else asset["href"]
    local = tmp_path / "local"
    save(first, local, dn_offset=1000)
    save(second, local, dn_offset=1000)
    docs = [_served(it, local, cog_server, f"{it['id']}.json") for it in (first, second)]
    bad = next(a["href"] for a in second["assets"].values() if a["href"].endswith("B08_10m.tif"))
    labels, out = _labels(tmp_path / "labels.gpkg"), tmp_path / "ds"
    common = ["--labels", str(labels), "--out", str(out), "--tile-size", "16", "--nomenclature", "level1",
              "--split-by-scene"]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(docs[0]), *common]).exit_code == 0  # a first run: one scene
    first_scene = next((out / "scenes").glob("*/scene.json")).read_bytes()
    cog_server.fail(bad, 404)
    res = runner.invoke(app, ["ingest", *map(str, docs), *common])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:") and "404" in line and bad in line
    scenes = [p.name for p in (out / "scenes").iterdir()]
    assert len(scenes) == 1 and next((out / "scenes").glob("*/scene.json")).read_bytes() == first_scene
    cog_server.heal(bad)
    res = runner.invoke(app, ["ingest", *map(str, docs), *common])  # resumes: the first scene is not redone
    assert res.exit_code == 0, res.output
    assert len(json.loads((out / "dataset.json").read_text())["scenes"]) == 2
    assert next((out / "scenes").glob(f"{scenes[0]}/scene.json")).read_bytes() == first_scene


def _large_item(folder: Path, size: int) -> dict:
    """An Earth-Search-shaped item with four 10 m bands as ``size`` x ``size`` COGs (256-px tiles, deflate,
    overviews) of smooth, compressible pixels."""
    item = item_dict("earth_search_l2a.json")
    keep = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
    item["assets"] = {k: v | {"href": f"{b}.tif"} for k, v in item["assets"].items() if k in keep for b in [keep[k]]}
    yy, xx = np.mgrid[0:size, 0:size]
    base = (1500 + 800 * np.sin(xx / 97.0) * np.cos(yy / 131.0)).astype(np.uint16)
    folder.mkdir(parents=True)
    for i, band in enumerate(keep.values()):
        profile = {
            "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
            "transform": from_origin(*ORIGIN, 10, 10), "nodata": 0, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "compress": "deflate",
        }  # fmt: skip
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as ds:
            ds.write(base + 100 * i, 1)
            ds.build_overviews([2, 4, 8], Resampling.average)
    return item


def test_a_small_aoi_of_a_large_cog_reads_a_small_fraction_of_it(tmp_path, cog_server):
    size = 4096
    item = _large_item(tmp_path / "local", size)
    doc = _served(item, tmp_path / "local", cog_server, "large.json")
    total = sum(p.stat().st_size for p in cog_server.root.glob("*.tif"))
    cog_server.reset_counts()
    x0, y0 = ORIGIN[0] + 20_000, ORIGIN[1] - 20_000  # a 1 km x 1 km AOI in the middle of the 41 km tile
    aoi = AOI(box(x0, y0 - 1000, x0 + 1000, y0), "EPSG:32633", "1 km box")
    result = predict_scene(loaded(Conv1x1()), doc, tmp_path / "aoi.tif", aoi=aoi, quicklook=False)
    assert (result.grid["width"], result.grid["height"]) == (100, 100)
    sent = cog_server.total_sent()
    print(f"AOI of {100 * 100} px: {sent:,} bytes sent of {total:,} ({sent / total:.2%})")
    assert 0 < sent < 0.05 * total


def test_search_then_ingest_an_aoi_end_to_end(tmp_path, cog_server):
    """The README's flow offline: `landcover search` against a STAC API on 127.0.0.1 that returns an item whose
    COGs the COG server serves, then `landcover ingest items.json --bbox` of a part of it."""
    import threading
    from http.server import ThreadingHTTPServer
    from urllib.parse import urlsplit

    from tests.test_search import FakeApi

    item = item_dict("planetary_computer_l2a.json")
    save(item, tmp_path / "local", dn_offset=1000)
    remote = json.loads(_served(item, tmp_path / "local", cog_server, "served.json").read_text())
    remote["collection"] = "sentinel-2-l2a"
    remote["links"] = []

    class Api(FakeApi):
        requests: list = []  # noqa: RUF012

        def route(self, method, params):
            if urlsplit(self.path).path.rstrip("/") == "/search":
                self.requests.append((method, "/search", params))
                self.answer({"type": "FeatureCollection", "features": [remote]})
            else:
                super().route(method, params)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        catalog = f"http://127.0.0.1:{server.server_address[1]}/"
        res = CliRunner().invoke(app, ["search", "--bbox", "14.3,48.6,14.4,48.7", "--catalog", catalog,
                                       "--out", str(tmp_path / "items.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
    finally:
        server.shutdown()
        server.server_close()
    bbox = f"{ORIGIN[0] + 100},{ORIGIN[1] - 500},{ORIGIN[0] + 420},{ORIGIN[1] - 20},EPSG:32633"
    res = CliRunner().invoke(
        app,
        ["ingest", str(tmp_path / "items.json"), "--labels", str(_labels(tmp_path / "labels.gpkg")), "--out",
         str(tmp_path / "ds"), "--bbox", bbox, "--tile-size", "16", "--nomenclature", "level1", "--split-by-scene"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (scene,) = (tmp_path / "ds" / "scenes").iterdir()
    with rasterio.open(scene / "image.tif") as img:
        assert (img.width, img.height) == (32, 48) and img.transform.c == ORIGIN[0] + 100
    assert cog_server.total_sent() > 0
