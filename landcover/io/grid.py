"""Raster I/O helpers shared by every stage: grids, atomic outputs, windows, class-map styling."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from landcover.errors import CorruptFileError, OutputExistsError
from landcover.io.outputs import writing
from landcover.nomenclature import IGNORE, Nomenclature

GDAL_ENV = {"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_CACHEMAX": 512, "CHECK_DISK_FREE_SPACE": "FALSE"}
"""GDAL options for landcover's own I/O, applied through ``rasterio.Env(**GDAL_ENV)``."""


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform, and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, path: str | Path) -> Grid:
        with open_raster(path) as src:
            return cls(src.crs, src.transform, src.width, src.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        return _bounds(self.transform, self.width, self.height)

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    def window_transform(self, window: Window) -> Affine:
        return rasterio.windows.transform(window, self.transform)

    def windows(self, size: int = 1024) -> Iterator[Window]:
        """Windows of ``size`` x ``size`` pixels covering the grid row by row."""
        for row in range(0, self.height, size):
            for col in range(0, self.width, size):
                yield Window(col, row, min(size, self.width - col), min(size, self.height - row))

    def to_dict(self) -> dict[str, object]:
        return {
            "crs": self.crs.to_string(),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


def open_raster(path: str | Path, mode: str = "r") -> rasterio.DatasetReader:
    """``rasterio.open`` that turns unreadable files into :class:`CorruptFileError`."""
    try:
        return rasterio.open(path, mode)
    except RasterioIOError as exc:
        if not str(path).startswith("/vsi") and not Path(path).exists():
            raise CorruptFileError(f"{path} does not exist; check the path") from exc
        raise CorruptFileError(
            f"cannot read {path} as a raster ({exc}); the file may be truncated or not a raster: "
            "download or export it again"
        ) from exc


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name next to ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary siblings of ``path`` that a killed run (SIGKILL, node failure) left.

    Call it only where this process is the one writer of ``path`` (one shard per scene).
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial{glob.escape(path.suffix)}*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``path`` only when the block completes.

    An error or interruption (Ctrl-C) removes the temporary file: nothing half-written ever
    carries the final name. A write failure (permission, full disk, also one GDAL only logged) is an
    :class:`~landcover.errors.OutputError` naming ``path``; ``needed`` (bytes, rough) is told with a full disk.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    tmp = temporary_sibling(path)
    try:
        with writing(path, needed, [tmp, Path(f"{tmp}.aux.xml")]):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`: whole or not at all."""
    with atomic_output(path, overwrite=True, needed=len(text.encode("utf-8", "surrogateescape"))) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def class_map_profile(grid: Grid, *, blocksize: int = 512) -> dict[str, object]:
    """GeoTIFF creation options for a uint8 class map (tiled, DEFLATE, no-data 255)."""
    profile: dict[str, object] = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": 1,
        "crs": grid.crs,
        "transform": grid.transform,
        "width": grid.width,
        "height": grid.height,
        "nodata": IGNORE,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "band",
    }
    if grid.width >= 16 and grid.height >= 16:
        bs = min(blocksize, 1 << max(4, (min(grid.width, grid.height)).bit_length() - 1))
        profile.update(tiled=True, blockxsize=bs, blockysize=bs)
    return profile


def style_class_map(dst: rasterio.io.DatasetWriter, nom: Nomenclature, **tags: str) -> None:
    """Embed the colour table, class names and nomenclature in an open class-map dataset."""
    dst.write_colormap(1, nom.colormap())
    dst.set_band_description(1, f"class id ({nom.name}; 255 = no data)")
    dst.update_tags(
        NOMENCLATURE=nom.name,
        CLASS_NAMES=json.dumps(list(nom.class_names)),
        CLASS_CODES=json.dumps(list(nom.codes)),
        IGNORE_INDEX=str(IGNORE),
        **tags,
    )
    dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(nom.class_names)})


def qgis_style(nom: Nomenclature) -> str:
    """A QGIS layer style (.qml): paletted renderer with the class colours and names.

    QGIS loads ``<raster name>.qml`` automatically when the raster is opened.
    """
    entries = "\n".join(
        f'        <paletteEntry value="{i}" color="#{r:02x}{g:02x}{b:02x}" alpha="255" '
        f'label="{escape(code + " " + name, {chr(34): "&quot;"})}"/>'
        for i, (code, name, (r, g, b)) in enumerate(
            zip(nom.codes, nom.class_names, nom.colors, strict=True)
        )
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""


def write_qgis_style(raster_path: Path, nom: Nomenclature) -> Path:
    """Write ``<raster>.qml`` next to a class map (atomically)."""
    qml = raster_path.with_suffix(".qml")
    text = qgis_style(nom)
    with atomic_output(qml, overwrite=True, needed=len(text)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return qml
