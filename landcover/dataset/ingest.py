"""``landcover ingest``: Sentinel-2 products + labels -> an analysis-ready tile dataset.

Layout of a dataset folder::

    ingest_settings.json          settings every scene was made with (a re-run must match)
    scenes/<scene_id>/image.tif   uint16 reflectance x 10000, tiled (tile_size), pixel-interleaved
    scenes/<scene_id>/labels.tif  uint8 class ids on the identical grid, 255 = ignore (+ labels.qml)
    scenes/<scene_id>/tiles.parquet  the scene's part of the catalog
    scenes/<scene_id>/scene.json  provenance; written last: its presence means 'scene complete'
    catalog.parquet, splits.gpkg, dataset.json   merged by :func:`finalize`

Each scene is built in a hidden temporary folder and renamed when complete, so an interrupted
run leaves only finished scenes, and the next run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rasterio.enums import Resampling
from rasterio.windows import Window

from landcover import __version__
from landcover.cluster import Shard, shard_items
from landcover.config import apply_override
from landcover.dataset.catalog import SplitConfig, lonlat_bounds, tile_record, write_scene_part
from landcover.dataset.catalog import finalize as finalize_catalog
from landcover.dataset.splits import check_block_size, grid_area_warning, split_scheme
from landcover.errors import ConfigError, DatasetError, OutputExistsError
from landcover.io.failures import check_written, writing
from landcover.io.grid import GDAL_ENV, Grid
from landcover.io.outputs import atomic_output
from landcover.io.style import class_map_profile, style_class_map, write_qgis_style
from landcover.nomenclature import (
    IGNORE,
    default_bands,
    nomenclature,
    normalize_band_name,
    sentinel2_bands,
)
from landcover.sources.bigearthnet import PATCH_PIXELS
from landcover.sources.bigearthnet_scenes import BigEarthNetProduct, open_inputs, patch_fields
from landcover.sources.label_files import load_label_mapping
from landcover.sources.labels import RasterLabels, open_label_source
from landcover.sources.reader import NODATA, SceneReader, strips
from landcover.sources.s2meta import dataset_level
from landcover.sources.sentinel2 import Product

Progress = Callable[[str, int, int], None]


class LabelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code_column: str | None = Field(None, description="CLC code attribute (default CODE_18, CODE_12, ...)")
    all_touched: bool = False
    raster_values: Literal["auto", "codes", "indices"] = "auto"
    mapping: Path | None = Field(None, description="CSV mapping a non-CORINE attribute onto the nomenclature")


class IngestConfig(BaseModel):
    """Every setting of an ingest run (YAML: configs/ingest.yaml)."""

    model_config = ConfigDict(extra="forbid")
    bands: list[str] | None = Field(None, description="Bands in stack order; default all of the product level")
    resolution: float = Field(10.0, gt=0)
    resampling: Literal["bilinear", "cubic"] = "bilinear"
    harmonize: bool = Field(True, description="Apply the processing-baseline offset (BOA/RADIO_ADD_OFFSET)")
    scl_invalid: list[int] | None = Field(None, description="SCL classes masked as ignore; default from data_catalog")
    nomenclature: str = "level3"
    tile_size: int = Field(256, ge=16, description="Tile side in pixels; default 120 when every input is BigEarthNet")
    present_threshold: float = Field(0.01, ge=0, le=1)
    compress: Literal["zstd", "deflate", "lzw"] = "zstd"
    compress_level: int = Field(
        1, ge=1, le=22, description="ZSTD/DEFLATE level of image.tif and its overviews: 1 is several times faster "
        "to write than GDAL's default (9) for files about 10 % larger",
    )
    overviews: bool = Field(
        False, description="Also build overviews of image.tif (average): QGIS then draws whole scenes quickly, but "
        "on a full tile it costs about as much CPU as decoding the product. labels.tif always gets (cheap) overviews",
    )
    labels: LabelOptions = LabelOptions()
    split: SplitConfig = SplitConfig()
    bigearthnet_metadata: Path | None = Field(
        None, description="BigEarthNet v2 metadata.parquet (patch labels, official split); default: one above the patches"
    )

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [normalize_band_name(b) for b in value]
        if len(set(names)) != len(names):
            raise ValueError(f"bands repeat: {value}")
        return names

    @field_validator("nomenclature")
    @classmethod
    def _nomenclature(cls, value: str) -> str:
        nomenclature(value)
        return value

    @field_validator("tile_size")
    @classmethod
    def _tile(cls, value: int) -> int:
        if value % 16 and value % PATCH_PIXELS:
            raise ValueError(
                f"tile_size must be a multiple of 16 (GeoTIFF block size) or of {PATCH_PIXELS} (BigEarthNet patches)"
            )
        return value


def _block(tile_size: int) -> int:
    """GeoTIFF block side for a tile size: the tile size rounded up to a multiple of 16, at most 512."""
    return min(512, -(-tile_size // 16) * 16)


def scene_id_of(product: Product) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", product.product_id).strip("._") or "scene"


def _settings(cfg: IngestConfig, labels: Path | None) -> dict[str, Any]:
    return {
        "config": cfg.model_dump(mode="json"),
        "labels": None if labels is None else labels.name,
        "software": f"landcover {__version__}",
    }


def _with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings read back, with the defaults of settings added since they were written (e.g.
    ``split.grid_crs``), so that a dataset of an earlier version can be resumed and re-split."""
    try:
        config = IngestConfig.model_validate(settings.get("config", {})).model_dump(mode="json")
    except ValidationError:
        return settings
    return {**settings, "config": config}


