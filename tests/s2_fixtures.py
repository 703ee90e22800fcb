"""Synthetic Sentinel-2 inputs for tests: tiny real rasters in the layouts landcover reads.

Every helper writes into a folder you give it (pytest's ``tmp_path``) and returns the path to
point :func:`landcover.sources.sentinel2.open_product` at. Rasters are georeferenced in a real UTM CRS
(EPSG:32633 by default) with one upper-left corner shared by all resolutions, like a real tile:
at the default ``size=64`` a 10 m band is 64x64, a 20 m band 32x32 and a 60 m band 11x11.
Pixel values are seeded uint16 reflectances (plus 1000 when the processing baseline is >= 04.00,
as in real products); SCL rasters hold uint8 classes 0..11. JP2 files are written losslessly
(OpenJPEG, ``QUALITY=100 REVERSIBLE=YES``), so tests can compare pixels exactly.

Helpers: :func:`write_s2_raster`, :func:`make_safe`, :func:`make_band_folder`,
:func:`make_multiband`, :func:`make_bigearthnet_patch`, :func:`make_bigearthnet_metadata`,
:func:`mtd_xml` and :func:`truncate`; :func:`shared_data` (from conftest) finds ``../shared/data``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from tests.conftest import SHARED_DATA as SHARED_DATA  # re-exported
from tests.conftest import shared_data as shared_data  # re-exported

CRS = "EPSG:32633"
ORIGIN = (300000.0, 5400000.0)  # upper-left corner (x, y), the corner of MGRS tile 33UUP
BASELINE_OFFSET = -1000.0  # DN offset of processing baseline >= 04.00

ESA_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
          "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20, "SCL": 20}  # fmt: skip
L2A_BANDS = tuple(b for b in ESA_BANDS if b != "B10")
# band files of each resolution folder of a real L2A product (besides TCI, AOT, WVP)
L2A_FOLDERS = {
    10: ("B02", "B03", "B04", "B08"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"),
}


def pixels(shape: tuple[int, int], seed: int, band: str = "B02", offset: int = 0) -> np.ndarray:
    """Seeded test pixels: uint16 reflectance DNs (+ ``offset``), or uint8 classes for SCL."""
    rng = np.random.default_rng(seed)
    if band == "SCL":
        return rng.integers(0, 12, shape, dtype=np.uint8)
    return (rng.integers(100, 5000, shape) + offset).astype(np.uint16)


def write_s2_raster(
    path: Path,
    data: np.ndarray,
    res: float = 10.0,
    *,
    crs: str = CRS,
    origin: tuple[float, float] = ORIGIN,
    descriptions: Sequence[str | None] | None = None,
    driver: str | None = None,
    nodata: float | None = None,
) -> Path:
    """Write ``data`` ((bands,) rows, cols) as a GeoTIFF, or a lossless JPEG 2000 for ``.jp2``.

    The driver follows the last suffix (``x.jp2.TIF`` is a GeoTIFF) unless ``driver`` is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = data[None] if data.ndim == 2 else data
    driver = driver or ("JP2OpenJPEG" if path.suffix.lower() == ".jp2" else "GTiff")
    options = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    profile = {
        "driver": driver, "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
        "dtype": arr.dtype.name, "crs": crs, "transform": from_origin(*origin, res, res),
        "nodata": nodata,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile, **options) as ds:
        ds.write(arr)
        for i, text in enumerate(descriptions or [], 1):
            if text is not None:
                ds.set_band_description(i, text)
    return path


def band_shape(res: float, size: int = 64) -> tuple[int, int]:
    """Rows, cols of a band at ``res`` covering ``size`` x ``size`` pixels of 10 m."""
    n = math.ceil(size * 10 / res)
    return (n, n)


def _offsets_xml(tag: str, value: float | Sequence[float] | None) -> str:
    if value is None:
        return ""
    values = [value] * 13 if isinstance(value, int | float) else list(value)
    return "\n".join(f'        <{tag} band_id="{i}">{v:g}</{tag}>' for i, v in enumerate(values))


