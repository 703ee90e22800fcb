"""Find the Sentinel-2 input a user points at, and what is known about it.

:func:`open_product` accepts a SAFE product (folder or ``.zip``), a folder of per-band files
(ESA names, Major-TOM ``B04.tif``, ``*.jp2.TIF`` exports), one multi-band GeoTIFF, or a
BigEarthNet patch folder. It returns a :class:`Product`: one :class:`BandFile` per spectral band
(a GDAL path, band index, native grid), the SCL or cloud mask, and the radiometric metadata
(processing baseline, additive offset, quantification). Each raster is opened once, for its header
and its last pixel (which catches truncated downloads); the pixels are read elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from landcover import tables
from landcover.errors import (
    CorruptFileError,
    DatasetError,
    InputFormatError,
    LandcoverError,
    MissingBandError,
    ProductMismatchError,
    UnknownCodeError,
)

BASELINE_OFFSET = -1000.0
"""DN offset of processing baseline >= 04.00 (from 25 January 2022): reflectance = (DN + offset) / 10000."""

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
MASKS = ("SCL", "CLOUD")  # pseudo band names of the L2A scene classification / Major-TOM cloud mask
_MAX_FILES = 5000  # more files than any one product has: the user pointed at an archive

_PRODUCT_RE = re.compile(
    r"S2[A-D]_MSI(L1C|L2A)_(\d{8}T\d{5,6})(?:_N(\d{4})_R\d{3}_T(\d{2}[A-Z]{3}))?", re.I
)
_TOKEN_RE = re.compile(r"(?:^|[_.\-\s(])(B(?:8A|\d{1,2})|SCL)(?:_(\d{2})m)?(?=$|[_.\-\s()])", re.I)
_TILE_RE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?=_|$)", re.I)
_DATE_RE = re.compile(r"(?:^|_)(\d{8}T\d{6})(?=_|$)", re.I)
_BEN_RE = re.compile(r"S2[A-D]_MSIL2A_\d{8}T\d{5,6}_(?:N\d{4}_R\d{3}_T\d{2}[A-Z]{3}_)?\d+_\d+")


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


@dataclass
class Product:
    """A Sentinel-2 input: band files in ESA order, masks, and radiometric metadata."""

    path: str
    product_id: str
    kind: str  # 'safe' | 'folder' | 'multiband' | 'bigearthnet'
    level: str  # 'L1C' | 'L2A' | 'unknown'
    bands: dict[str, BandFile]
    scl: BandFile | None = None
    cloud_mask: BandFile | None = None
    tile: str | None = None
    sensing_time: str | None = None
    processing_baseline: str | None = None
    offsets: dict[str, float] = field(default_factory=dict)
    quantification: float = 10000.0
    metadata_source: str = "none"
    warnings: list[str] = field(default_factory=list)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(self.bands)

    def select(self, bands: Sequence[str] | None) -> Product:
        """This product with only ``bands``, in that order.

        ``None`` means the level's default bands (13 for L1C, 12 for L2A; every band found when
        the level is unknown). Raises :class:`MissingBandError` naming missing and found bands.
        """
        if bands is None and self.level == "unknown":
            wanted = list(self.bands)
        elif bands is None:
            wanted = list(tables.default_bands(self.level))
        else:
            wanted = list(dict.fromkeys(tables.normalize_band_name(b) for b in bands))
        if missing := [b for b in wanted if b not in self.bands]:
            found = ",".join(self.bands)
            raise MissingBandError(
                f"band(s) {', '.join(missing)} not in {self.path} ({self.level} {self.kind} input "
                f"with bands {found}); pass --bands {found} (or a subset), or use a product that has them"
            )
        offsets = {b: v for b, v in self.offsets.items() if b in wanted}
        bands_ = {b: self.bands[b] for b in wanted}
        return replace(self, bands=bands_, offsets=offsets, warnings=list(self.warnings))


def product_grid_band(product: Product) -> BandFile:
    """The finest-resolution band (the first one on ties): it defines the 10 m output grid."""
    if not product.bands:
        raise MissingBandError(f"{product.path} has no spectral band; point at a Sentinel-2 product")
    return min(product.bands.values(), key=lambda b: b.resolution)


# --- metadata ------------------------------------------------------------------------------------


@dataclass
class _Meta:
    product_id: str | None = None
    level: str | None = None
    tile: str | None = None
    sensing_time: str | None = None
    baseline: str | None = None
    offsets: dict[str, float] | None = None
    quantification: float | None = None
    source: str = "none"
    n9999: bool = False  # baseline 'N9999' (BigEarthNet, reprocessed): unknown, no offset

    def fill(self, other: _Meta | None) -> _Meta:
        """Take from ``other`` what is still unknown; the source is the first that told anything."""
        for name in ("product_id", "level", "tile", "sensing_time", "baseline", "offsets"):
            if other and getattr(self, name) is None and getattr(other, name) is not None:
                setattr(self, name, getattr(other, name))
                self.source = other.source if self.source == "none" else self.source
        self.n9999 = self.n9999 or bool(other and other.n9999 and self.baseline is None)
        return self


def _iso(stamp: str) -> str:
    day, time = stamp.upper().split("T")
    time = time.zfill(6)  # BigEarthNet v1 writes 93020 for 09:30:20
    return f"{day[:4]}-{day[4:6]}-{day[6:]}T{time[:2]}:{time[2:4]}:{time[4:]}"


def _parse_name(name: str, source: str = "product name") -> _Meta | None:
    """Level, sensing time, tile and baseline from an ESA product name found in ``name``."""
    if (m := _PRODUCT_RE.search(name)) is None:
        return None
    level, stamp, nbase, tile = m.groups()
    meta = _Meta(level=level.upper(), sensing_time=_iso(stamp), source=source)
    if nbase is not None:
        meta.product_id = re.sub(r"\.(SAFE|zip)$", "", name[m.start() :], flags=re.I)
        meta.tile = tile.upper()
        meta.n9999 = nbase == "9999"
        meta.baseline = None if meta.n9999 else f"{nbase[:2]}.{nbase[2:]}"
    return meta


def _parse_mtd(xml: bytes, source: str) -> _Meta:
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
    meta = _Meta(source=source).fill(_parse_name(uri) if uri else None)
    level = texts.get("PROCESSING_LEVEL", "") + root.tag
    meta.level = "L2A" if "2A" in level else "L1C" if "1C" in level else meta.level
    meta.sensing_time = texts.get("PRODUCT_START_TIME", meta.sensing_time)
    meta.baseline = texts.get("PROCESSING_BASELINE", meta.baseline)
    quant = texts.get("BOA_QUANTIFICATION_VALUE") or texts.get("QUANTIFICATION_VALUE")
    meta.quantification = float(quant) if quant else None
    meta.offsets = offsets
    return meta


def _needs_offset(baseline: str) -> bool:
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


# --- band files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    band: str  # 'B02', ..., or one of MASKS
    claimed: int | None  # resolution named in the file name ('_20m')
    rel: str  # POSIX path relative to what was listed
    gdal: str


def _stem(name: str) -> str:
    while Path(name).suffix.lower() in RASTER_SUFFIXES:
        name = name[: -len(Path(name).suffix)]
    return name


def _classify(rel: str, gdal: str) -> _Candidate | None:
    """What a file is, from its name: a band, the SCL, a Major-TOM cloud mask, or nothing."""
    name = rel.rsplit("/", 1)[-1]
    stem = _stem(name)
    if name.startswith(".") or stem == name:
        return None
    if stem.lower() == "cloud_mask":
        return _Candidate("CLOUD", None, rel, gdal)
    if stem.upper().startswith("MSK_") or "_MSK_" in stem.upper():
        return None  # detector / quality masks carry band ids but are not bands
    band = _token_band(stem, last=True)
    res = list(_TOKEN_RE.finditer(stem))[-1].group(2) if band else None
    return _Candidate(band, int(res) if res else None, rel, gdal) if band else None


def _token_band(text: str, last: bool = False) -> str | None:
    """The band id in ``text`` ('B4', 'B04 (Red)', '..._B8A_20m', 'SCL'); the last one if ``last``."""
    tokens = list(_TOKEN_RE.finditer(text.strip()))
    if not tokens or (len(tokens) > 1 and not last):
        return None
    token = tokens[-1].group(1).upper()
    try:
        return token if token == "SCL" else tables.normalize_band_name(token)
    except LandcoverError:
        return None  # 'B00', 'B13'


def _read_band(band: str, path: str, index: int = 1) -> BandFile:
    """Open ``path`` once for its grid and its last pixel (where a truncated file fails)."""
    try:
        with rasterio.open(path) as ds:
            ds.read(index, window=Window(ds.width - 1, ds.height - 1, 1, 1))
            crs = ds.crs.to_string() if ds.crs else None
            grid = (float(ds.res[0]), crs, ds.width, ds.height, tuple(ds.bounds))
            return BandFile(band, path, index, *grid, ds.dtypes[index - 1], ds.nodata)
    except RasterioError as exc:
        raise CorruptFileError(
            f"cannot read {path} ({exc}); the file is truncated or not a raster: re-download it"
        ) from exc


def _mismatch(where: str, what: str, files: Iterable[str]) -> ProductMismatchError:
    return ProductMismatchError(
        f"{where} mixes files of different products ({what}): {'; '.join(files)}; "
        "put each product in its own folder and point at one of them"
    )


def _assemble(cands: list[_Candidate], where: str) -> dict[str, BandFile]:
    """One opened file per band (ESA order) and per mask; raises on mixed products."""
    for regex, what in ((_TILE_RE, "tile"), (_DATE_RE, "date")):
        seen: dict[str, str] = {}
        for c in cands:
            if m := regex.search(_stem(c.rel.rsplit("/", 1)[-1])):
                seen.setdefault(m.group(1).upper(), c.rel)
        if len(seen) > 1:
            raise _mismatch(where, f"{what}s {', '.join(sorted(seen))}", sorted(seen.values()))
    native = {b.name: b.resolution for b in tables.sentinel2_bands().values()} | {"SCL": 20}
    files: dict[str, BandFile] = {}
    for band in [*tables.sentinel2_bands(), *MASKS]:
        group = [c for c in cands if c.band == band]
        if not group:
            continue
        # the file at the band's native resolution if one is named so, else the finest named one
        best = min(group, key=lambda c: (c.claimed != native.get(c.band), c.claimed or 0, c.rel))
        if twins := [c.rel for c in group if c.claimed == best.claimed and c is not best]:
            raise _mismatch(where, f"{band} twice", [best.rel, *twins])
        files[band] = _read_band(band, best.gdal)
    grids = list(files.values())
    if len({f.crs for f in grids}) > 1:
        examples = {f.crs: f"{f.path} ({f.crs})" for f in grids}
        raise _mismatch(where, "CRSs", examples.values())
    tolerance = max(f.resolution for f in grids)
    for f in grids[1:]:
        if max(abs(a - b) for a, b in zip(f.bounds, grids[0].bounds, strict=True)) > tolerance:
            raise _mismatch(where, "areas", [grids[0].path, f.path])
    return files


def _walk(root: Path, max_depth: int) -> list[str]:
    """Files under ``root`` (POSIX, relative), at most ``max_depth`` folders deep."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        keep = len(rel.parts) < max_depth
        dirnames[:] = sorted(d for d in dirnames if keep and not d.startswith(".") and d != "QI_DATA")
        found += [(rel / n).as_posix() for n in sorted(filenames)]
        if len(found) > _MAX_FILES:
            raise InputFormatError(
                f"{root} holds more than {_MAX_FILES} files: point at one product, not an archive"
            )
    return found


