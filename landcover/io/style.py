"""The look of a class map wherever it goes: GeoTIFF profile, colour table and class names, QGIS .qml style,
Cloud-Optimized GeoTIFF copy and a quick-look PNG with a legend."""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil

from landcover.io.failures import check_written
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_output
from landcover.nomenclature import IGNORE, Nomenclature


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
        for i, (code, name, (r, g, b)) in enumerate(zip(nom.codes, nom.class_names, nom.colors, strict=True))
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


COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": 512, "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}


def to_cog(src: Path, dst: Path, resampling: str, nom: Nomenclature | None) -> None:
    check_written()  # the GeoTIFF to copy was written whole
    rasterio.shutil.copy(src, dst, driver="COG", OVERVIEW_RESAMPLING=resampling, **COG_OPTIONS)
    check_written()
    if nom is None:
        return
    with rasterio.open(dst) as ds:
        kept = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
    if any(kept.get(i, (0, 0, 0, 0))[:3] != rgb for i, rgb in enumerate(nom.colors)):
        with rasterio.open(dst, "r+") as ds:  # GDAL dropped the palette: put it back
            ds.write_colormap(1, nom.colormap())


def write_quicklook(cog: Path, png: Path, nom: Nomenclature, nodata: int, title: str, max_side: int = 1024) -> None:
    """A PNG of the class map (read from the COG's overviews) with a legend of the classes shown.

    Drawn on a bare Figure, not pyplot, so the caller's matplotlib backend (a notebook's) is left alone.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(cog) as ds:
        f = max(1.0, max(ds.width, ds.height) / max_side)
        arr = ds.read(1, out_shape=(max(1, round(ds.height / f)), max(1, round(ds.width / f))))
    lut = np.zeros((max(nodata, nom.num_classes) + 1, 4), np.float32)
    lut[: nom.num_classes, :3] = np.asarray(nom.colors, np.float32) / 255
    lut[: nom.num_classes, 3] = 1
    ids, counts = np.unique(arr[arr != nodata], return_counts=True)
    shown = [int(i) for i in ids[np.argsort(-counts)][:20] if i < nom.num_classes]
    fig = Figure(figsize=(10, 7))
    ax = fig.subplots()
    ax.imshow(lut[arr], interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    handles = [
        Patch(
            color=(float(lut[i, 0]), float(lut[i, 1]), float(lut[i, 2])), label=f"{nom.codes[i]} {nom.class_names[i]}"
        )
        for i in shown
    ]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(png, dpi=100, bbox_inches="tight", format="png")
