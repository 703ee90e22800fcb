"""BigEarthNet patches as ingest scenes: a mosaic per group of touching patches of one product.

:func:`open_inputs` turns what ingest is pointed at into products. The v2 patches of one product
(same tile and date, e.g. ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP``) that touch each other
(8-neighbourhood) become ONE scene: a :class:`BigEarthNetProduct` whose band files are GDAL VRTs
mosaicking the patches on the union of their extents (holes read as no data, 0), written in a
temporary folder removed when the block ends. Its id is the product (``<product>``), or, when the
product's patches form several separate groups, ``<first patch>_mosaic`` for each group. A v1
patch (its name has no tile), or a v2 patch touching no other, is a scene of its own (id: the
patch name). Reference maps are mosaicked the same way and become the scene's pixel labels.
:func:`patch_fields` gives a catalog tile the patch it coincides with (tiles of 120 px at 10 m).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import rasterio.windows
from rasterio.windows import Window

from landcover import nomenclature as tables
from landcover.errors import ConfigError, MissingBandError, ProductMismatchError
from landcover.io.grid import Grid
from landcover.sources.bigearthnet import (
    Patch,
    bigearthnet_reference_map,
    find_bigearthnet_patches,
    label_warnings,
    read_patch_labels,
)
from landcover.sources.mosaic import raster_header, write_mosaic_vrt
from landcover.sources.sentinel2 import BEN_PATCH_RE, Product, is_bigearthnet_patch, open_product, product_grid_band
from landcover.sources.stac import open_stac
from landcover.sources.stac_refs import is_stac_input

_TILE_PREFIX = re.compile(r"_T\d{2}[A-Z]{3}$", re.I)  # v2 prefixes name the tile; v1 ones do not


@dataclass
class BigEarthNetProduct(Product):
    """A BigEarthNet scene: one patch, or a mosaic of the patches of one product (VRT band files)."""

    patches: dict[tuple[float, float], Patch] = field(default_factory=dict)  # by upper-left corner
    reference_map: str | None = None  # CLC level-3 codes: the patch's reference map, or a VRT mosaic


def _band_files(patch: Path) -> dict[str, Path]:
    """``{'B02': <patch>/<patch>_B02.tif, ...}`` from one listing of the patch folder."""
    files = {}
    with os.scandir(patch) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            if dot and suffix.lower() in ("tif", "tiff") and stem.startswith(f"{patch.name}_"):
                files[stem[len(patch.name) + 1 :].upper()] = Path(entry.path)
    return files


def _as_ben(product: Product, **extra: Any) -> BigEarthNetProduct:
    return BigEarthNetProduct(**{f.name: getattr(product, f.name) for f in fields(Product)}, **extra)


def _corner(bounds: Sequence[float]) -> tuple[float, float]:
    return (round(bounds[0], 2), round(bounds[3], 2))


def _open_patch(patch: Path, bands: Sequence[str] | None, labels: Patch | None) -> BigEarthNetProduct:
    """One patch folder as its own scene (band files used as they are)."""
    product = open_product(patch, bands)
    bounds = product_grid_band(product).bounds
    info = replace(labels or Patch(patch.name, bounds), bounds=bounds)
    ref = bigearthnet_reference_map(patch)
    return _as_ben(product, patches={_corner(bounds): info}, reference_map=str(ref) if ref else None)


def _open_mosaic(
    prefix: str, patches: Sequence[Path], bands: Sequence[str] | None, labels: dict[str, Patch], work: Path
) -> BigEarthNetProduct:
    """Patches of one product as one scene ``prefix``: a VRT per band on the union of the patches."""
    first = open_product(patches[0], bands)
    finest = product_grid_band(first)
    size = (finest.bounds[2] - finest.bounds[0], finest.bounds[3] - finest.bounds[1])
    files, extents = {}, {}
    for patch in patches:
        files[patch] = _band_files(patch)
        if missing := [b for b in first.bands if b not in files[patch]]:
            raise MissingBandError(
                f"{patch} has no band file for {', '.join(missing)}, which {patches[0].name} has; "
                "re-download the patch or leave it out"
            )
        bounds, res, crs, _ = raster_header(files[patch][finest.band])
        if (crs, res) != (finest.crs, finest.resolution) or (bounds[2] - bounds[0], bounds[3] - bounds[1]) != size:
            raise ProductMismatchError(
                f"{patch.name} ({crs}, {res:g} m, {bounds}) does not match {patches[0].name} "
                f"({finest.crs}, {finest.resolution:g} m, {finest.bounds}); ingest them separately"
            )
        extents[patch] = bounds
    corners: dict[tuple[float, float], Path] = {}
    for patch, bounds in extents.items():
        if (twin := corners.setdefault(_corner(bounds), patch)) is not patch:
            raise ProductMismatchError(f"{twin} and {patch} cover the same area; give each patch once")
    union = (
        min(b[0] for b in extents.values()),
        min(b[1] for b in extents.values()),
        max(b[2] for b in extents.values()),
        max(b[3] for b in extents.values()),
    )
    folder = work / prefix
    vrt_bands = {}
    for band, bf in first.bands.items():
        sources = [(files[p][band], extents[p]) for p in patches]
        vrt = folder / f"{band}.vrt"
        width, height = write_mosaic_vrt(vrt, sources, union, bf.resolution, str(finest.crs), bf.dtype, 0)
        vrt_bands[band] = replace(bf, path=str(vrt), index=1, width=width, height=height, bounds=union, nodata=0.0)
    reference = None
    if refs := [(r, raster_header(r)) for p in patches if (r := bigearthnet_reference_map(p))]:
        reference = folder / f"{prefix}_reference_map.vrt"
        _, res, crs, dtype = refs[0][1]
        write_mosaic_vrt(reference, [(r, h[0]) for r, h in refs], union, res, str(crs), dtype)
    infos = {_corner(b): replace(labels.get(p.name) or Patch(p.name, b), bounds=b) for p, b in extents.items()}
    product = replace(
        first,
        path=os.path.commonpath([str(p) for p in patches]),
        product_id=prefix,
        bands=vrt_bands,
        warnings=list(first.warnings),
    )
    return _as_ben(product, patches=infos, reference_map=str(reference) if reference else None)


def _touching(patches: Sequence[Path]) -> list[list[Path]]:
    """``patches`` of one product in groups that touch (edges or corners), each in name order."""
    cells: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for patch in patches:
        files = _band_files(patch)
        if not files:
            raise MissingBandError(
                f"{patch} holds no band file ({patch.name}_B02.tif, ...); re-download the patch or leave it out"
            )
        left, _, right, top = raster_header(files.get("B02") or min(files.values()))[0]
        cells[(round(left / (right - left)), round(top / (right - left)))].append(patch)
    groups, seen = [], set()
    for start in cells:
        if start in seen:
            continue
        seen.add(start)
        todo, members = [start], []
        while todo:
            x, y = todo.pop()
            members += cells[(x, y)]
            for near in ((x + dx, y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)):
                if near in cells and near not in seen:
                    seen.add(near)
                    todo.append(near)
        groups.append(sorted(members, key=lambda p: p.name))
    return sorted(groups, key=lambda g: g[0].name)


def _patches_in(path: Path) -> list[Path]:
    """The BigEarthNet patches at ``path`` (a patch or a folder of them); [] for other inputs."""
    if is_bigearthnet_patch(path):
        return [path]
    if not path.is_dir() or path.suffix.upper() == ".SAFE" or (path / "GRANULE").is_dir():
        return []
    return find_bigearthnet_patches(path)


def open_bigearthnet(
    patches: Sequence[Path],
    bands: Sequence[str] | None,
    work: Path,
    *,
    nomenclature: str = "level3",
    metadata: Path | None = None,
) -> list[BigEarthNetProduct]:
    """Scenes of BigEarthNet ``patches``: a mosaic per group of touching v2 patches of one product,
    a scene per v1 patch or lone v2 patch (see the module docstring for their ids).

    Mosaic VRTs are written under ``work``; patch labels are converted to ``nomenclature``.
    """
    by_name: dict[str, Path] = {}
    for patch in patches:
        if (seen := by_name.setdefault(patch.name, patch)).resolve() != patch.resolve():
            raise ConfigError(f"patch {patch.name} is given twice ({seen} and {patch}); give each patch once")
    groups: dict[str, list[Path]] = defaultdict(list)
    for name, patch in sorted(by_name.items()):
        prefix = BEN_PATCH_RE.fullmatch(name).group(1)  # type: ignore[union-attr]
        groups[prefix if _TILE_PREFIX.search(prefix) else name].append(patch)
    nom = tables.nomenclature(nomenclature)
    labels, searched = read_patch_labels(list(by_name.values()), nom, metadata)
    products = []
    for key, group in sorted(groups.items()):
        parts = _touching(group) if len(group) > 1 else [group]
        for part in parts:
            if len(part) == 1:
                product = _open_patch(part[0], bands, labels.get(part[0].name))
            else:
                scene = key if len(parts) == 1 else f"{part[0].name}_mosaic"
                product = _open_mosaic(scene, part, bands, labels, work)
            product.warnings += label_warnings([p.name for p in part], labels, searched, nom)
            products.append(product)
    return products


@contextlib.contextmanager
def open_inputs(
    inputs: Sequence[str | Path],
    bands: Sequence[str] | None = None,
    *,
    nomenclature: str = "level3",
    metadata: str | Path | None = None,
    sign: Callable[[str], str] | None = None,
) -> Iterator[list[Product]]:
    """Products for ingest ``inputs``: Sentinel-2 products as they are, a STAC document as one product per
    item (``sign`` rewrites its http(s) hrefs, :func:`landcover.sources.stac.open_stac`), BigEarthNet
    patches and folders of patches (any mix) as scenes (:func:`open_bigearthnet`), after the other inputs.

    Mosaic VRTs live in a temporary folder that is removed when the block ends.
    """
    products: list[Product] = []
    patches: list[Path] = []
    for item in inputs:
        if is_stac_input(item):
            products += [p if bands is None else p.select(bands) for p in open_stac(item, sign=sign)]
            continue
        path = Path(item).expanduser()
        found = _patches_in(path)
        if found:
            patches += found
        else:
            products.append(open_product(path, bands))
    work = Path(tempfile.mkdtemp(prefix="landcover-bigearthnet-")) if patches else None
    try:
        if work is not None:
            meta = Path(metadata).expanduser() if metadata is not None else None
            products += open_bigearthnet(patches, bands, work, nomenclature=nomenclature, metadata=meta)
        yield products
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def patch_fields(product: Product, grid: Grid, window: Window) -> dict[str, Any]:
    """Catalog columns of the BigEarthNet patch that the tile ``window`` coincides with ({} if none)."""
    if not isinstance(product, BigEarthNetProduct):
        return {}
    bounds = rasterio.windows.bounds(window, grid.transform)
    patch = product.patches.get(_corner(bounds))
    if patch is None or max(abs(a - b) for a, b in zip(patch.bounds, bounds, strict=True)) > grid.res[0] / 100:
        return {}
    return {
        "patch_id": patch.patch_id,
        "patch_labels": patch.label_ids,
        "patch_label_names": patch.label_names,
        "official_split": patch.official_split,
    }