# --- kinds ---------------------------------------------------------------------------------------


def _no_bands(path: Path, found: Iterable[str]) -> InputFormatError:
    listing = ", ".join(sorted(found)[:12]) or "nothing"
    return InputFormatError(
        f"{path} has no Sentinel-2 band files (found: {listing}); point at a SAFE product, a folder "
        "of band files named like T33UUU_20170216T102101_B04.jp2 or B04.tif, or a multi-band GeoTIFF"
    )


def _finish(path: Path, kind: str, files: dict[str, BandFile], meta: _Meta, named_res: bool) -> Product:
    """The Product: level, tile, date from file names if still unknown, and the offsets."""
    scl, cloud = files.pop("SCL", None), files.pop("CLOUD", None)
    if not files:
        raise _no_bands(path, [Path(f.path).name for f in (scl, cloud) if f])
    first = _stem(Path(next(iter(files.values())).path).name)
    tile, date = _TILE_RE.search(first), _DATE_RE.search(first)
    names = _Meta(source="file names", tile=tile.group(1).upper() if tile else None)
    meta.fill(replace(names, sensing_time=_iso(date.group(1)) if date else None))
    level = meta.level or ("L2A" if scl or named_res else "L1C" if "B10" in files else "unknown")
    warnings: list[str] = []
    offsets: dict[str, float] = {}
    if meta.offsets is not None:
        offsets = {b: v for b, v in meta.offsets.items() if b in files}
    elif meta.baseline is not None and _needs_offset(meta.baseline):
        offsets = dict.fromkeys(files, BASELINE_OFFSET)
        warnings.append(
            f"processing baseline {meta.baseline} but no offset in the metadata: "
            f"assuming the documented {BASELINE_OFFSET:g}"
        )
    elif meta.n9999 and (meta.sensing_time or "") >= "2022-01-25":
        warnings.append("processing baseline N9999 (unknown) of a 2022+ scene: no radiometric offset applied")
    elif meta.baseline is None and not meta.n9999:
        warnings.append("no metadata: no radiometric offset applied")
    derived = re.match(r"T\d{2}[A-Z]{3}_\d{8}T\d{6}", first.upper())
    return Product(
        path=str(path), product_id=meta.product_id or (derived.group(0) if derived else _stem(path.name)),
        kind=kind, level=level, bands=files, scl=scl, cloud_mask=cloud, tile=meta.tile,
        sensing_time=meta.sensing_time, processing_baseline=meta.baseline, offsets=offsets,
        quantification=meta.quantification or 10000.0, metadata_source=meta.source, warnings=warnings,
    )


