"""Find the Sentinel-2 input a user points at, and what is known about it.

:func:`open_product` accepts a SAFE product (folder or ``.zip``), a folder of per-band files
(ESA names, Major-TOM ``B04.tif``, ``*.jp2.TIF`` exports), one multi-band GeoTIFF, or a
BigEarthNet patch folder, or a STAC item (:mod:`landcover.sources.stac`). It returns a
:class:`~landcover.sources.product.Product`: one
:class:`~landcover.sources.band_files.BandFile` per spectral band (a GDAL path, band index, native
grid), the SCL or cloud mask, and the radiometric metadata (processing baseline, additive offset,
quantification). Each raster is opened once, for its header and its last pixel (which catches
truncated downloads); the pixels are read elsewhere. Telling which file is which band, by its
name, is :mod:`landcover.sources.band_files`' part.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from landcover import nomenclature as tables
from landcover.errors import CorruptFileError, InputFormatError, ProductMismatchError
from landcover.sources.band_files import (
    DATE_RE,
    MASKS,
    TILE_RE,
    BandFile,
    assemble,
    classify,
    file_stem,
    read_band,
    token_band,
    walk_files,
)
from landcover.sources.product import Product as Product  # re-exported: the type lives in product.py
from landcover.sources.product import product_grid_band as product_grid_band
from landcover.sources.s2meta import Meta, iso_time, needs_offset, parse_mtd, parse_name
from landcover.sources.stac_refs import is_stac_input

BASELINE_OFFSET = -1000.0
"""DN offset of processing baseline >= 04.00 (from 25 January 2022): reflectance = (DN + offset) / 10000."""

BEN_PATCH_RE = re.compile(r"(S2[A-D]_MSIL2A_\d{8}T\d{5,6}(?:_N\d{4}_R\d{3}_T\d{2}[A-Z]{3})?)_(\d+)_(\d+)")
"""A BigEarthNet patch name: ``<product prefix>_<row>_<col>`` (v1 prefixes lack baseline and tile)."""


# --- kinds ---------------------------------------------------------------------------------------


def _no_bands(path: Path, found: Iterable[str]) -> InputFormatError:
    listing = ", ".join(sorted(found)[:12]) or "nothing"
    return InputFormatError(
        f"{path} has no Sentinel-2 band files (found: {listing}); point at a SAFE product, a folder "
        "of band files named like T33UUU_20170216T102101_B04.jp2 or B04.tif, or a multi-band GeoTIFF"
    )


def _finish(path: Path, kind: str, files: dict[str, BandFile], meta: Meta, named_res: bool) -> Product:
    """The Product: level, tile, date from file names if still unknown, and the offsets."""
    scl, cloud = files.pop("SCL", None), files.pop("CLOUD", None)
    if not files:
        raise _no_bands(path, [Path(f.path).name for f in (scl, cloud) if f])
    first = file_stem(Path(next(iter(files.values())).path).name)
    tile, date = TILE_RE.search(first), DATE_RE.search(first)
    names = Meta(source="file names", tile=tile.group(1).upper() if tile else None)
    meta.fill(replace(names, sensing_time=iso_time(date.group(1)) if date else None))
    level = meta.level or ("L2A" if scl or named_res else "L1C" if "B10" in files else "unknown")
    warnings: list[str] = []
    offsets: dict[str, float] = {}
    if meta.offsets is not None:
        offsets = {b: v for b, v in meta.offsets.items() if b in files}
    elif meta.baseline is not None and needs_offset(meta.baseline):
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
        path=str(path),
        product_id=meta.product_id or (derived.group(0) if derived else file_stem(path.name)),
        kind=kind,
        level=level,
        bands=files,
        scl=scl,
        cloud_mask=cloud,
        tile=meta.tile,
        sensing_time=meta.sensing_time,
        processing_baseline=meta.baseline,
        offsets=offsets,
        quantification=meta.quantification or 10000.0,
        metadata_source=meta.source,
        warnings=warnings,
    )


def _open_listing(
    path: Path,
    kind: str,
    files: list[str],
    read: Callable[[str], bytes],
    to_gdal: Callable[[str], str],
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
    cands = [c for f in (img or files) if (c := classify(f, to_gdal(f)))]
    top = [c for c in cands if "/" not in c.rel]
    if any(c.band not in MASKS for c in top):
        cands = top  # band files right in the folder: ignore sub-folders
    if not any(c.band not in MASKS for c in cands):
        raise _no_bands(path, files)
    meta = Meta()
    for f in files:
        if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", f):
            meta = parse_mtd(read(f), f.rsplit("/", 1)[-1])
        elif f.rsplit("/", 1)[-1] == "original_folder_name.txt":
            names.insert(0, read(f).decode().strip())
    for name in names:
        meta.fill(parse_name(name))
    for name in [*granules, *names]:  # 'L2A_T31TCJ_A038658_20221116T105603'
        if m := re.match(r"(L1C|L2A)_T\d{2}[A-Z]{3}_", name):
            meta.fill(Meta(level=m.group(1), source="granule name"))
    return _finish(path, kind, assemble(cands, str(path)), meta, any(c.claimed for c in cands))


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
    files = [] if safe or granule else walk_files(path, 0)  # band files right in the folder, else deeper
    if not any((c := classify(f, "")) and c.band not in MASKS for f in files):
        files = walk_files(path, 6 if safe or granule else 4)
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
            names, count = [token_band(d or "") for d in ds.descriptions], ds.count
    except RasterioError as exc:
        raise CorruptFileError(
            f"cannot read {path} ({exc}); the file is truncated or not a raster: re-download it"
        ) from exc
    by_order = None in names or len(set(names)) != count
    if by_order and count == 1 and (single := classify(path.name, str(path))):
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
    read = {n: read_band(str(n), str(path), i) for i, n in enumerate(names, 1)}
    order = [*tables.sentinel2_bands(), *MASKS]
    files = {b: read[b] for b in order if b in read}
    meta = Meta().fill(parse_name(path.name))
    return _finish(path, "multiband", files, meta, False), by_order


def open_product(
    path: str | Path, bands: Sequence[str] | None = None, *, sign: Callable[[str], str] | None = None
) -> Product:
    """Discover the Sentinel-2 input at ``path`` (SAFE folder or zip, band folder, raster, patch, STAC item).

    A STAC document holding one item, or ``doc.json#<item id>``, is read by
    :func:`landcover.sources.stac.open_stac` (``sign`` rewrites its http(s) hrefs); a document of several
    items is an error here (ingest and predict expand documents into their items).

    With ``bands`` the product is restricted to them (:meth:`Product.select`); for a multi-band
    file without band names, ``bands`` names every band in file order. Without ``bands`` every
    band found is kept: ``product.select(None)`` then requires the level's default bands.
    """
    if is_stac_input(path):
        product = _open_stac_item(path, sign)
        return product if bands is None else product.select(bands)
    user_path = Path(path).expanduser()
    if not user_path.exists():
        raise InputFormatError(
            f"{user_path} does not exist; check the path (a SAFE folder or .zip, a folder of band files, or a GeoTIFF)"
        )
    p = user_path.parent if user_path.name.upper().startswith("MTD_MSIL") else user_path
    while p.is_dir() and not (p.suffix.upper() == ".SAFE" or (p / "GRANULE").is_dir()):
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
        subdirs = [e for e in entries if e.is_dir()]
        if len(subdirs) != 1 or any(e.is_file() and classify(e.name, "") for e in entries):
            break
        p = subdirs[0]  # a folder holding just one product folder (Major-TOM cell, unzipped SAFE)
    if p.is_file() and p.suffix.lower() == ".zip":
        product = _open_zip(p)
    elif p.is_file() and file_stem(p.name) != p.name:
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


def _open_stac_item(path: str | Path, sign: Callable[[str], str] | None) -> Product:
    from landcover.sources.stac import open_stac

    products = open_stac(path, sign=sign)
    if len(products) > 1:
        ids = ", ".join(p.path.rpartition("#")[2] for p in products[:3])
        raise InputFormatError(
            f"{path} holds {len(products)} STAC items ({ids}, ...); name one as {path}#<item id>, "
            "or give the document to ingest/predict, which take every item"
        )
    return products[0]


# --- BigEarthNet ---------------------------------------------------------------------------------


def _ben_files(patch: Path) -> list[Path]:
    prefix = patch.name + "_B"
    return sorted(p for p in patch.glob(f"{prefix}*") if p.suffix.lower() in (".tif", ".tiff"))


def is_bigearthnet_patch(path: str | Path) -> bool:
    """Whether ``path`` is a BigEarthNet v1/v2 patch folder: ``<patch>/<patch>_B??.tif[f]``."""
    p = Path(path)
    return bool(BEN_PATCH_RE.fullmatch(p.name)) and p.is_dir() and bool(_ben_files(p))


def _open_bigearthnet(path: Path) -> Product:
    cands = [c for f in _ben_files(path) if (c := classify(f.name, str(f)))]
    meta = Meta(product_id=path.name, source="product name").fill(parse_name(path.name))
    labels_json = path / f"{path.name}_labels_metadata.json"
    if labels_json.is_file():  # v1: its L1C source product names the tile and the baseline
        source = str(json.loads(labels_json.read_text()).get("tile_source", ""))
        meta.fill(parse_name(source, labels_json.name))
    return _finish(path, "bigearthnet", assemble(cands, str(path)), meta, False)
