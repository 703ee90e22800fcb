"""Which asset of a STAC item is which Sentinel-2 band, and what its pixel values mean.

:func:`band_assets` maps asset keys to ESA band ids with ``data_catalog/stac_assets.csv`` (Earth Search,
Planetary Computer, Copernicus Data Space; documented in ``data_catalog/stac.md``), falling back to the
``eo:bands`` / ``bands`` names and common names of assets the table does not list.

:func:`radiometry` decides the DN offset to apply (the ``Product.offsets`` of ingest's
``value = (DN + offset) * 10000 / quantification``) from the processing baseline, ``raster:bands``
(or STAC 1.1 ``raster:offset``/``raster:scale``) and Earth Search's ``earthsearch:boa_offset_applied``,
and says which rule decided it and why. The rules, in order:

1. baseline < 04.00: offset 0, whatever the item declares (ESA added BOA_ADD_OFFSET/RADIO_ADD_OFFSET
   with baseline 04.00, January 2022);
2. ``earthsearch:boa_offset_applied`` true: offset 0 (Element 84 subtracted the offset when writing the
   COGs). Earth Search writes the same ``raster:bands`` (offset -0.1) on every item whatever its pixels,
   so the per-item flag wins over it (the record says so; no warning: it is on every such item); a flag
   that is false on COGs that have the offset applied is caught by :mod:`landcover.sources.stac_pixels`;
3. an offset declared by ``raster:bands``: ``offset / scale`` DN (-0.1 / 0.0001 = -1000);
4. baseline >= 04.00 without a declared offset: ESA's documented -1000;
5. nothing known: offset 0, with a warning.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from landcover import nomenclature as tables
from landcover.errors import CatalogTableError
from landcover.sources.band_files import token_band
from landcover.sources.s2meta import needs_offset

SKIP = "skip"
BASELINE_DN_OFFSET = -1000.0
FLAG = "earthsearch:boa_offset_applied"
_NOT_BANDS = re.compile(r"(visual|tci|aot|wvp|preview|thumbnail|overview|metadata|manifest|tilejson)", re.I)


@functools.cache
def asset_table() -> dict[str, str]:
    """``{asset key: band}`` of data_catalog/stac_assets.csv (``band`` 'skip': not read)."""
    known = {*tables.sentinel2_bands(), "SCL", SKIP}
    table: dict[str, str] = {}
    for row in tables.read_table("stac_assets.csv"):
        key, band = row["asset"], row["band"]
        if band not in known or table.setdefault(key, band) != band:
            raise CatalogTableError(f"data_catalog/stac_assets.csv: asset {key!r} -> {band!r} is unknown or ambiguous")
    return table


@functools.cache
def common_names() -> dict[str, str]:
    """``{eo common name: band}``: Earth Search's keys are the common names (rededge1..3 spelled out)."""
    return {k: b for k, b in asset_table().items() if k.islower() and b != SKIP and "-" not in k}


