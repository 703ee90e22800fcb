"""One scene of an ingest: a product (+ labels) -> ``scenes/<scene_id>/`` of a dataset folder.

The folder holds image.tif (uint16 reflectance x 10000, tiled, pixel-interleaved), labels.tif (uint8
class ids on the identical grid, 255 = ignore, + labels.qml), tiles.parquet (the scene's part of the
catalog) and scene.json (provenance). It is built in a hidden temporary folder and renamed when
complete, so an interrupted run leaves only finished scenes.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover.dataset.catalog import period_column, tile_record, write_scene_part
from landcover.dataset.settings import IngestConfig
from landcover.io.failures import check_written
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.outputs import atomic_folder
from landcover.io.style import class_map_profile, style_class_map, write_qgis_style
from landcover.nomenclature import IGNORE, nomenclature, sentinel2_bands
from landcover.sources.bigearthnet_scenes import BigEarthNetProduct, patch_fields
from landcover.sources.label_files import load_label_mapping
from landcover.sources.labels import LabelSource, RasterLabels, open_label_source
from landcover.sources.reader import NODATA, SceneReader, SceneWindow, StackReader, strips
from landcover.sources.recipe import split_band
from landcover.sources.sentinel2 import Product
from landcover.version import __version__

Progress = Callable[[str, int, int], None]


def _block(tile_size: int) -> int:
    """GeoTIFF block side for a tile size: the tile size rounded up to a multiple of 16, at most 512."""
    return min(512, -(-tile_size // 16) * 16)


def scene_id_of(product: Product) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", product.product_id).strip("._") or "scene"


def clean_partials(out: Path, scene_id: str) -> None:
    """Remove what an interrupted run left of one scene (only its own shard ever writes it): the temporary
    folders of :func:`~landcover.io.outputs.atomic_folder`, ``.<scene_id>.<8 hex>.partial``."""
    own = re.compile(rf"\.{re.escape(scene_id)}\.[0-9a-f]{{8}}\.partial")
    for stale in (out / "scenes").glob(f".{glob.escape(scene_id)}.*.partial"):
        if own.fullmatch(stale.name):  # not the folder of scene "<scene_id>.x"
            shutil.rmtree(stale, ignore_errors=True)


def _image_profile(grid: Grid, count: int, cfg: IngestConfig) -> dict[str, object]:
    block = _block(cfg.tile_size)
    return {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": count,
        "nodata": NODATA,
        "crs": grid.crs,
        "transform": grid.transform,
        "width": grid.width,
        "height": grid.height,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "interleave": "pixel",
        "compress": cfg.compress,
        "predictor": 2,
        "bigtiff": "IF_SAFER",
        **_level_option(cfg),
    }


def _level_option(cfg: IngestConfig, suffix: str = "") -> dict[str, object]:
    """Compression level as a creation option (or, with ``suffix="_OVERVIEW"``, a GDAL config option)."""
    key = {"zstd": "ZSTD_LEVEL", "deflate": "ZLEVEL"}.get(cfg.compress)
    if key is None:
        return {}
    if suffix:
        return {key + suffix: str(min(cfg.compress_level, 9) if cfg.compress == "deflate" else cfg.compress_level)}
    return {key.lower(): min(cfg.compress_level, 9) if cfg.compress == "deflate" else cfg.compress_level}


def ingest_scene(
    product: Product,
    labels: Path | None,
    out: Path,
    cfg: IngestConfig,
    bands: Sequence[str],
    progress: Progress | None = None,
) -> Path:
    """Build one scene folder under ``out/scenes`` and return it."""
    with rasterio.Env(**GDAL_ENV), SceneReader(product, bands, **cfg.reader_options()) as reader:
        about = SceneAbout(
            scene_id=scene_id_of(product),
            product=product,
            input=Path(product.path).name,  # no path of the user's machine
            sensing_time=product.sensing_time,
            tags={
                "PRODUCT_ID": product.product_id,
                "PROCESSING_BASELINE": str(product.processing_baseline or "unknown"),
                "PROCESSING_LEVEL": str(product.level or "unknown"),
                "SENSING_TIME": str(product.sensing_time or "unknown"),
                "OFFSETS_APPLIED": json.dumps(reader.provenance()["offsets_applied"]),
            },
        )
        return write_scene(reader, about, labels, out, cfg, progress)


@dataclass(frozen=True)
class SceneAbout:
    """What a scene folder says about its source: its id, the product whose grid and labels it has (a
    composite's first product), scene.json's ``input`` and ``sensing_time``, image.tif's tags, and the
    periods of a composite (the bands of counts.tif; empty for one product)."""

    scene_id: str
    product: Product
    input: str
    sensing_time: str | None
    tags: dict[str, str]
    periods: tuple[str, ...] = ()


def write_scene(
    reader: StackReader, about: SceneAbout, labels: Path | None, out: Path, cfg: IngestConfig, progress: Progress | None
) -> Path:
    """Write the scene folder of ``reader`` (a product's or a composite's stack) under ``out/scenes``."""
    nom = nomenclature(cfg.nomenclature)
    final = out / "scenes" / about.scene_id
    grid = reader.grid
    needed = grid.width * grid.height * (2 * len(reader.bands) + 1 + len(about.periods))  # uncompressed: at most
    # a folder left without scene.json (incomplete) is replaced; a complete one is never rebuilt (ingest skips it)
    with atomic_folder(final, replace=True, needed=needed) as tmp:
        source = _label_source(about.product, labels, grid, cfg)
        records, usable = _write_rasters(tmp, about, reader, source, cfg, progress)
        write_qgis_style(tmp / "labels.tif", nom)
        write_scene_part(records, tmp / "tiles.parquet")
        scene = {
            "scene_id": about.scene_id,
            "input": about.input,
            "kind": "composite" if about.periods else about.product.kind,
            "sensing_time": about.sensing_time,
            "bands": list(reader.bands),
            "grid": grid.to_dict(),
            "labels": None if source is None else source.description,
            "tiles": len(records),
            "valid_fraction": round(usable / max(1, grid.width * grid.height), 6),
            "provenance": reader.provenance(),
        }
        (tmp / "scene.json").write_text(json.dumps(scene, indent=2, sort_keys=True) + "\n")
        check_written()
    return final


def _label_source(product: Product, labels: Path | None, grid: Grid, cfg: IngestConfig) -> LabelSource | None:
    """The labels of a scene: ``labels`` (with the mapping of cfg), else a BigEarthNet reference map, else none."""
    mapping = load_label_mapping(cfg.labels.mapping, cfg.nomenclature) if cfg.labels.mapping else None
    if labels is not None:
        return open_label_source(
            labels,
            grid,
            code_column=cfg.labels.code_column,
            all_touched=cfg.labels.all_touched,
            raster_values=cfg.labels.raster_values,
            mapping=mapping,
            raster_values_option="--set labels.raster_values={}",  # ingest has no --raster-values
        )
    if isinstance(product, BigEarthNetProduct) and product.reference_map:
        return RasterLabels(Path(product.reference_map), grid, "codes")
    return None


def _write_rasters(
    tmp: Path,
    about: SceneAbout,
    reader: StackReader,
    source: LabelSource | None,
    cfg: IngestConfig,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], int]:
    """Write image.tif and labels.tif (and a composite's counts.tif) strip by strip; return the tiles' catalog
    rows and the usable pixels (valid and cloud-free)."""
    nom = nomenclature(cfg.nomenclature)
    grid = reader.grid
    records: list[dict[str, Any]] = []
    usable = 0
    windows = strips(grid, cfg.tile_size)
    with contextlib.ExitStack() as files:
        img = files.enter_context(rasterio.open(tmp / "image.tif", "w", **_image_profile(grid, len(reader.bands), cfg)))
        lab = files.enter_context(
            rasterio.open(tmp / "labels.tif", "w", **class_map_profile(grid, blocksize=_block(cfg.tile_size)))
        )
        counts = None
        if about.periods:
            profile = {**_image_profile(grid, len(about.periods), cfg), "dtype": "uint8", "nodata": None}
            counts = files.enter_context(rasterio.open(tmp / "counts.tif", "w", **profile))
        prob = files.enter_context(_probability_file(tmp, grid, reader, cfg))
        for done, strip in enumerate(windows, 1):
            win = reader.read(strip)
            if source is not None:
                ids = nom.encode(source.codes(grid, strip), where=source.description)
            else:
                ids = np.full(win.valid.shape, IGNORE, np.uint8)
            invalid = ~win.valid if win.cloud is None else ~win.valid | win.cloud
            ids[invalid] = IGNORE
            usable += int(invalid.size - np.count_nonzero(invalid))
            img.write(win.image, window=strip)
            lab.write(ids, 1, window=strip)
            if counts is not None and win.counts is not None:
                counts.write(win.counts, window=strip)
            if prob is not None and win.cloud_probability is not None:
                prob.write(probability_percent(win.cloud_probability, win.valid), 1, window=strip)
            records += _strip_tiles(about, grid, strip, win, ids, cfg)
            if progress:
                progress(f"{about.scene_id}: stack + labels", done, len(windows))
        _describe_image(img, reader.bands, about)
        if counts is not None:
            for i, period in enumerate(about.periods, 1):
                counts.set_band_description(i, period)
            counts.update_tags(CONTENT="valid observations per period (composite)")
        style_class_map(
            lab, nom, PRODUCT_ID=about.tags.get("PRODUCT_ID", ""), LABEL_SOURCE=source.description if source else "none"
        )
        _overviews(img, lab, grid, cfg, about.scene_id, progress)
    return records, usable


def _overviews(img: Any, lab: Any, grid: Grid, cfg: IngestConfig, scene_id: str, progress: Progress | None) -> None:
    """Overviews of labels.tif (mode, always) and of image.tif (average, with ``cfg.overviews``)."""
    factors = [f for f in (2, 4, 8, 16, 32) if min(grid.width, grid.height) // f >= 256]
    if factors:
        lab.build_overviews(factors, Resampling.mode)
    if cfg.overviews and factors:
        if progress:
            progress(f"{scene_id}: overviews", 0, 1)
        with rasterio.Env(**_level_option(cfg, "_OVERVIEW")):
            img.build_overviews(factors, Resampling.average)


PROBABILITY_NODATA = 255


def probability_percent(probability: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The detector's cloud probability (0..1) as uint8 percent; 255 (no data) where the window is not valid."""
    out = np.rint(probability * 100.0).astype(np.uint8)
    out[~valid] = PROBABILITY_NODATA
    return out


@contextlib.contextmanager
def _probability_file(tmp: Path, grid: Grid, reader: StackReader, cfg: IngestConfig) -> Iterator[Any]:
    """cloud_probability.tif of a single-date scene (in its temporary folder) when asked for and the detector runs,
    else None (a composite has no single date's clouds: its cloudy observations are left out of the periods)."""
    clouds = reader.clouds if isinstance(reader, SceneReader) else None
    if not (cfg.clouds.write_probability and clouds is not None and clouds.detector is not None):
        yield None
        return
    block = _block(cfg.tile_size)
    profile = {**class_map_profile(grid, blocksize=block), "dtype": "uint8", "nodata": PROBABILITY_NODATA}
    with rasterio.open(tmp / "cloud_probability.tif", "w", **profile) as dst:
        dst.set_band_description(1, "cloud_probability")
        dst.update_tags(1, SCALE="percent (0..100)", DETECTOR=clouds.detector.name)
        yield dst


def _strip_tiles(
    about: SceneAbout, grid: Grid, strip: Window, win: SceneWindow, ids: np.ndarray, cfg: IngestConfig
) -> list[dict[str, Any]]:
    """The catalog rows of the whole tiles in a strip (a tile with too few usable pixels has none); a
    composite's rows carry each period's valid fraction (``valid_fraction@<period>``)."""
    t = cfg.tile_size
    nom = nomenclature(cfg.nomenclature)
    records = []
    for r0 in range(0, int(strip.height) - t + 1, t):
        for c0 in range(0, grid.width - t + 1, t):
            sl = np.s_[r0 : r0 + t, c0 : c0 + t]
            window = Window(c0, int(strip.row_off) + r0, t, t)
            record = tile_record(
                scene_id=about.scene_id,
                grid=grid,
                window=window,
                labels=ids[sl],
                valid=win.valid[sl],
                cloud=None if win.cloud is None else win.cloud[sl],
                image=win.image[(slice(None), *sl)],
                nomenclature=nom,
                split_cfg=cfg.split,
                present_threshold=cfg.present_threshold,
                **patch_fields(about.product, grid, window),
            )
            if record is not None and win.counts is not None:
                for period, count in zip(about.periods, win.counts[(slice(None), *sl)], strict=True):
                    record[period_column(period)] = float(np.count_nonzero(count)) / count.size
            if record is not None:
                records.append(record)
    return records


def _describe_image(img: Any, bands: Sequence[str], about: SceneAbout) -> None:
    """Band names (``B04`` or ``B04@spring``), wavelengths and the source's provenance as tags of image.tif."""
    for i, name in enumerate(bands, 1):
        img.set_band_description(i, name)
        band, period = split_band(name)
        info = sentinel2_bands()[band]
        img.update_tags(
            i,
            WAVELENGTH_NM=str(info.wavelength_nm),
            RESOLUTION_M=str(info.resolution),
            **({"PERIOD": period} if period else {}),
        )
    img.update_tags(SCALE="reflectance x 10000", SOFTWARE=f"landcover {__version__}", **about.tags)