def _open_listing(
    path: Path, kind: str, files: list[str], read: Callable[[str], bytes], to_gdal: Callable[[str], str],
    names: list[str],
) -> Product:
    """A SAFE product or a folder of band files, given the list of its files (folder or zip)."""
    img = [f for f in files if re.search(r"(^|/)IMG_DATA/", f)]
    granules = sorted({re.sub(r"(^|.*/)([^/]+)/IMG_DATA/.*", r"\2", f) for f in img if "GRANULE/" in f})
    if len(granules) > 1:
        raise ProductMismatchError(
            f"{path} holds {len(granules)} granules ({', '.join(granules)}); "
            "point at one of its GRANULE/<granule> folders"
        )
    cands = [c for f in (img or files) if (c := _classify(f, to_gdal(f)))]
    top = [c for c in cands if "/" not in c.rel]
    if any(c.band not in MASKS for c in top):
        cands = top  # band files right in the folder: ignore sub-folders
    if not any(c.band not in MASKS for c in cands):
        raise _no_bands(path, files)
    meta = _Meta()
    for f in files:
        if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", f):
            meta = _parse_mtd(read(f), f.rsplit("/", 1)[-1])
        elif f.rsplit("/", 1)[-1] == "original_folder_name.txt":
            names.insert(0, read(f).decode().strip())
    for name in names:
        meta.fill(_parse_name(name))
    for name in [*granules, *names]:  # 'L2A_T31TCJ_A038658_20221116T105603'
        if m := re.match(r"(L1C|L2A)_T\d{2}[A-Z]{3}_", name):
            meta.fill(_Meta(level=m.group(1), source="granule name"))
    return _finish(path, kind, _assemble(cands, str(path)), meta, any(c.claimed for c in cands))