def _band_info(asset: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The asset's ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) entries."""
    for key in ("eo:bands", "bands"):
        if isinstance(value := asset.get(key), list) and value:
            return [v for v in value if isinstance(v, Mapping)]
    return []


def _guess(key: str, fields: Mapping[str, Any]) -> str | None:
    """The band of an asset the table does not list: its band name or common name, or its key."""
    roles = fields.get("roles") or []
    if _NOT_BANDS.search(key) or any(r in ("thumbnail", "overview", "metadata", "visual") for r in roles):
        return None
    info = _band_info(fields)
    if len(info) > 1:
        return None  # a multi-band asset (a true-colour image)
    first = info[0] if info else {}
    names = [str(first["name"])] if first.get("name") else []
    commons = [str(first[k]) for k in ("common_name", "eo:common_name") if first.get(k)]
    for text in [*names, key]:
        if text.upper() in ("SCL", "SCL_20M"):
            return "SCL"
        if band := token_band(text):
            return band
    for text in [*commons, *names, key]:
        if band := common_names().get(text.lower()):
            return band
    return None


@dataclass(frozen=True)
class BandAsset:
    band: str
    key: str
    href: str
    fields: Mapping[str, Any]
    listed: bool  # named in data_catalog/stac_assets.csv


def band_assets(assets: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, BandAsset]:
    """One asset per band (ESA order, then SCL) from ``{key: (href, fields)}``: the table's asset if listed,
    else the one whose names say the band (a Cloud-Optimized GeoTIFF before a JPEG 2000)."""
    found: dict[str, list[BandAsset]] = {}
    for key, (href, fields) in assets.items():
        band = asset_table().get(key)
        listed = band is not None
        band = band if listed else _guess(key, fields)
        if band is None or band == SKIP:
            continue
        found.setdefault(band, []).append(BandAsset(band, key, href, fields, listed))
    chosen = {}
    native = {b.name: b.resolution for b in tables.sentinel2_bands().values()} | {"SCL": 20}
    for band in [*tables.sentinel2_bands(), "SCL"]:
        if group := found.get(band):
            # listed, a COG before a JPEG 2000, the band's native resolution, else the finest copy (the Data Space
            # lists ESA's resampled copies, B02_60m...: used only when the item lacks the native file)
            chosen[band] = min(
                group, key=lambda a: (not a.listed, _is_jp2(a), _resolution(a) != native[band], _resolution(a), a.key)
            )
    return chosen


def _resolution(asset: BandAsset) -> float:
    """The asset's pixel size in metres: its ``gsd``, else the ``_20m`` of its key, else 0 (unknown)."""
    if isinstance(gsd := asset.fields.get("gsd"), int | float):
        return float(gsd)
    m = re.search(r"_(\d{2})m$", asset.key)
    return float(m.group(1)) if m else 0.0


def _is_jp2(asset: BandAsset) -> bool:
    return asset.href.split("?")[0].lower().endswith(".jp2") or "jp2" in str(asset.fields.get("type", ""))


def declared(fields: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(scale, offset)`` the asset declares (``raster:bands`` or ``raster:scale``/``raster:offset``), None if not."""
    entries = fields.get("raster:bands")
    source = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], Mapping) else {}
    info = _band_info(fields)
    band = info[0] if info else {}
    scale = fields.get("raster:scale", band.get("raster:scale", source.get("scale")))
    offset = fields.get("raster:offset", band.get("raster:offset", source.get("offset")))
    return (float(scale) if scale is not None else None, float(offset) if offset is not None else None)


def radiometry(
    bands: Mapping[str, BandAsset], baseline: str | None, flag: bool | None
) -> tuple[dict[str, float], float, dict[str, Any], list[str]]:
    """``(DN offsets per band, quantification, record, warnings)`` by the rules of the module docstring.

    The record says what was applied and why (it goes to scene.json/dataset.json provenance).
    """
    spectral = {b: a for b, a in bands.items() if b != "SCL"}
    decl = {b: declared(a.fields) for b, a in spectral.items()}
    scales = {s for s, _ in decl.values() if s}
    quantification = round(1.0 / scales.pop(), 6) if len(scales) == 1 else 10000.0
    dn = {b: round(o / s if s else o * quantification, 6) for b, (s, o) in decl.items() if o is not None}
    said = sorted({v for v in dn.values() if v})
    text = f"raster:bands declares offset {said[0] * (1 / quantification):g} (DN {said[0]:g})" if said else ""
    warnings: list[str] = []
    known = baseline is not None and re.fullmatch(r"\d+(\.\d+)?", baseline) is not None
    if known and not needs_offset(str(baseline)):
        rule, offsets = f"processing baseline {baseline} < 04.00: no offset exists", dict.fromkeys(spectral, 0.0)
        if said or flag:
            claim = text or f"{FLAG} is true"
            warnings.append(f"{claim} but processing baseline {baseline} < 04.00 has no offset: applied 0")
    elif flag:
        rule, offsets = f"{FLAG} is true: the provider already applied the offset", dict.fromkeys(spectral, 0.0)
        if said:  # Earth Search's template: the same raster:bands on every item; recorded, not warned about
            rule += f" ({text}, as on every Earth Search item whatever its pixels: the per-item flag wins)"
    elif dn:
        rule = "offset declared by raster:bands (DN offset = offset / scale)"
        offsets = {b: float(dn.get(b, 0.0)) for b in spectral}
        if known and not said:
            warnings.append(f"processing baseline {baseline} >= 04.00 but raster:bands declares offset 0: applied 0")
    elif known:
        rule = f"processing baseline {baseline} >= 04.00, no offset declared: ESA's BOA_ADD_OFFSET -1000"
        offsets = dict.fromkeys(spectral, BASELINE_DN_OFFSET)
    else:
        rule, offsets = "no processing baseline, offset or flag in the item: no offset", dict.fromkeys(spectral, 0.0)
        warnings.append("the STAC item gives no processing baseline or offset: no radiometric offset applied")
    record = {
        "source": "stac",
        "processing_baseline": baseline,
        FLAG: flag,
        "declared_dn_offsets": dn,
        "dn_offsets_applied": offsets,
        "quantification": quantification,
        "rule": rule,
    }
    return {b: v for b, v in offsets.items() if v}, quantification, record, warnings