def mtd_xml(
    level: str,
    product_uri: str,
    sensing: str,
    baseline: str,
    offset: float | Sequence[float] | None,
    image_files: Sequence[str] = (),
    quantification: float = 10000.0,
) -> str:
    """A product metadata file shaped like the real ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``.

    ``offset`` goes into every BOA_ADD_OFFSET (L2A) / RADIO_ADD_OFFSET (L1C), band_id 0..12 (a
    sequence: one value per band_id); ``None`` writes no offset list (as baseline < 04.00 does).
    """
    l2a = level == "L2A"
    xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd"
    files = "\n".join(f"              <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    if l2a:
        quant = (
            "<QUANTIFICATION_VALUES_LIST>\n"
            f'        <BOA_QUANTIFICATION_VALUE unit="none">{quantification:g}</BOA_QUANTIFICATION_VALUE>\n'
            '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
            '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
            "      </QUANTIFICATION_VALUES_LIST>"
        )
        offsets = _offsets_xml("BOA_ADD_OFFSET", offset)
        offsets = offsets and f"<BOA_ADD_OFFSET_VALUES_LIST>\n{offsets}\n      </BOA_ADD_OFFSET_VALUES_LIST>"
    else:
        quant = f'<QUANTIFICATION_VALUE unit="none">{quantification:g}</QUANTIFICATION_VALUE>'
        offsets = _offsets_xml("RADIO_ADD_OFFSET", offset)
        offsets = offsets and f"<Radiometric_Offset_List>\n{offsets}\n      </Radiometric_Offset_List>"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{level[1:]}_User_Product xmlns:n1="{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{xsd}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{sensing}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{sensing}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{product_uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Product_Organisation>
        <Granule_List>
          <Granule imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      {quant}
      {offsets}
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-{level[1:]}_User_Product>
"""


def product_name(level: str = "L2A", sensing: str = "20230115T101021", baseline: str = "04.00",
                 tile: str = "T33UUP", sat: str = "S2B") -> str:  # fmt: skip
    """An ESA product name (no ``.SAFE``), e.g. S2B_MSIL2A_20230115T101021_N0400_R022_T33UUP_20230115T120000."""
    return f"{sat}_MSI{level}_{sensing}_N{baseline.replace('.', '')}_R022_{tile}_{sensing[:8]}T120000"


def make_safe(
    tmp_path: Path,
    level: str = "L2A",
    baseline: str = "04.00",
    with_mtd: bool = True,
    with_scl: bool = True,
    zipped: bool = False,
    *,
    bands: Sequence[str] | None = None,
    geotiff: bool = False,
    all_resolutions: bool = True,
    offset: float | str | None = "auto",
    sensing: str = "20230115T101021",
    tile: str = "T33UUP",
    safe_name: str | None = None,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A SAFE product tree (``<name>.SAFE/GRANULE/<granule>/IMG_DATA/...`` and its MTD xml).

    L1C: flat ``IMG_DATA/T33UUP_<sensing>_B01.jp2`` (13 bands and TCI). L2A: ``IMG_DATA/R10m|R20m|R60m/
    T33UUP_<sensing>_B02_10m.jp2`` with the band sets of real products (``all_resolutions=False``:
    each band only at its native resolution), SCL at 20 and 60 m if ``with_scl``. ``bands`` limits
    the spectral bands written. ``offset``: 'auto' = -1000 for baseline >= 04.00 else none; a value;
    or None (no offset list). ``geotiff`` writes ``.tif`` instead of ``.jp2``; ``safe_name``
    overrides the folder name; ``zipped`` returns ``<name>.zip`` (the SAFE folder inside) instead.
    """
    name = product_name(level, sensing, baseline, tile)
    safe = tmp_path / (safe_name or f"{name}.SAFE")
    granule = f"{level}_{tile}_A039000_{sensing}"
    img = safe / "GRANULE" / granule / "IMG_DATA"
    modern = float(baseline) >= 4.0
    dn_offset = 1000 if modern else 0
    ext = ".tif" if geotiff else ".jp2"
    wanted = set(bands) if bands is not None else set(ESA_BANDS)
    written: list[str] = []
    stamp = f"{tile}_{sensing}"
    if level == "L1C":
        for i, band in enumerate(b for b in ESA_BANDS if b in wanted):
            shape = band_shape(NATIVE[band], size)
            write_s2_raster(img / f"{stamp}_{band}{ext}", pixels(shape, seed + i, band, dn_offset), NATIVE[band])
            written.append(f"GRANULE/{granule}/IMG_DATA/{stamp}_{band}")
        rgb = np.zeros((3, *band_shape(10, size)), dtype=np.uint8)
        write_s2_raster(img / f"{stamp}_TCI{ext}", rgb, 10)
    else:
        for res, folder_bands in L2A_FOLDERS.items():
            for i, band in enumerate(folder_bands):
                if band == "SCL" and not with_scl:
                    continue
                if band != "SCL" and (band not in wanted or (not all_resolutions and NATIVE[band] != res)):
                    continue
                if band == "SCL" and not all_resolutions and res != 20:
                    continue
                data = pixels(band_shape(res, size), seed + 100 * res + i, band, dn_offset)
                write_s2_raster(img / f"R{res}m" / f"{stamp}_{band}_{res}m{ext}", data, res)
                written.append(f"GRANULE/{granule}/IMG_DATA/R{res}m/{stamp}_{band}_{res}m")
        write_s2_raster(img / "R10m" / f"{stamp}_TCI_10m{ext}", np.zeros((3, *band_shape(10, size)), np.uint8), 10)
        write_s2_raster(img / "R20m" / f"{stamp}_AOT_20m{ext}", pixels(band_shape(20, size), seed), 20)
    qi = safe / "GRANULE" / granule / "QI_DATA"
    write_s2_raster(qi / f"MSK_CLDPRB_20m{ext}", np.zeros(band_shape(20, size), np.uint8), 20)
    for sub in ("DATASTRIP", "AUX_DATA", "HTML", "rep_info"):
        (safe / sub).mkdir(parents=True, exist_ok=True)
    (safe / "manifest.safe").write_text("<xfdu:XFDU/>\n")
    if with_mtd:
        value = (BASELINE_OFFSET if modern else None) if isinstance(offset, str) else offset
        iso = f"{sensing[:4]}-{sensing[4:6]}-{sensing[6:11]}:{sensing[11:13]}:{sensing[13:]}.024Z"
        xml = mtd_xml(level, f"{name}.SAFE", iso, baseline, value, written)
        (safe / f"MTD_MSI{level}.xml").write_text(xml, encoding="utf-8")
    if not zipped:
        return safe
    archive = Path(shutil.make_archive(str(tmp_path / name), "zip", tmp_path, safe.name))
    shutil.rmtree(safe)
    return archive


NAMINGS = {
    "esa": "{tile}_{sensing}_{band}.jp2",  # L1C IMG_DATA
    "esa_res": "{tile}_{sensing}_{band}_{res}m.jp2",  # L2A IMG_DATA/R..m
    "plain": "{band}.tif",  # Major-TOM
    "lower": "{tile_l}_{sensing}_{band_l}.TIFF",  # case-insensitive names
    "jp2tif": "{tile}_{sensing}_{band}_{res}m.jp2.TIF",  # GeoTIFF exports of JP2 files
}


def make_band_folder(
    folder: Path,
    bands: Sequence[str] = L2A_BANDS,
    naming: str = "esa",
    *,
    tile: str = "T33UUP",
    sensing: str = "20230115T101021",
    with_scl: bool = False,
    with_cloud_mask: bool = False,
    extra_resolutions: Sequence[int] = (),
    crs: str = CRS,
    origin: tuple[float, float] = ORIGIN,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A folder of per-band files, each band at its native resolution, named after ``naming``.

    ``naming`` is a key of :data:`NAMINGS` (or a format string with ``{tile} {sensing} {band} {res}``).
    ``extra_resolutions`` also writes every band at those resolutions (like ``B02_20m``), when
    coarser than native. ``with_scl`` adds an SCL file (20 m), ``with_cloud_mask`` a Major-TOM
    ``cloud_mask.tif`` (10 m, uint8).
    """
    pattern = NAMINGS.get(naming, naming)
    todo = [(b, NATIVE[b]) for b in bands] + [(b, r) for r in extra_resolutions for b in bands if r > NATIVE[b]]
    if with_scl:
        todo.append(("SCL", 20))
    for i, (band, res) in enumerate(todo):
        name = pattern.format(tile=tile, tile_l=tile.lower(), sensing=sensing, band=band, band_l=band.lower(), res=res)
        data = pixels(band_shape(res, size), seed + i, band)
        write_s2_raster(folder / name, data, res, crs=crs, origin=origin)
    if with_cloud_mask:
        write_s2_raster(folder / "cloud_mask.tif", np.zeros(band_shape(10, size), np.uint8), 10, crs=crs, origin=origin)
    return folder


def make_multiband(
    path: Path,
    bands: Sequence[str] = ("B02", "B03", "B04", "B08"),
    descriptions: bool | Sequence[str | None] = True,
    *,
    res: float = 10.0,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """One GeoTIFF holding ``bands`` in that order; band descriptions = band names if
    ``descriptions`` is True, the given strings if a sequence, none if False."""
    data = np.stack([pixels((size, size), seed + i) for i in range(len(bands))])
    texts = list(bands) if descriptions is True else list(descriptions) if descriptions else None
    return write_s2_raster(path, data, res, descriptions=texts)


REFERENCE_CODES = (112, 122, 211, 231, 311, 312, 324, 512)
"""CLC codes of synthetic reference maps: 122 (roads) has no BigEarthNet 19-class label (ignored)."""


def make_bigearthnet_patch(
    root: Path,
    version: int = 2,
    *,
    scene: str = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP",
    row: int = 27,
    col: int = 55,
    labels: Sequence[str] = ("Non-irrigated arable land", "Pastures"),
    suffix: str = ".tif",
    with_reference_map: bool = False,
    reference_codes: Sequence[int] = REFERENCE_CODES,
) -> Path:
    """A BigEarthNet patch (120x120 px at 10 m, 60x60 at 20 m, 20x20 at 60 m; 12 bands).

    v2: ``root/BigEarthNet-S2/<scene>/<scene>_<row>_<col>/<patch>_B02.tif`` (and, with
    ``with_reference_map``, ``root/Reference_Maps/<scene>/<patch>/<patch>_reference_map.tif``: uint16
    CLC codes drawn per pixel from ``reference_codes``, seeded by the patch position).
    v1: ``root/<S2A_MSIL2A_<date>>_<row>_<col>/`` with ``<patch>_labels_metadata.json`` (``labels``
    are then CLC level-3 names as BigEarthNet v1 spells them).
    """
    origin = (ORIGIN[0] + 1200 * col, ORIGIN[1] - 1200 * row)
    if version == 2:
        patch = root / "BigEarthNet-S2" / scene / f"{scene}_{row}_{col}"
    else:
        patch = root / f"{'_'.join(scene.split('_')[:3])}_{row}_{col}"
    for i, band in enumerate(L2A_BANDS):
        data = pixels(band_shape(NATIVE[band], 120), row * 1000 + col * 20 + i, band)
        write_s2_raster(patch / f"{patch.name}_{band}{suffix}", data, NATIVE[band], origin=origin)
    if version == 1:
        meta = {
            "labels": list(labels),
            "coordinates": {"ulx": origin[0], "uly": origin[1], "lrx": origin[0] + 1200, "lry": origin[1] - 1200},
            "tile_source": scene.replace("MSIL2A", "MSIL1C").replace("N9999", "N0205") + "_20170613T101608.SAFE",
            "acquisition_date": "2017-06-13 10:10:31",
        }
        (patch / f"{patch.name}_labels_metadata.json").write_text(json.dumps(meta))
    if with_reference_map:
        ref = root / "Reference_Maps" / scene / patch.name / f"{patch.name}_reference_map.tif"
        codes = np.random.default_rng(row * 1000 + col).choice(np.asarray(reference_codes, np.uint16), (120, 120))
        write_s2_raster(ref, codes, 10, origin=origin)
    return patch


def make_bigearthnet_metadata(
    path: Path, labels: dict[str, Sequence[str]], splits: dict[str, str] | None = None
) -> Path:
    """A BigEarthNet v2 ``metadata.parquet`` (patch_id, labels, split, country) for ``labels``.

    ``splits`` gives patches their official split ('train', 'validation', 'test'; default train).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "patch_id": list(labels),
        "labels": [list(v) for v in labels.values()],
        "split": [(splits or {}).get(p, "train") for p in labels],
        "country": ["Austria"] * len(labels),
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its size, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