def _open_zip(path: Path) -> Product:
    try:
        with zipfile.ZipFile(path) as zf:
            files = [m for m in zf.namelist() if not m.endswith("/")]
            texts = {m: zf.read(m) for m in files if re.search(r"(MTD_MSIL..\.xml|\.txt)$", m)}
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptFileError(f"cannot read {path} ({exc}); the zip is damaged: re-download it") from exc
    prefix = f"/vsizip/{path.resolve().as_posix()}/"
    kind = "safe" if any("GRANULE/" in f for f in files) else "folder"
    names = [*sorted({f.split("/")[0] for f in files if "/" in f}), path.name]
    return _open_listing(path, kind, files, texts.__getitem__, lambda f: prefix + f, names)


def _open_dir(path: Path, user_path: Path) -> Product:
    safe = path.suffix.upper() == ".SAFE" or (path / "GRANULE").is_dir()
    granule = path.parent.name == "GRANULE" and (path / "IMG_DATA").is_dir()
    root = path.parent.parent if granule else path
    files = [] if safe or granule else _walk(path, 0)  # band files right in the folder, else deeper
    if not any((c := _classify(f, "")) and c.band not in MASKS for f in files):
        files = _walk(path, 6 if safe or granule else 4)
    if granule:  # read the product's metadata beside GRANULE/
        files += [f"../../{p.name}" for p in root.glob("*") if p.is_file()]
    names = [p.name for p in (root, *list(root.parents)[:3])] + ([path.name] if granule else [])
    kind = "safe" if safe or granule else "folder"
    read, to_gdal = (lambda f: (path / f).read_bytes()), (lambda f: str(path / f))
    return _open_listing(user_path, kind, files, read, to_gdal, names)