def _prepare(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check it holds a dataset made with the same settings.

    A folder whose settings file exists but that holds no finished scene (a run that failed on bad labels
    or a bad mapping) is not a dataset yet: its settings are replaced by these.

    Safe when several shards (array tasks) start at once: the settings file is created atomically
    (the first one wins) and every other shard checks it holds the same settings.
    """
    marker = out / "ingest_settings.json"
    text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
    if marker.exists():
        old = _with_defaults(json.loads(marker.read_text()))
        finished = any((out / "scenes").glob("*/scene.json"))
        if old != settings and not finished:  # a run that failed before its first scene: not a dataset yet
            marker.unlink(missing_ok=True)
        elif old != settings:
            if not overwrite:
                changed = sorted(k for k in settings["config"] if old.get("config", {}).get(k) != settings["config"][k])
                raise OutputExistsError(
                    f"{out} holds a dataset made with other settings ({', '.join(changed) or 'labels/software'}); "
                    "pass --overwrite to replace it, or choose another --out"
                )
            for name in ("scenes", "catalog.parquet", "splits.gpkg", "dataset.json", marker.name):
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    elif out.exists() and any(p.name != "scenes" and not p.name.startswith(".") for p in out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not a landcover dataset; choose an empty or new --out")
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        tmp = out / f".{marker.name}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(text)
            os.link(tmp, marker)  # atomic, and fails if another shard created it first
        except FileExistsError:
            if json.loads(marker.read_text()) != settings:
                raise OutputExistsError(f"{out} was just created by another run with other settings; "
                                        "give every shard the same settings") from None
        finally:
            tmp.unlink(missing_ok=True)


def _clean_partials(out: Path, scene_id: str) -> None:
    """Remove what an interrupted run left of one scene (only its own shard ever writes it)."""
    for stale in (out / "scenes").glob(f".{scene_id}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _image_profile(grid: Grid, count: int, cfg: IngestConfig) -> dict[str, object]:
    block = _block(cfg.tile_size)
    return {
        "driver": "GTiff", "dtype": "uint16", "count": count, "nodata": NODATA,
        "crs": grid.crs, "transform": grid.transform, "width": grid.width, "height": grid.height,
        "tiled": True, "blockxsize": block, "blockysize": block, "interleave": "pixel",
        "compress": cfg.compress, "predictor": 2, "bigtiff": "IF_SAFER", **_level_option(cfg),
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
    nom = nomenclature(cfg.nomenclature)
    scene_id = scene_id_of(product)
    final = out / "scenes" / scene_id
    tmp = out / "scenes" / f".{scene_id}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with writing(final, temporaries=[tmp]) as guard, rasterio.Env(**GDAL_ENV), SceneReader(
            product, bands, resolution=cfg.resolution, resampling=cfg.resampling,
            harmonize=cfg.harmonize, scl_invalid=cfg.scl_invalid,
        ) as reader:
            tmp.mkdir(parents=True)
            grid = reader.grid
            guard.needed = grid.width * grid.height * (2 * len(bands) + 1)  # uncompressed: at most
            mapping = load_label_mapping(cfg.labels.mapping, cfg.nomenclature) if cfg.labels.mapping else None
            source = None
            if labels is not None:
                source = open_label_source(
                    labels, grid, code_column=cfg.labels.code_column, all_touched=cfg.labels.all_touched,
                    raster_values=cfg.labels.raster_values, mapping=mapping,
                    raster_values_option="--set labels.raster_values={}",  # ingest has no --raster-values
                )
            elif isinstance(product, BigEarthNetProduct) and product.reference_map:
                source = RasterLabels(Path(product.reference_map), grid, "codes")
            records = []
            usable = 0  # valid, cloud-free pixels
            windows = strips(grid, cfg.tile_size)
            t = cfg.tile_size
            with rasterio.open(tmp / "image.tif", "w", **_image_profile(grid, len(bands), cfg)) as img, \
                    rasterio.open(tmp / "labels.tif", "w", **class_map_profile(grid, blocksize=_block(t))) as lab:
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
                    for r0 in range(0, int(strip.height) - t + 1, t):
                        for c0 in range(0, grid.width - t + 1, t):
                            sl = np.s_[r0:r0 + t, c0:c0 + t]
                            window = Window(c0, int(strip.row_off) + r0, t, t)
                            record = tile_record(
                                scene_id=scene_id, grid=grid, window=window,
                                labels=ids[sl], valid=win.valid[sl],
                                cloud=None if win.cloud is None else win.cloud[sl],
                                image=win.image[(slice(None), *sl)], nomenclature=nom,
                                split_cfg=cfg.split, present_threshold=cfg.present_threshold,
                                **patch_fields(product, grid, window),
                            )
                            if record is not None:
                                records.append(record)
                    if progress:
                        progress(f"{scene_id}: stack + labels", done, len(windows))
                for i, band in enumerate(bands, 1):
                    img.set_band_description(i, band)
                    info = sentinel2_bands()[band]
                    img.update_tags(i, WAVELENGTH_NM=str(info.wavelength_nm), RESOLUTION_M=str(info.resolution))
                img.update_tags(
                    PRODUCT_ID=product.product_id, SCALE="reflectance x 10000",
                    PROCESSING_BASELINE=str(product.processing_baseline or "unknown"),
                    PROCESSING_LEVEL=str(product.level or "unknown"),
                    OFFSETS_APPLIED=json.dumps(reader.provenance()["offsets_applied"]),
                    SOFTWARE=f"landcover {__version__}",
                )
                style_class_map(lab, nom, PRODUCT_ID=product.product_id,
                                LABEL_SOURCE=source.description if source else "none")
                factors = [f for f in (2, 4, 8, 16, 32) if min(grid.width, grid.height) // f >= 256]
                if factors:
                    lab.build_overviews(factors, Resampling.mode)
                if cfg.overviews and factors:
                    if progress:
                        progress(f"{scene_id}: overviews", 0, 1)
                    with rasterio.Env(**_level_option(cfg, "_OVERVIEW")):
                        img.build_overviews(factors, Resampling.average)
            write_qgis_style(tmp / "labels.tif", nom)
            write_scene_part(records, tmp / "tiles.parquet")
            scene = {
                "scene_id": scene_id,
                "input": Path(product.path).name,  # no path of the user's machine
                "kind": product.kind,
                "bands": list(bands),
                "grid": grid.to_dict(),
                "labels": None if source is None else source.description,
                "tiles": len(records),
                "valid_fraction": round(usable / max(1, grid.width * grid.height), 6),
                "provenance": reader.provenance(),
            }
            (tmp / "scene.json").write_text(json.dumps(scene, indent=2, sort_keys=True) + "\n")
            check_written()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dataset_bands(products: list[Product], cfg: IngestConfig) -> list[str]:
    if cfg.bands:
        return list(cfg.bands)
    levels = {p.level for p in products}
    if len(levels) > 1:
        raise ConfigError(
            f"inputs mix product levels {sorted(levels)}: pass --bands to choose bands they all have "
            "(e.g. the 12 L2A bands)"
        )
    level = levels.pop()
    if level == "unknown":
        return [b for b in sentinel2_bands() if b in products[0].bands]
    return list(default_bands(level))


def _resplit_settings(out: Path, settings: dict[str, Any], split: SplitConfig) -> dict[str, Any]:
    """Record new split settings in ingest_settings.json (later ingests into ``out`` use them)."""
    old = SplitConfig.model_validate(settings["config"].get("split", {}))
    if split.min_valid_fraction != old.min_valid_fraction:
        raise ConfigError(f"split.min_valid_fraction decides which tiles exist, so it cannot change when "
                          f"re-splitting ({old.min_valid_fraction} -> {split.min_valid_fraction}); re-run "
                          f"`landcover ingest --overwrite --out {out}` with the new value")
    settings = {**settings, "config": {**settings["config"], "split": split.model_dump(mode="json")}}
    with atomic_output(out / "ingest_settings.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return settings


def split_settings(out: Path, overrides: Sequence[str]) -> SplitConfig:
    """The split settings of the dataset ``out`` with ``split.KEY=VALUE`` overrides (a re-split)."""
    marker = out / "ingest_settings.json"
    if not marker.is_file():
        raise DatasetError(f"{out} is not a landcover dataset (no {marker.name}); run `landcover ingest` first")
    data = {"split": dict(json.loads(marker.read_text())["config"].get("split", {}))}
    for assignment in overrides:
        if not assignment.strip().startswith("split."):
            raise ConfigError(f"--finalize re-splits only: {assignment!r} is not a split.* setting; other "
                              "settings need a new ingest (`landcover ingest ... --overwrite`)")
        apply_override(data, assignment)
    return SplitConfig.from_mapping(data["split"])


def finalize(out: Path, progress: Progress | None = None, split: SplitConfig | None = None) -> dict[str, Any]:
    """Merge the scenes' catalog parts, assign splits, write splits.gpkg and dataset.json.

    Safe to run twice. It reads the scenes' catalog parts only, never their imagery, so it also
    re-splits a dataset: with ``split`` (new split settings, recorded in ingest_settings.json), or
    with the current scheme for a dataset ingested with an older one.
    """
    marker = out / "ingest_settings.json"
    if not marker.is_file():
        raise DatasetError(f"{out} is not a landcover dataset (no {marker.name}); run `landcover ingest` first")
    settings = json.loads(marker.read_text())
    if split is not None:
        settings = _resplit_settings(out, settings, split)
    scenes = sorted((out / "scenes").glob("*/scene.json"))
    if not scenes:
        raise DatasetError(f"{out} has no complete scene; run landcover ingest first")
    meta = [json.loads(p.read_text()) for p in scenes]
    bands = meta[0]["bands"]
    cfg = IngestConfig.model_validate(settings["config"])
    if not any(m["tiles"] for m in meta):
        raise no_tiles_error(meta, cfg)
    tile_m = cfg.tile_size * cfg.resolution
    if not cfg.split.by_scene:
        check_block_size(cfg.split, tile_m)
    stats = finalize_catalog(out, [p.parent / "tiles.parquet" for p in scenes], bands, cfg.split, tile_m)
    scheme = split_scheme(cfg.split, tile_m)
    bounds = lonlat_bounds(out)
    warning = grid_area_warning(bounds, cfg.split) if bounds else None
    if warning:
        scheme["warnings"] = [warning]
    nom = nomenclature(cfg.nomenclature)
    dataset = {
        "format": "landcover-dataset/1",
        "bands": bands,
        "band_info": [
            {"band": b, "wavelength_nm": sentinel2_bands()[b].wavelength_nm,
             "native_resolution_m": sentinel2_bands()[b].resolution} for b in bands
        ],
        "scale": "reflectance x 10000 (uint16), 0 = no data",
        "resolution": cfg.resolution,
        "tile_size": cfg.tile_size,
        "nomenclature": nom.to_dict(),
        "normalization": stats,
        "split_scheme": scheme,
        "processing_level": dataset_level(meta),
        "scenes": [
            {"scene_id": m["scene_id"], "image": f"scenes/{m['scene_id']}/image.tif",
             "labels": f"scenes/{m['scene_id']}/labels.tif", "grid": m["grid"], "tiles": m["tiles"],
             "input": m["input"], "label_source": m["labels"], "provenance": m["provenance"]}
            for m in meta
        ],
        "config": settings["config"],
        "software": {"landcover": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__},
    }
    with atomic_output(out / "dataset.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n")
    return dataset


def no_tiles_error(scenes: list[dict[str, Any]], cfg: IngestConfig) -> DatasetError:
    """The error for scenes (``scene.json`` contents) none of which has a usable tile."""
    names = ", ".join(str(m["scene_id"]) for m in scenes[:3]) + (f" and {len(scenes) - 3} more" if len(scenes) > 3 else "")
    if all(m.get("valid_fraction") == 0 for m in scenes):
        return DatasetError(f"every pixel of {names} is no data (0 in a band, or masked by the SCL / cloud mask): "
                            "there is nothing to ingest; check that the inputs hold imagery")
    threshold = cfg.split.min_valid_fraction
    return DatasetError(
        f"no {cfg.tile_size} x {cfg.tile_size} px tile of {names} has at least split.min_valid_fraction={threshold:g} "
        "of valid, cloud-free pixels, so there is nothing to ingest; use other inputs, or lower the threshold "
        "(--set split.min_valid_fraction=0.2) or the tile size (--tile-size)")


def _check_some_tile(out: Path, cfg: IngestConfig, existed: bool) -> None:
    """Raise if no scene of ``out`` has a tile, removing the dataset first (it is not one; a rerun starts afresh)."""
    meta = [json.loads(p.read_text()) for p in sorted((out / "scenes").glob("*/scene.json"))]
    if any(m["tiles"] for m in meta):
        return
    for name in ("scenes", "catalog.parquet", "splits.gpkg", "dataset.json", "ingest_settings.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
    raise no_tiles_error(meta, cfg)


def ingest(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    labels: str | Path | None = None,
    config: IngestConfig | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Ingest ``inputs`` into the dataset folder ``out`` (resuming a previous run) and finalize it.

    BigEarthNet patches and folders of them become one scene per product (tile and date) and group
    of touching patches, see :mod:`landcover.sources.bigearthnet_scenes`; when every input is BigEarthNet,
    ``tile_size`` defaults to 120 (one tile per patch).

    With ``shard=(I, N)``, N > 1, only the scenes of shard I are ingested (see
    :mod:`landcover.cluster`) and the dataset is not finalized: run :func:`finalize` (``landcover
    ingest --finalize``) once every shard is done. The result then describes the shard's scenes.
    """
    sharded = shard is not None and shard[1] > 1
    if sharded and overwrite:
        raise ConfigError("--overwrite cannot be combined with --shard (shards would delete each other's "
                          "scenes): remove the dataset folder once before submitting the shards")
    cfg = config or IngestConfig()
    out = Path(out)
    label_path = Path(labels) if labels is not None else None
    if not inputs:
        raise ConfigError("no input given: pass one or more Sentinel-2 products")
    with open_inputs(inputs, cfg.bands, nomenclature=cfg.nomenclature, metadata=cfg.bigearthnet_metadata) as products:
        if "tile_size" not in cfg.model_fields_set and all(isinstance(p, BigEarthNetProduct) for p in products):
            cfg = cfg.model_copy(update={"tile_size": PATCH_PIXELS})
        if not cfg.split.by_scene:
            check_block_size(cfg.split, cfg.tile_size * cfg.resolution)
        bands = _dataset_bands(products, cfg)
        products = [p.select(bands) for p in products]
        ids = [scene_id_of(p) for p in products]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"inputs repeat a product ({', '.join(dup)}); give each product once")
        existed = out.exists()
        _prepare(out, _settings(cfg, label_path), overwrite)
        todo = shard_items(list(zip(products, ids, strict=True)), shard, key=lambda item: item[1])
        for n, (product, scene_id) in enumerate(todo):
            if progress:
                progress("scenes", n, len(todo))
            if (out / "scenes" / scene_id / "scene.json").exists():  # finished by an earlier run
                if progress:
                    progress(f"{scene_id}: done before, skipped", 1, 1)
                continue
            _clean_partials(out, scene_id)
            ingest_scene(product, label_path, out, cfg, bands, progress)
        if progress:
            progress("scenes", len(todo), len(todo))
        if not sharded:
            _check_some_tile(out, cfg, existed)
    if shard is not None and sharded:
        return {"shard": list(shard), "scenes": [scene_id for _, scene_id in todo], "total_scenes": len(ids),
                "finalized": False}
    return finalize(out, progress)


def settings_digest(out: Path) -> str:
    """A short hash of a dataset's settings (recorded with models trained on it)."""
    return hashlib.sha256((out / "ingest_settings.json").read_bytes()).hexdigest()[:16]
