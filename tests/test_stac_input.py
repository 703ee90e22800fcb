"""STAC input: provider items (Earth Search, Planetary Computer, Copernicus Data Space) -> products, radiometry
rules, documents (ItemCollection, GeoParquet, catalog), signing, and ingest/predict through the CLI.

The fixture items (tests/data/stac/) copy the structure of each provider's real items (asset keys, eo:bands /
bands, raster:bands / raster:offset, properties); their hrefs are relative, and each test writes tiny
GeoTIFFs / JPEG 2000s under those names next to a copy of the item in tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import torch
from rasterio.windows import Window
from shapely.geometry import box
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ConfigError, InputFormatError
from landcover.sources import stac as stac_mod
from landcover.sources.band_files import BandFile
from landcover.sources.reader import SceneReader
from landcover.sources.sentinel2 import open_product
from landcover.sources.stac import expand_references, open_stac, read_items
from landcover.sources.stac_assets import band_assets
from landcover.sources.stac_refs import sign_hook
from tests.s2_fixtures import L2A_BANDS, ORIGIN, pixels, write_s2_raster

DATA = Path(__file__).parent / "data" / "stac"
PROVIDERS = ("earth_search_l2a.json", "planetary_computer_l2a.json", "copernicus_dataspace_l2a.json")
FLAG = "earthsearch:boa_offset_applied"
_BAND_RE = re.compile(r"(?:^|_)(B\d\d|B8A|SCL)(?:_(\d\d)m)?\.(?:tif|jp2)$")


def item_dict(name: str, **properties) -> dict:
    item = json.loads((DATA / name).read_text())
    item["properties"].update(properties)
    for key in [k for k, v in properties.items() if v is None]:
        del item["properties"][key]
    return item


def write_assets(item: dict, folder: Path, *, dn_offset: int = 0, seed: int = 0) -> None:
    """Rasters for the item's local band hrefs (relative to ``folder``; each file once), ``dn_offset`` added."""
    for asset in item["assets"].values():
        href = asset["href"]
        name = href.rsplit("/", 1)[-1]
        if "://" in href or not (m := _BAND_RE.search(name)):
            continue
        band, res = m.group(1), float(asset.get("gsd") or m.group(2) or 10)
        path = Path(href) if Path(href).is_absolute() else folder / href
        if path.exists():
            continue
        n = -(-640 // int(res))
        data = pixels(
            (n, n), seed + L2A_BANDS.index(band) if band != "SCL" else seed, band, 0 if band == "SCL" else dn_offset
        )
        write_s2_raster(path, data, res)


def save(item: dict, folder: Path, name: str | None = None, **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_assets(item, folder, **kwargs)
    path = folder / (name or f"{item['id']}.json")
    path.write_text(json.dumps(item))
    return path


def stack(product, bands=L2A_BANDS) -> np.ndarray:
    with SceneReader(product, list(bands), prefetch=False) as reader:
        return reader.read(Window(0, 0, reader.grid.width, reader.grid.height)).image


# --- providers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "offset", "native_b02"),
    [
        ("earth_search_l2a.json", 0.0, "B02.tif"),  # boa_offset_applied: the COGs hold DN - 1000 already
        ("planetary_computer_l2a.json", -1000.0, "_B02_10m.tif"),  # baseline 05.09, nothing declared
        ("copernicus_dataspace_l2a.json", -1000.0, "_B02_10m.jp2"),  # raster:offset -0.1 / raster:scale 0.0001
    ],
)
def test_provider_items_open_to_esa_bands_with_their_offsets(tmp_path, name, offset, native_b02):
    path = save(item_dict(name), tmp_path)
    product = open_product(path)
    assert product.kind == "stac" and product.level == "L2A" and product.tile == "33UUP"
    assert product.band_names == L2A_BANDS and product.scl is not None
    assert product.processing_baseline == "05.09" and product.quantification == 10000.0
    assert product.product_id.startswith("S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_")
    assert product.sensing_time == "2023-01-15T10:10:21"
    assert {b: product.offsets.get(b, 0.0) for b in L2A_BANDS} == dict.fromkeys(L2A_BANDS, offset)
    assert product.bands["B02"].path.endswith(native_b02) and Path(product.bands["B02"].path).is_absolute()
    assert product.bands["B02"].resolution == 10 and product.bands["B05"].resolution == 20
    assert product.radiometry["dn_offsets_applied"] == dict.fromkeys(L2A_BANDS, offset)


def test_unknown_provider_bands_from_eo_bands_names_and_common_names():
    cog, jp2 = "image/tiff; application=geotiff; profile=cloud-optimized", "image/jp2"
    assets = {
        "band_2": ("/d/b2.tif", {"type": cog, "eo:bands": [{"name": "band 2", "common_name": "blue"}]}),
        "band_2_jp2": ("/d/b2.jp2?token=1", {"type": jp2, "eo:bands": [{"common_name": "blue"}]}),
        "re1": ("/d/re1.tif", {"bands": [{"name": "B05", "eo:common_name": "rededge"}]}),
        "re_unnamed": ("/d/re.tif", {"bands": [{"eo:common_name": "rededge"}]}),  # which red edge? not read
        "rgb": ("/d/rgb.tif", {"eo:bands": [{"common_name": c} for c in ("red", "green", "blue")]}),
        "swir16": ("/d/s16.tif", {}),
        "cloud_mask_scl": ("/d/scl.tif", {"eo:bands": [{"name": "SCL"}]}),
        "tci": ("/d/tci.tif", {"roles": ["visual"]}),
    }
    chosen = band_assets(assets)
    assert {b: a.key for b, a in chosen.items()} == {
        "B02": "band_2", "B05": "re1", "B11": "swir16", "SCL": "cloud_mask_scl"
    }  # fmt: skip


def test_earth_search_offset_applied_is_not_applied_twice(tmp_path):
    """Flag true: the COG pixels already are DN - 1000, i.e. the pre-04.00 scale; the stack equals an old item's."""
    new = open_product(save(item_dict("earth_search_l2a.json"), tmp_path / "new", seed=5))
    old_item = item_dict("earth_search_l2a.json", **{"s2:processing_baseline": "03.01", FLAG: False})
    old = open_product(save(old_item, tmp_path / "old", seed=5))
    assert new.offsets == {} and old.offsets == {}
    assert np.array_equal(stack(new), stack(old))


def test_flag_wins_over_raster_bands_and_baseline_wins_over_both(tmp_path):
    """Decision: a true flag wins over raster:bands (Earth Search writes one raster:bands on every item: recorded
    in the rule, no warning on every item), and a baseline < 04.00 wins over both (no offset existed: a warning)."""
    product = open_product(save(item_dict("earth_search_l2a.json", **{"s2:processing_baseline": "05.10"}), tmp_path))
    assert product.offsets == {} and not product.warnings
    assert "raster:bands declares offset -0.1" in product.radiometry["rule"]
    with SceneReader(product, ["B02"], prefetch=False) as reader:
        prov = reader.provenance()
    assert prov["offsets_applied"] == {"B02": 0.0}
    assert prov["radiometry"]["rule"].startswith(FLAG) and prov["radiometry"]["declared_dn_offsets"]["B02"] == -1000
    assert prov["warnings"] == product.warnings
    old = item_dict("earth_search_l2a.json", **{"s2:processing_baseline": "03.01"})  # flag true, raster -0.1
    product = open_product(save(old, tmp_path / "old"))
    assert product.offsets == {} and "< 04.00" in product.radiometry["rule"]
    assert any("< 04.00 has no offset" in w for w in product.warnings)
    not_applied = item_dict("earth_search_l2a.json", **{FLAG: False})
    product = open_product(save(not_applied, tmp_path / "raw", dn_offset=1000))  # raw DNs of baseline 05.10
    assert product.offsets == dict.fromkeys(L2A_BANDS, -1000.0) and not product.warnings
    assert product.radiometry["pixel_check"]["share_below_offset"] == 0.0


def test_pre_and_post_0400_items_of_one_scene_ingest_to_identical_pixels(tmp_path):
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig

    post = item_dict("planetary_computer_l2a.json")
    pre = item_dict(
        "planetary_computer_l2a.json",
        **{"s2:processing_baseline": "03.01", "s2:product_uri": "S2B_MSIL2A_20210115T101021_N0301_R022_T33UUP_x.SAFE"},
    )
    pre["id"] = "S2B_MSIL2A_20210115T101021_R022_T33UUP_x"
    docs = [save(post, tmp_path / "post", dn_offset=1000, seed=7), save(pre, tmp_path / "pre", seed=7)]
    cfg = IngestConfig(tile_size=16, overviews=False, split={"block_size_m": 640, "min_valid_fraction": 0.0})
    ds = ingest(docs, tmp_path / "ds", config=cfg).dataset
    images = {s["provenance"]["processing_baseline"]: s["image"] for s in ds["scenes"]}
    with rasterio.open(tmp_path / "ds" / images["05.09"]) as a, rasterio.open(tmp_path / "ds" / images["03.01"]) as b:
        new, old = a.read().astype(int), b.read().astype(int)
    # 10 m and 20 m bands identical; the 60 m bands (B01, B09) are resampled 6:1 in float32, where DN + 1000
    # can round a tie the other way: at most 1 DN apart, as for SAFE products of both baselines
    exact = [i for i, band in enumerate(L2A_BANDS) if band not in ("B01", "B09")]
    assert new.shape[0] == 12 and np.array_equal(new[exact], old[exact])
    assert np.abs(new - old).max() <= 1
    radiometry = {s["provenance"]["processing_baseline"]: s["provenance"]["radiometry"] for s in ds["scenes"]}
    assert radiometry["05.09"]["dn_offsets_applied"]["B04"] == -1000 and "ESA" in radiometry["05.09"]["rule"]
    assert radiometry["03.01"]["dn_offsets_applied"]["B04"] == 0


# --- documents and hrefs ---------------------------------------------------------------------------


def two_items(tmp_path: Path) -> list[dict]:
    a = item_dict("earth_search_l2a.json")
    b = item_dict("planetary_computer_l2a.json")
    write_assets(a, tmp_path)
    write_assets(b, tmp_path)
    return [a, b]


def summary(products) -> list[tuple]:
    return [
        (p.product_id, p.path.rpartition("#")[2], {b: f.path for b, f in p.bands.items()}, p.offsets) for p in products
    ]


def test_item_collection_geoparquet_and_catalog_give_the_single_items_products(tmp_path):
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    items = two_items(tmp_path)
    singles = [open_product(save(item, tmp_path, f"{i}.json")) for i, item in enumerate(items)]
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    to_parquet(parse_stac_items_to_arrow(items), tmp_path / "items.parquet")
    catalog = pystac.Catalog("s2", "two items")
    for item in items:  # absolute hrefs: the catalog keeps its items in sub-folders
        absolute = {k: {**a, "href": str(tmp_path / a["href"])} for k, a in item["assets"].items()}
        local = {**item, "assets": absolute, "links": [], "collection": None}  # no remote collection link to resolve
        catalog.add_item(pystac.Item.from_dict(local))
    catalog.normalize_and_save(str(tmp_path / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    for doc in (collection, tmp_path / "items.parquet", tmp_path / "catalog" / "catalog.json"):
        assert summary(open_stac(doc)) == summary(singles), doc
    refs = expand_references([collection, tmp_path / "items.parquet"])
    assert [str(r) for r in refs[:2]] == [f"{collection}#{items[0]['id']}", f"{collection}#{items[1]['id']}"]
    assert summary([open_product(refs[3])]) == summary(singles[1:])
    with pytest.raises(InputFormatError, match="2 STAC items"):
        open_product(collection)
    with pytest.raises(InputFormatError, match="no item 'nope'"):
        open_product(f"{collection}#nope")


def test_a_document_is_parsed_once_for_all_its_items_until_it_changes(tmp_path, monkeypatch):
    items = two_items(tmp_path)
    doc = tmp_path / "items.json"
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    calls = []
    parse = pystac.ItemCollection.from_file
    monkeypatch.setattr(pystac.ItemCollection, "from_file", lambda *a, **k: calls.append(a) or parse(*a, **k))
    refs = expand_references([doc])
    products = [open_product(ref) for ref in refs]  # what predict does: one open per item reference
    assert [p.path for p in products] == [str(r) for r in refs] and len(calls) == 1
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": items[:1]}))
    assert len(expand_references([doc])) == 1 and len(calls) == 2


def test_relative_absolute_and_file_hrefs_open_the_same_files(tmp_path):
    item = item_dict("earth_search_l2a.json")
    expected = summary([open_product(save(item, tmp_path / "data"))])
    for style in ("absolute", "file"):
        changed = json.loads(json.dumps(item))
        for asset in changed["assets"].values():
            if "://" not in asset["href"]:
                target = (tmp_path / "data" / asset["href"]).resolve()
                asset["href"] = target.as_uri() if style == "file" else str(target)
        doc = tmp_path / style / "item.json"
        doc.parent.mkdir()
        doc.write_text(json.dumps(changed))
        assert summary([open_product(doc)]) == expected, style


def append_token(href: str) -> str:
    return href + "?st=2023&sig=abc"


def test_sign_hook_rewrites_http_hrefs_only(tmp_path, monkeypatch):
    item = item_dict("planetary_computer_l2a.json")
    write_assets(item, tmp_path)
    for asset in item["assets"].values():
        asset["href"] = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/" + asset["href"]
    item["assets"]["SCL"]["href"] = "s3://bucket/SCL.tif"
    doc = tmp_path / "remote.json"
    doc.write_text(json.dumps(item))
    seen: list[str] = []

    def fake_grid(band: str, path: str) -> BandFile:  # never touch the network: the header a COG would have
        seen.append(path)
        res = 10.0 if band in ("B02", "B03", "B04", "B08") else 20.0 if band not in ("B01", "B09") else 60.0
        n = round(640 / res)
        return BandFile(
            band,
            path,
            1,
            res,
            "EPSG:32633",
            n,
            n,
            (ORIGIN[0], ORIGIN[1] - 640, ORIGIN[0] + 640, ORIGIN[1]),
            "uint16",
            0,
        )

    monkeypatch.setattr(stac_mod, "_read_grid", fake_grid)
    monkeypatch.setattr(stac_mod, "check_offset", lambda product: product)  # it would read pixels: no network
    signed: list[str] = []
    product = open_product(doc, sign=lambda href: signed.append(href) or append_token(href))
    assert product.bands["B02"].path == (
        "/vsicurl/https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/"
        "GRANULE/L2A_T33UUP_A030593_20230115T101021/IMG_DATA/R10m/T33UUP_20230115T101021_B02_10m.tif?st=2023&sig=abc"
    )
    assert product.scl is not None and product.scl.path == "/vsis3/bucket/SCL.tif"  # s3: not an http URL, unsigned
    assert len(seen) == 13 and sum("sig=abc" in p for p in seen) == 12
    assert len(signed) == 12  # the band assets only: not the previews, metadata, AOT or true-colour image
    assert sign_hook("tests.test_stac_input:append_token") is append_token
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match="pip install planetary-computer"):
        sign_hook("planetary-computer")
    with pytest.raises(ConfigError, match="module:function"):
        sign_hook("nonsense")


# --- command line ----------------------------------------------------------------------------------


@pytest.fixture
def clc(tmp_path):
    x0, y0 = ORIGIN
    frame = gpd.GeoDataFrame(
        {"CODE_18": ["311"]}, geometry=[box(x0 - 100, y0 - 800, x0 + 800, y0 + 100)], crs="EPSG:32633"
    )
    path = tmp_path / "clc.gpkg"
    frame.to_file(path)
    return path


def test_cli_ingest_of_an_item_collection(tmp_path, clc):
    items = two_items(tmp_path)
    items[1]["properties"]["s2:product_uri"] = "S2B_MSIL2A_20230120T101021_N0509_R022_T33UUP_20230120T120000.SAFE"
    doc = tmp_path / "items.json"
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    args = ["ingest", str(doc), "--labels", str(clc), "--out", str(tmp_path / "ds"), "--bands", "B02,B03,B04,B08"]
    args += ["--tile-size", "16", "--nomenclature", "level1", "--set", "overviews=false"]
    result = CliRunner().invoke(app, [*args, "--set", "split.min_valid_fraction=0"])
    assert result.exit_code == 0, result.output
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert sorted(s["scene_id"] for s in ds["scenes"]) == [
        "S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_20230115T120000",
        "S2B_MSIL2A_20230120T101021_N0509_R022_T33UUP_20230120T120000",
    ]
    rules = sorted(s["provenance"]["radiometry"]["rule"] for s in ds["scenes"])
    assert rules[0].startswith(f"{FLAG} is true") and rules[1].startswith("processing baseline 05.09 >= 04.00")


@pytest.mark.parametrize(
    ("assets", "message"),
    [
        ({"thumbnail": {"href": "t.jpg", "roles": ["thumbnail"]}}, "no Sentinel-2 band asset (assets: thumbnail)"),
        ({"foo": {"href": "foo.tif"}, "bar": {"href": "bar.tif"}}, "no Sentinel-2 band asset (assets: bar, foo)"),
    ],
)
def test_cli_bad_item_is_one_line_exit_2(tmp_path, assets, message, monkeypatch):
    item = item_dict("earth_search_l2a.json")
    item["assets"] = assets
    doc = tmp_path / "bad.json"
    doc.write_text(json.dumps(item))
    result = CliRunner().invoke(app, ["ingest", str(doc), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["ingest", str(doc), "--out", str(tmp_path / "ds"), "--sign", "planetary-computer"]
    )
    assert result.exit_code == 2 and "pip install planetary-computer" in result.output
    (tmp_path / "junk.json").write_text('{"type": "Nothing"}')
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "junk.json"), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2 and "is not a STAC Item" in result.output


def test_cli_predict_names_maps_after_the_items(tmp_path):
    from landcover.models.build import build_model
    from landcover.models.config import ModelConfig
    from tests.test_predict import BANDS, K, meta

    model, _ = build_model(ModelConfig(), BANDS, K, load_weights=False)
    ckpt = tmp_path / "best.ckpt"
    torch.save({"landcover": meta(), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    items = two_items(tmp_path)
    doc = tmp_path / "items.json"
    doc.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    args = ["predict", str(ckpt), str(doc), "--out", str(tmp_path / "maps"), "--no-quicklook", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.tif")) == sorted(f"{i['id']}.tif" for i in items)
    with rasterio.open(tmp_path / "maps" / f"{items[1]['id']}.tif") as ds:
        assert ds.tags()["PRODUCT_ID"] == "S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_20230116T120000"
        assert ds.tags()["INPUT"] == f"items.json#{items[1]['id']}"
    one = tmp_path / "one.tif"
    result = CliRunner().invoke(
        app, ["predict", str(ckpt), f"{doc}#{items[0]['id']}", "--out", str(one), "--no-quicklook"]
    )
    assert result.exit_code == 0 and one.exists(), result.output
    shutil.rmtree(tmp_path / "maps")
    result = CliRunner().invoke(app, ["predict", str(ckpt), f"{doc}#missing", "--out", str(tmp_path / "x.tif")])
    assert result.exit_code == 2 and "no item 'missing'" in result.output


def test_read_items_of_a_single_item_file(tmp_path):
    path = save(item_dict("copernicus_dataspace_l2a.json"), tmp_path)
    assert [i.id for i in read_items(path)] == ["S2B_MSIL2A_20230115T101021_N0509_R022_T33UUP_20230115T120000"]


def test_a_resampled_copy_is_read_only_when_the_native_file_is_missing():
    """Data Space items list ESA's resampled copies (B02_20m, B02_60m...) next to the native files: the native
    file wins; without it the finest copy is read (never an upsampled copy over a native coarser file)."""
    item = item_dict("copernicus_dataspace_l2a.json")
    assets = {k: (v["href"], v) for k, v in item["assets"].items()}
    chosen = band_assets(assets)
    assert chosen["B02"].key == "B02_10m" and chosen["B01"].key == "B01_60m" and chosen["SCL"].key == "SCL_20m"
    del assets["B02_10m"], assets["SCL_20m"]
    chosen = band_assets(assets)
    assert chosen["B02"].key == "B02_20m" and chosen["SCL"].key == "SCL_60m"