def _open_multiband(path: Path, bands: Sequence[str] | None) -> tuple[Product, bool]:
    """One raster file. Returns the product and whether ``bands`` gave the band order."""
    try:
        with rasterio.open(path) as ds:
            names, count = [_token_band(d or "") for d in ds.descriptions], ds.count
    except RasterioError as exc:
        raise CorruptFileError(
            f"cannot read {path} ({exc}); the file is truncated or not a raster: re-download it"
        ) from exc
    by_order = None in names or len(set(names)) != count
    if by_order and count == 1 and (single := _classify(path.name, str(path))):
        names, by_order = [single.band], False
    elif by_order and bands is not None and len(bands) == count:
        names = [tables.normalize_band_name(b) for b in bands]
        if len(set(names)) != count:
            raise InputFormatError(
                f"--bands names a band twice ({','.join(bands)}); name each of the {count} bands "
                f"of {path} once, in file order"
            )
    elif by_order:
        given = f", but --bands names {len(bands)}" if bands is not None else ""
        raise InputFormatError(
            f"{path} has {count} bands without band names{given}; pass --bands with all {count} "
            "band names in file order, e.g. --bands B01,B02,B03,..."
        )
    read = {n: _read_band(str(n), str(path), i) for i, n in enumerate(names, 1)}
    order = [*tables.sentinel2_bands(), *MASKS]
    files = {b: read[b] for b in order if b in read}
    meta = _Meta().fill(_parse_name(path.name))
    return _finish(path, "multiband", files, meta, False), by_order


def open_product(path: str | Path, bands: Sequence[str] | None = None) -> Product:
    """Discover the Sentinel-2 input at ``path`` (SAFE folder or zip, band folder, raster, patch).

    With ``bands`` the product is restricted to them (:meth:`Product.select`); for a multi-band
    file without band names, ``bands`` names every band in file order. Without ``bands`` every
    band found is kept: ``product.select(None)`` then requires the level's default bands.
    """
    user_path = Path(path).expanduser()
    if not user_path.exists():
        raise InputFormatError(
            f"{user_path} does not exist; check the path (a SAFE folder or .zip, a folder of band "
            "files, or a GeoTIFF)"
        )
    p = user_path.parent if user_path.name.upper().startswith("MTD_MSIL") else user_path
    while p.is_dir() and not (p.suffix.upper() == ".SAFE" or (p / "GRANULE").is_dir()):
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
        subdirs = [e for e in entries if e.is_dir()]
        if len(subdirs) != 1 or any(e.is_file() and _classify(e.name, "") for e in entries):
            break
        p = subdirs[0]  # a folder holding just one product folder (Major-TOM cell, unzipped SAFE)
    if p.is_file() and p.suffix.lower() == ".zip":
        product = _open_zip(p)
    elif p.is_file() and _stem(p.name) != p.name:
        product, by_order = _open_multiband(p, bands)
        if by_order:  # ``bands`` named the file's bands: all are kept, in ESA order
            return product
    elif p.is_file():
        raise InputFormatError(
            f"{p} is not a Sentinel-2 input; point at a .SAFE folder or .zip, a folder of band "
            "files, or a .tif/.jp2 raster"
        )
    elif is_bigearthnet_patch(p):
        product = _open_bigearthnet(p)
    else:
        product = _open_dir(p, user_path)
    return product if bands is None else product.select(bands)


# --- BigEarthNet ---------------------------------------------------------------------------------


def _ben_files(patch: Path) -> list[Path]:
    prefix = patch.name + "_B"
    return sorted(p for p in patch.glob(f"{prefix}*") if p.suffix.lower() in (".tif", ".tiff"))


def is_bigearthnet_patch(path: str | Path) -> bool:
    """Whether ``path`` is a BigEarthNet v1/v2 patch folder: ``<patch>/<patch>_B??.tif[f]``."""
    p = Path(path)
    return bool(_BEN_RE.fullmatch(p.name)) and p.is_dir() and bool(_ben_files(p))


def _open_bigearthnet(path: Path) -> Product:
    cands = [c for f in _ben_files(path) if (c := _classify(f.name, str(f)))]
    meta = _Meta(product_id=path.name, source="product name").fill(_parse_name(path.name))
    labels_json = path / f"{path.name}_labels_metadata.json"
    if labels_json.is_file():  # v1: its L1C source product names the tile and the baseline
        source = str(json.loads(labels_json.read_text()).get("tile_source", ""))
        meta.fill(_parse_name(source, labels_json.name))
    return _finish(path, "bigearthnet", _assemble(cands, str(path)), meta, False)


