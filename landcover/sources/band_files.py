"""Which file is which band: Sentinel-2 band files recognised by their names.

Owns the band tokens of file names (``B04``, ``B8A_20m``, ``SCL``, Major-TOM ``cloud_mask``; detector
and quality masks are not bands), walking a folder (at most :data:`MAX_FILES` files, ``QI_DATA``
skipped), choosing one file per band (the one at the band's native resolution if named so, else the
finest named), refusing files of different products (tiles, dates, CRSs or areas), and opening
each chosen file once for its grid and last pixel (:class:`BandFile`). What a product is made of
these (level, metadata, offsets) is :mod:`landcover.sources.sentinel2`'s part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from landcover import nomenclature as tables
from landcover.errors import CorruptFileError, InputFormatError, LandcoverError, ProductMismatchError
from landcover.io.remote import is_remote, remote_error

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
MASKS = ("SCL", "CLOUD")  # pseudo band names of the L2A scene classification / Major-TOM cloud mask
MAX_FILES = 5000  # more files than any one product has: the user pointed at an archive

_TOKEN_RE = re.compile(r"(?:^|[_.\-\s(])(B(?:8A|\d{1,2})|SCL)(?:_(\d{2})m)?(?=$|[_.\-\s()])", re.I)
TILE_RE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?=_|$)", re.I)
DATE_RE = re.compile(r"(?:^|_)(\d{8}T\d{6})(?=_|$)", re.I)


@dataclass(frozen=True)
class BandFile:
    """One band of a product: a GDAL-openable path, the band index in it, and its grid."""

    band: str
    path: str
    index: int = 1
    resolution: float = 0.0  # pixel size in metres, read from the file
    crs: str | None = None
    width: int = 0
    height: int = 0
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    dtype: str = ""
    nodata: float | None = None


@dataclass(frozen=True)
class Candidate:
    """A file that looks like a band or mask by its name (not opened yet)."""

    band: str  # 'B02', ..., or one of MASKS
    claimed: int | None  # resolution named in the file name ('_20m')
    rel: str  # POSIX path relative to what was listed
    gdal: str


def file_stem(name: str) -> str:
    """``name`` without its raster suffixes ('T33UUU_B04.jp2.TIF' -> 'T33UUU_B04')."""
    while Path(name).suffix.lower() in RASTER_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    return name


def classify(rel: str, gdal: str) -> Candidate | None:
    """What a file is, from its name: a band, the SCL, a Major-TOM cloud mask, or nothing."""
    name = rel.rsplit("/", 1)[-1]
    stem = file_stem(name)
    if name.startswith(".") or stem == name:
        return None
    if stem.lower() == "cloud_mask":
        return Candidate("CLOUD", None, rel, gdal)
    if stem.upper().startswith("MSK_") or "_MSK_" in stem.upper():
        return None  # detector / quality masks carry band ids but are not bands
    band = token_band(stem, last=True)
    res = list(_TOKEN_RE.finditer(stem))[-1].group(2) if band else None
    return Candidate(band, int(res) if res else None, rel, gdal) if band else None


def token_band(text: str, last: bool = False) -> str | None:
    """The band id in ``text`` ('B4', 'B04 (Red)', '..._B8A_20m', 'SCL'); the last one if ``last``."""
    tokens = list(_TOKEN_RE.finditer(text.strip()))
    if not tokens or (len(tokens) > 1 and not last):
        return None
    token = tokens[-1].group(1).upper()
    try:
        return token if token == "SCL" else tables.normalize_band_name(token)
    except LandcoverError:
        return None  # 'B00', 'B13'


def read_band(band: str, path: str, index: int = 1) -> BandFile:
    """Open ``path`` once for its grid and its last pixel (where a truncated file fails)."""
    try:
        with rasterio.open(path) as ds:
            ds.read(index, window=Window(ds.width - 1, ds.height - 1, 1, 1))
            crs = ds.crs.to_string() if ds.crs else None
            grid = (float(ds.res[0]), crs, ds.width, ds.height, tuple(ds.bounds))
            return BandFile(band, path, index, *grid, ds.dtypes[index - 1], ds.nodata)
    except RasterioError as exc:
        if is_remote(path):
            raise remote_error(path, exc) from None
        raise CorruptFileError(
            f"cannot read {path} ({exc}); the file is truncated or not a raster: re-download it"
        ) from exc


def _mismatch(where: str, what: str, files: Iterable[str]) -> ProductMismatchError:
    return ProductMismatchError(
        f"{where} mixes files of different products ({what}): {'; '.join(files)}; "
        "put each product in its own folder and point at one of them"
    )


def assemble(cands: list[Candidate], where: str) -> dict[str, BandFile]:
    """One opened file per band (ESA order) and per mask; raises on mixed products."""
    for regex, what in ((TILE_RE, "tile"), (DATE_RE, "date")):
        seen: dict[str, str] = {}
        for c in cands:
            if m := regex.search(file_stem(c.rel.rsplit("/", 1)[-1])):
                seen.setdefault(m.group(1).upper(), c.rel)
        if len(seen) > 1:
            raise _mismatch(where, f"{what}s {', '.join(sorted(seen))}", sorted(seen.values()))
    native = {b.name: b.resolution for b in tables.sentinel2_bands().values()} | {"SCL": 20}
    chosen: dict[str, str] = {}
    for band in [*tables.sentinel2_bands(), *MASKS]:
        group = [c for c in cands if c.band == band]
        if not group:
            continue
        # the file at the band's native resolution if one is named so, else the finest named one
        best = min(group, key=lambda c: (c.claimed != native.get(c.band), c.claimed or 0, c.rel))
        if twins := [c.rel for c in group if c.claimed == best.claimed and c is not best]:
            raise _mismatch(where, f"{band} twice", [best.rel, *twins])
        chosen[band] = best.gdal
    # each check decodes the last block of its file (a JP2 tile): on all cores
    with ThreadPoolExecutor(max_workers=max(1, min(len(chosen), os.cpu_count() or 1))) as pool:
        opened = [pool.submit(read_band, band, path) for band, path in chosen.items()]
        files = {band: task.result() for band, task in zip(chosen, opened, strict=True)}
    grids = list(files.values())
    if len({f.crs for f in grids}) > 1:
        examples = {f.crs: f"{f.path} ({f.crs})" for f in grids}
        raise _mismatch(where, "CRSs", examples.values())
    tolerance = max(f.resolution for f in grids)
    for f in grids[1:]:
        if max(abs(a - b) for a, b in zip(f.bounds, grids[0].bounds, strict=True)) > tolerance:
            raise _mismatch(where, "areas", [grids[0].path, f.path])
    return files


def walk_files(root: Path, max_depth: int) -> list[str]:
    """Files under ``root`` (POSIX, relative), at most ``max_depth`` folders deep."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        keep = len(rel.parts) < max_depth
        dirnames[:] = sorted(d for d in dirnames if keep and not d.startswith(".") and d != "QI_DATA")
        found += [(rel / n).as_posix() for n in sorted(filenames)]
        if len(found) > MAX_FILES:
            raise InputFormatError(f"{root} holds more than {MAX_FILES} files: point at one product, not an archive")
    return found
