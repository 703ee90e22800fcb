"""STAC items as Sentinel-2 products: what ingest and predict read from Earth Search, Planetary Computer or
the Copernicus Data Space.

A STAC document is a local file: an Item or an ItemCollection/FeatureCollection (``.json``/``.geojson``), a
static Catalog or Collection (``catalog.json``/``collection.json``, its items found recursively), or a
STAC-GeoParquet file (``.parquet``). It is parsed with pystac (and stac-geoparquet), never by hand.
``doc.json#<item id>`` (:mod:`landcover.sources.stac_refs`) names one item of a document.

Each item becomes a :class:`~landcover.sources.sentinel2.Product` (``kind='stac'``): its band assets
(:func:`~landcover.sources.stac_assets.band_assets`) as band files with GDAL paths (``/vsicurl/`` for
http(s), ``/vsis3/`` for s3, relative hrefs against the item's or the document's location), each opened
once for its grid; radiometry from the item (:func:`~landcover.sources.stac_assets.radiometry`), recorded
in ``Product.radiometry``. A ``sign`` hook (e.g. ``planetary_computer.sign``) rewrites each http(s) href
before it is used.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import rasterio

from landcover.errors import InputFormatError, ProductMismatchError
from landcover.io.grid import GDAL_ENV
from landcover.io.remote import gdal_path
from landcover.sources.band_files import BandFile, read_band
from landcover.sources.product import Product
from landcover.sources.s2meta import parse_name
from landcover.sources.stac_assets import FLAG, band_assets, radiometry
from landcover.sources.stac_pixels import check_offset
from landcover.sources.stac_refs import STAC_SUFFIXES, reference, split_reference

if TYPE_CHECKING:
    import pystac

Sign = Callable[[str], str]
"""A hook that returns a usable URL for an http(s) href (e.g. one with a SAS token appended)."""


def _bad_document(path: Path, exc: Exception | str) -> InputFormatError:
    return InputFormatError(
        f"{path} is not a STAC Item, ItemCollection, Catalog, Collection or STAC-GeoParquet file ({exc}); "
        "point at a STAC document saved from a catalogue (e.g. by `landcover search`)"
    )


def read_items(path: str | Path) -> list[pystac.Item]:
    """The items of the STAC document at ``path`` (every item of a catalog, recursively).

    The last documents read are kept (until they change on disk): predict opens a document once per item.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFormatError(f"{path} does not exist; check the path of the STAC document")
    if path.suffix.lower() not in STAC_SUFFIXES:
        raise _bad_document(path, f"suffix {path.suffix or 'none'}, not one of {', '.join(STAC_SUFFIXES)}")
    stat = path.stat()
    return list(_read_items(path.resolve(), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read_items(path: Path, mtime_ns: int, size: int) -> tuple[pystac.Item, ...]:
    """The items of ``path`` as last modified at ``mtime_ns`` (the cache key: a changed file is read again)."""
    import pystac

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            from stac_geoparquet.arrow import stac_table_to_items

            return tuple(pystac.Item.from_dict(d) for d in stac_table_to_items(pq.read_table(path)))
        try:
            obj: Any = pystac.read_file(str(path))
        except pystac.STACTypeError:
            obj = pystac.ItemCollection.from_file(str(path))
    except Exception as exc:  # pystac, pyarrow and json raise many kinds for a file that is not STAC
        raise _bad_document(path, f"{type(exc).__name__}: {exc}") from exc
    if isinstance(obj, pystac.Item):
        return (obj,)
    if isinstance(obj, pystac.Catalog):  # a Collection is a Catalog
        return tuple(obj.get_items(recursive=True))
    if isinstance(obj, pystac.ItemCollection):
        return tuple(obj.items)
    raise _bad_document(path, type(obj).__name__)


def expand_references(inputs: Sequence[str | Path]) -> list[str | Path]:
    """``inputs`` with each STAC document replaced by one reference per item (``doc.json#<item id>``), in order."""
    expanded: list[str | Path] = []
    for entry in inputs:
        doc, item_id = split_reference(entry)
        if item_id is not None or doc.suffix.lower() not in STAC_SUFFIXES:
            expanded.append(entry)
            continue
        items = read_items(doc)
        if not items:
            raise InputFormatError(f"{doc} holds no STAC item; point at a document with Sentinel-2 items")
        expanded += [reference(doc, item.id) for item in items]
    return expanded


def open_stac(ref: str | Path, *, sign: Sign | None = None) -> list[Product]:
    """The products of a STAC document (one per item), or of the one item ``doc.json#<item id>`` names."""
    doc, item_id = split_reference(ref)
    items = read_items(doc)
    if item_id is not None:
        items = [item for item in items if item.id == item_id]
        if not items:
            raise InputFormatError(f"{doc} has no item {item_id!r}; check the item id after '#'")
    elif not items:
        raise InputFormatError(f"{doc} holds no STAC item; point at a document with Sentinel-2 items")
    return [item_product(item, doc, sign=sign) for item in items]


def _gdal_path(href: str, doc: Path, sign: Sign | None) -> str:
    """The GDAL path of an asset's href: signed if http(s); relative to the document's folder if still relative."""
    if sign is not None and urlparse(href).scheme in ("http", "https"):
        href = sign(href)
    return gdal_path(href, doc.resolve().parent)


def _read_grid(band: str, path: str) -> BandFile:
    with rasterio.Env(**GDAL_ENV):  # GDAL's options are per thread
        return read_band(band, path)


def item_product(item: pystac.Item, doc: Path, *, sign: Sign | None = None) -> Product:
    """One STAC item as a product (band files opened once for their grids)."""
    where = reference(doc, item.id)
    # hrefs relative to the item's own location when it has one (pystac), else to the document's folder
    assets = {key: (a.get_absolute_href() or a.href, a.to_dict()) for key, a in item.assets.items()}
    chosen = band_assets(assets)  # only the band assets are signed and opened
    if not [b for b in chosen if b != "SCL"]:
        listing = ", ".join(sorted(item.assets)[:15]) or "none"
        raise InputFormatError(
            f"STAC item {where} has no Sentinel-2 band asset (assets: {listing}); landcover knows the asset keys "
            "of data_catalog/stac_assets.csv and assets whose eo:bands/bands name a band (B02, blue, ...)"
        )
    with ThreadPoolExecutor(max_workers=max(1, min(len(chosen), os.cpu_count() or 1))) as pool:
        futures = {b: pool.submit(_read_grid, b, _gdal_path(a.href, doc, sign)) for b, a in chosen.items()}
        files = {b: f.result() for b, f in futures.items()}
    if len(crss := {f.crs for f in files.values()}) > 1:
        raise ProductMismatchError(
            f"STAC item {where} mixes CRSs ({', '.join(sorted(map(str, crss)))}) among its band assets; "
            "its assets are not one product: fix or leave out the item"
        )
    props = item.properties
    product_id = _product_id(item)
    named = parse_name(product_id)
    baseline = _baseline(props, named.baseline if named else None)
    flag = props.get(FLAG)
    offsets, quantification, record, warnings = radiometry(chosen, baseline, flag if isinstance(flag, bool) else None)
    record["assets"] = {b: a.key for b, a in chosen.items()}
    scl = files.pop("SCL", None)
    product = Product(
        path=where,
        product_id=product_id,
        kind="stac",
        level=_level(item, product_id, scl is not None),
        bands=files,
        scl=scl,
        tile=_tile(props) or (named.tile if named else None),
        sensing_time=item.datetime.strftime("%Y-%m-%dT%H:%M:%S") if item.datetime else None,
        processing_baseline=baseline,
        offsets=offsets,
        quantification=quantification,
        metadata_source=f"STAC item {item.id}",
        warnings=[f"{item.id}: {w}" for w in warnings],
        radiometry=record,
    )
    return check_offset(product)  # an offset the metadata asks for but the pixels already have: not applied


def _product_id(item: pystac.Item) -> str:
    """The ESA product name if the item gives it (``s2:product_uri``, or an id that is one), else the item id."""
    uri = item.properties.get("s2:product_uri")
    if isinstance(uri, str) and uri:
        return re.sub(r"\.SAFE$", "", uri.strip(), flags=re.I)
    named = parse_name(item.id)
    return named.product_id if named and named.product_id else item.id


def _baseline(props: dict[str, Any], from_name: str | None) -> str | None:
    for key in ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline"):
        value = props.get(key)
        if isinstance(value, str | float | int) and re.fullmatch(r"\d{1,2}\.\d{1,2}", str(value)):
            major, minor = str(value).split(".")
            return f"{int(major):02d}.{minor.ljust(2, '0')}"
    return from_name


def _level(item: pystac.Item, product_id: str, has_scl: bool) -> str:
    props = item.properties
    texts = [
        str(props.get("processing:level", "")),
        str(props.get("s2:product_type", "")),
        str(props.get("product:type", "")),
        item.collection_id or "",
        product_id,
    ]
    for text in texts:
        up = text.upper()
        if re.search(r"L2A?\b|2A\b|L2A", up) and "L1" not in up:
            return "L2A"
        if re.search(r"L1C|1C\b", up):
            return "L1C"
    return "L2A" if has_scl else "unknown"


def _tile(props: dict[str, Any]) -> str | None:
    if isinstance(tile := props.get("s2:mgrs_tile"), str) and tile:
        return tile.upper().removeprefix("T")
    zone, band, square = (props.get(f"mgrs:{k}") for k in ("utm_zone", "latitude_band", "grid_square"))
    if zone is not None and band and square:
        return f"{int(zone):02d}{band}{square}".upper()
    code = str(props.get("grid:code", ""))
    if code.upper().startswith("MGRS-"):
        return code[5:].upper()
    if isinstance(tile := props.get("s2:tile_id"), str) and (m := re.search(r"T(\d{2}[A-Z]{3})", tile)):
        return m.group(1)
    return None
