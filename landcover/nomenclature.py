"""The checked-in tables of ``data_catalog/``: CORINE nomenclatures, Sentinel-2 bands, SCL classes.

This is the *one* place where sparse CORINE level-3 codes become contiguous class ids:
:meth:`Nomenclature.encode` uses a lookup table over every code 0..999 and raises
:class:`~landcover.errors.UnknownCodeError` for a code the tables do not know.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from landcover.errors import CatalogTableError, ConfigError, UnknownCodeError

IGNORE = 255
"""Label value for 'no label': outside CORINE, CLC no-data/unclassified, clouds, dropped classes."""

NOMENCLATURES = ("level3", "level2", "level1", "ben19")

_UNKNOWN = 65535  # lookup-table marker for codes the tables do not know


def catalog_dir() -> Path:
    """The data_catalog folder: next to the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "data_catalog", here / "data_catalog"):
        if (candidate / "corine_legend.csv").is_file():
            return candidate
    packaged = resources.files("landcover") / "data_catalog"
    if packaged.is_dir():
        return Path(str(packaged))
    raise CatalogTableError("data_catalog/ was not found beside or inside the landcover package; reinstall landcover")


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of ``data_catalog/<name>`` (CSV; lines starting with '#' are its source notes)."""
    path = catalog_dir() / name
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            lines = [line for line in fh if not line.startswith("#")]
    except OSError as exc:
        raise CatalogTableError(f"cannot read {path}: {exc}; reinstall landcover") from exc
    return list(csv.DictReader(lines))


def _rgb(text: str) -> tuple[int, int, int]:
    r, g, b = (int(part) for part in text.split("-"))
    return (r, g, b)


@dataclass(frozen=True)
class CorineClass:
    code: int
    index: int
    level2: int
    level1: int
    name: str
    rgb: tuple[int, int, int]
    ben43_name: str
    ben19_id: int | None


@functools.cache
def corine_classes() -> tuple[CorineClass, ...]:
    """The 44 CLC level-3 classes in code order."""
    rows = read_table("corine_legend.csv")
    classes = tuple(
        CorineClass(
            code=int(r["code"]),
            index=int(r["index"]),
            level2=int(r["level2"]),
            level1=int(r["level1"]),
            name=r["name"],
            rgb=_rgb(r["rgb"]),
            ben43_name=r["ben43_name"],
            ben19_id=int(r["ben19_id"]) if r["ben19_id"] else None,
        )
        for r in rows
    )
    if len(classes) != 44 or len({c.code for c in classes}) != 44:
        raise CatalogTableError("corine_legend.csv must hold the 44 distinct CLC level-3 classes")
    return classes


@functools.cache
def special_codes() -> dict[int, str]:
    """Codes of the vector products that are not classes (990, 995, 999, 0) -> name."""
    return {int(r["code"]): r["name"] for r in read_table("clc_special_values.csv") if r["code"]}


@functools.cache
def special_raster_values() -> dict[int, str]:
    """Values of the CLC index rasters that are not classes (48, 49, 50, fills) -> name."""
    return {int(r["raster_value"]): r["name"] for r in read_table("clc_special_values.csv")}


@dataclass(frozen=True)
class Nomenclature:
    """A class list (level3, level2, level1 or ben19) and the code -> class id lookup table."""

    name: str
    codes: tuple[str, ...]
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    lut: np.ndarray = field(repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def encode(self, codes: np.ndarray, where: str = "") -> np.ndarray:
        """Level-3 codes (0 = no label) -> class ids (uint8, 255 = ignore).

        Raises :class:`UnknownCodeError` listing every code the tables do not know.
        """
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.lut.size):
            bad = codes[(codes < 0) | (codes >= self.lut.size)]
            raise_unknown_codes(np.unique(bad).tolist(), where)
        ids = self.lut[codes]
        if (ids == _UNKNOWN).any():
            raise_unknown_codes(np.unique(codes[ids == _UNKNOWN]).tolist(), where)
        return ids.astype(np.uint8)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A GDAL colour table: class ids in their colours, 255 transparent."""
        cmap = {i: (*rgb, 255) for i, rgb in enumerate(self.colors)}
        cmap[IGNORE] = (0, 0, 0, 0)
        return cmap

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ignore_index": IGNORE,
            "classes": [
                {"id": i, "code": c, "name": n, "rgb": list(rgb)}
                for i, (c, n, rgb) in enumerate(zip(self.codes, self.class_names, self.colors, strict=True))
            ],
        }