def find_bigearthnet_patches(root: str | Path) -> list[Path]:
    """Every BigEarthNet patch folder under ``root`` (v1 ``root/<patch>``, v2 ``root/<tile>/<patch>``).

    Folders are recognised by their patch names (``<product>_<row>_<col>``), without listing them.
    """
    top = Path(root).expanduser()
    if not top.is_dir():
        raise InputFormatError(f"{top} is not a folder; point at a folder of BigEarthNet patches")
    if is_bigearthnet_patch(top):
        return [top]
    patches, stack = [], [top]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            subdirs = [Path(e.path) for e in entries if e.is_dir() and "Reference_Maps" not in e.name]
        patches += [d for d in subdirs if _BEN_RE.fullmatch(d.name)]
        stack += [d for d in subdirs if not _BEN_RE.fullmatch(d.name)]
    return sorted(patches)


def bigearthnet_labels(metadata_parquet: str | Path, patch_ids: Sequence[str]) -> dict[str, list[str]]:
    """19-class label names of ``patch_ids`` from the official v2 ``metadata.parquet`` (one filtered read)."""
    import pyarrow.parquet as pq

    try:
        wanted = [("patch_id", "in", list(patch_ids))]
        table = pq.read_table(metadata_parquet, columns=["patch_id", "labels"], filters=wanted)
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise DatasetError(
            f"cannot read labels from {metadata_parquet} ({exc}); "
            "pass the official BigEarthNet v2 metadata.parquet"
        ) from exc
    labels = {row["patch_id"]: list(row["labels"]) for row in table.to_pylist()}
    known = set(tables.nomenclature("ben19").class_names)
    for pid, names in labels.items():
        if unknown := sorted(set(names) - known):
            raise UnknownCodeError(
                f"labels {unknown} of {pid} in {metadata_parquet} are not BigEarthNet 19-class names "
                "(data_catalog/ben19.csv); use the official BigEarthNet v2 metadata.parquet"
            )
    return labels


def bigearthnet_patch_labels(patch_dir: str | Path, metadata_parquet: str | Path | None = None) -> list[str]:
    """A patch's label names: v1 CLC level-3 names (its JSON), v2 19-class names (metadata.parquet).

    Without ``metadata_parquet``, the v1 JSON is used, else a ``metadata.parquet`` in a parent folder.
    """
    patch = Path(patch_dir)
    labels_json = patch / f"{patch.name}_labels_metadata.json"
    if metadata_parquet is None and labels_json.is_file():
        names = [str(n) for n in json.loads(labels_json.read_text()).get("labels", [])]
        known = {c.ben43_name for c in tables.corine_classes() if c.ben43_name}
        if unknown := sorted(set(names) - known):
            raise UnknownCodeError(
                f"labels {unknown} in {labels_json} are not BigEarthNet v1 names "
                "(data_catalog/corine_legend.csv, ben43_name); re-download the patch"
            )
        return names
    if metadata_parquet is None:
        found = [p / "metadata.parquet" for p in list(patch.parents)[:4]]
        found = [p for p in found if p.is_file()]
        if not found:
            raise DatasetError(
                f"no labels for {patch}: no {labels_json.name} and no metadata.parquet in its parent "
                "folders; pass the BigEarthNet v2 metadata.parquet"
            )
        metadata_parquet = found[0]
    labels = bigearthnet_labels(metadata_parquet, [patch.name])
    if patch.name not in labels:
        raise DatasetError(
            f"patch {patch.name} is not in {metadata_parquet}; "
            "pass the metadata.parquet of its BigEarthNet version"
        )
    return labels[patch.name]


def bigearthnet_reference_map(patch_dir: str | Path) -> Path | None:
    """The v2 pixel reference map ``Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif``, if any.

    ``Reference_Maps`` (or ``BigEarthNet-Reference_Maps``) is looked for beside the patch's parents.
    """
    patch = Path(patch_dir)
    name = f"{patch.name}_reference_map.tif"
    for ancestor in list(patch.parents)[:4]:
        for folder in ("Reference_Maps", "BigEarthNet-Reference_Maps"):
            for sub in (Path(patch.parent.name) / patch.name, Path(patch.name)):
                if (candidate := ancestor / folder / sub / name).is_file():
                    return candidate
    return None
