"""Sentinel-2 product metadata: what ESA product names and ``MTD_MSIL1C/2A.xml`` files tell.

:class:`Meta` collects level, tile, sensing time, processing baseline, radiometric offsets and
quantification from several sources (metadata file, product name, file names); the first source
that knows a value wins (:meth:`Meta.fill`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from landcover import nomenclature as tables
from landcover.errors import CorruptFileError

PRODUCT_RE = re.compile(r"S2[A-D]_MSI(L1C|L2A)_(\d{8}T\d{5,6})(?:_N(\d{4})_R\d{3}_T(\d{2}[A-Z]{3}))?", re.I)
"""An ESA product name: level, sensing time and (full names only) baseline and tile."""


@dataclass
class Meta:
    """What one source tells about a product (None: it does not say)."""

    product_id: str | None = None
    level: str | None = None
    tile: str | None = None
    sensing_time: str | None = None
    baseline: str | None = None
    offsets: dict[str, float] | None = None
    quantification: float | None = None
    source: str = "none"
    n9999: bool = False  # baseline 'N9999' (BigEarthNet, reprocessed): unknown, no offset

    def fill(self, other: Meta | None) -> Meta:
        """Take from ``other`` what is still unknown; the source is the first that told anything."""
        for name in ("product_id", "level", "tile", "sensing_time", "baseline", "offsets"):
            if other and getattr(self, name) is None and getattr(other, name) is not None:
                setattr(self, name, getattr(other, name))
                self.source = other.source if self.source == "none" else self.source
        self.n9999 = self.n9999 or bool(other and other.n9999 and self.baseline is None)
        return self


def iso_time(stamp: str) -> str:
    day, time = stamp.upper().split("T")
    time = time.zfill(6)  # BigEarthNet v1 writes 93020 for 09:30:20
    return f"{day[:4]}-{day[4:6]}-{day[6:]}T{time[:2]}:{time[2:4]}:{time[4:]}"


def parse_name(name: str, source: str = "product name") -> Meta | None:
    """Level, sensing time, tile and baseline from an ESA product name found in ``name``."""
    if (m := PRODUCT_RE.search(name)) is None:
        return None
    level, stamp, nbase, tile = m.groups()
    meta = Meta(level=level.upper(), sensing_time=iso_time(stamp), source=source)
    if nbase is not None:
        meta.product_id = re.sub(r"\.(SAFE|zip)$", "", name[m.start() :], flags=re.I)
        meta.tile = tile.upper()
        meta.n9999 = nbase == "9999"
        meta.baseline = None if meta.n9999 else f"{nbase[:2]}.{nbase[2:]}"
    return meta


def parse_mtd(xml: bytes, source: str) -> Meta:
    """Metadata of an ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` (namespaces ignored)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise CorruptFileError(f"{source} is not valid XML ({exc}); re-download the product") from exc
    texts: dict[str, str] = {}
    offsets: dict[str, float] | None = None  # None: no offset list; {}: offsets of 0
    names = list(tables.sentinel2_bands())
    for el in root.iter():
        tag, text = el.tag.rsplit("}", 1)[-1], (el.text or "").strip()
        if tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and (band_id := el.get("band_id", "")).isdigit():
            offsets = {} if offsets is None else offsets
            if int(band_id) < len(names) and re.fullmatch(r"-?\d+(\.\d*)?", text) and float(text):
                offsets[names[int(band_id)]] = float(text)
        elif text:
            texts.setdefault(tag, text)
    uri = texts.get("PRODUCT_URI_2A") or texts.get("PRODUCT_URI") or texts.get("PRODUCT_URI_1C")
    meta = Meta(source=source).fill(parse_name(uri) if uri else None)
    level = texts.get("PROCESSING_LEVEL", "") + root.tag
    meta.level = "L2A" if "2A" in level else "L1C" if "1C" in level else meta.level
    meta.sensing_time = texts.get("PRODUCT_START_TIME", meta.sensing_time)
    meta.baseline = texts.get("PROCESSING_BASELINE", meta.baseline)
    quant = texts.get("BOA_QUANTIFICATION_VALUE") or texts.get("QUANTIFICATION_VALUE")
    meta.quantification = float(quant) if quant else None
    meta.offsets = offsets
    return meta


def needs_offset(baseline: str) -> bool:
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


LEVEL_NAMES = {"L1C": "top-of-atmosphere reflectance", "L2A": "surface reflectance"}
"""What the values of each processing level are (they differ: a model of one misreads the other)."""


def dataset_level(scenes: Iterable[Mapping[str, Any]]) -> str:
    """The processing level of a dataset's scenes (``dataset.json`` entries with ``provenance.level``):
    ``L1C`` or ``L2A`` when every scene has it, ``mixed`` for both, ``unknown`` when any scene's is unknown."""
    levels = {str(((s.get("provenance") or {}).get("level")) or "unknown") for s in scenes}
    if not levels or levels - set(LEVEL_NAMES):
        return "unknown"
    return levels.pop() if len(levels) == 1 else "mixed"


def level_mismatch(trained: str | None, scene: str | None) -> bool:
    """Whether a model trained on ``trained`` data must not be applied to a ``scene`` of another level
    (both known: an unknown or mixed level is never a mismatch)."""
    return trained in LEVEL_NAMES and scene in LEVEL_NAMES and trained != scene