def raise_unknown_codes(codes: list[int], where: str = "") -> None:
    known = ", ".join(str(c.code) for c in corine_classes()[:3])
    location = f" in {where}" if where else ""
    raise UnknownCodeError(
        f"CORINE code(s) {', '.join(map(str, codes))}{location} are not in the CLC nomenclature "
        f"(data_catalog/corine_legend.csv: 3-digit level-3 codes such as {known}, ..., and 990/995/999); "
        "fix the label source, or pass --code-column to pick the right attribute"
    )


@functools.cache
def nomenclature(name: str) -> Nomenclature:
    """The nomenclature called ``name`` (one of :data:`NOMENCLATURES`)."""
    classes = corine_classes()
    if name == "level3":
        targets = {c.code: i for i, c in enumerate(classes)}
        codes = [str(c.code) for c in classes]
        names = [c.name for c in classes]
        colors = [c.rgb for c in classes]
    elif name in ("level2", "level1"):
        rows = read_table(f"corine_{name}.csv")
        order = {int(r["code"]): i for i, r in enumerate(rows)}
        attr = name
        targets = {c.code: order[getattr(c, attr)] for c in classes}
        codes = [r["code"] for r in rows]
        names = [r["name"] for r in rows]
        colors = [_rgb(r["rgb"]) for r in rows]
    elif name == "ben19":
        rows = read_table("ben19.csv")
        targets = {c.code: c.ben19_id for c in classes if c.ben19_id is not None}
        targets.update({c.code: IGNORE for c in classes if c.ben19_id is None})
        codes = [f"ben19:{r['id']}" for r in rows]
        names = [r["name"] for r in rows]
        colors = [_rgb(r["rgb"]) for r in rows]
    else:
        raise ConfigError(f"unknown nomenclature {name!r}; choose one of {', '.join(NOMENCLATURES)}")
    lut = np.full(1000, _UNKNOWN, dtype=np.uint16)
    for code, target in targets.items():
        lut[code] = target
    for code in special_codes():
        lut[code] = IGNORE
    return Nomenclature(name, tuple(codes), tuple(names), tuple(colors), lut)


def index_to_code_lut() -> np.ndarray:
    """CLC raster value (0..255, plus int8 -128 as 128) -> level-3 code; special values -> 0.

    Values that are neither a class index nor a special value map to 65535 (unknown).
    """
    lut = np.full(256, _UNKNOWN, dtype=np.uint16)
    for c in corine_classes():
        lut[c.index] = c.code
    for value in special_raster_values():
        lut[value % 256] = 0
    return lut


# --- Sentinel-2 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    name: str
    resolution: int
    wavelength_nm: float
    bandwidth_nm: float
    in_l1c: bool
    in_l2a: bool
    description: str
    common_name: str  # STAC eo common name (blue, nir08, rededge, ...)


@functools.cache
def sentinel2_bands() -> dict[str, Band]:
    """Sentinel-2 bands in ESA order (B01..B08, B8A, B09, B10, B11, B12)."""
    return {
        r["band"]: Band(
            r["band"],
            int(r["resolution_m"]),
            float(r["wavelength_nm"]),
            float(r["bandwidth_nm"]),
            r["l1c"] == "yes",
            r["l2a"] == "yes",
            r["name"],
            r["common_name"],
        )
        for r in read_table("sentinel2_bands.csv")
    }


def default_bands(level: str) -> tuple[str, ...]:
    """All bands of a product level: 13 for L1C, 12 for L2A."""
    bands = sentinel2_bands().values()
    if level.upper() == "L1C":
        return tuple(b.name for b in bands if b.in_l1c)
    return tuple(b.name for b in bands if b.in_l2a)


def normalize_band_name(name: str) -> str:
    """'b4', 'B04', 'b8a' -> 'B04', 'B8A'; raises ConfigError for anything else."""
    text = name.strip().upper()
    if text.startswith("B") and text[1:].isdigit():
        text = f"B{int(text[1:]):02d}"
    if text not in sentinel2_bands():
        raise ConfigError(f"unknown Sentinel-2 band {name!r}; bands are {', '.join(sentinel2_bands())}")
    return text


@dataclass(frozen=True)
class SclClass:
    value: int
    name: str
    invalid_default: bool
    rgb: tuple[int, int, int]


@functools.cache
def scl_classes() -> tuple[SclClass, ...]:
    return tuple(
        SclClass(int(r["value"]), r["name"], r["invalid_default"] == "yes", _rgb(r["rgb"]))
        for r in read_table("scl_classes.csv")
    )


def default_scl_invalid() -> tuple[int, ...]:
    return tuple(c.value for c in scl_classes() if c.invalid_default)
