"""``landcover ingest``: Sentinel-2 products + labels -> an analysis-ready tile dataset.

Layout of a dataset folder::

    ingest_settings.json          settings every scene was made with (a re-run must match)
    scenes/<scene_id>/image.tif   uint16 reflectance x 10000, tiled (tile_size), pixel-interleaved
    scenes/<scene_id>/labels.tif  uint8 class ids on the identical grid, 255 = ignore (+ labels.qml)
    scenes/<scene_id>/tiles.parquet  the scene's part of the catalog
    scenes/<scene_id>/scene.json  provenance; written last: its presence means 'scene complete'
    catalog.parquet, splits.gpkg, dataset.json   merged by :func:`finalize`
    collection.json, scenes/<scene_id>/item.json  a STAC Collection of the scenes, by :func:`finalize`

Each scene is built in a hidden temporary folder and renamed when complete (:mod:`landcover.dataset.scene`),
so an interrupted run leaves only finished scenes, and the next run picks up where it stopped if its
settings match (:mod:`landcover.dataset.settings`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import rasterio

from landcover.cluster import Shard, shard_items
from landcover.dataset.catalog import SplitConfig, lonlat_bounds
from landcover.dataset.catalog import finalize as finalize_catalog
from landcover.dataset.composite_scene import composite_groups, composite_scene_id, ingest_composite_scene
from landcover.dataset.scene import Progress, clean_partials, ingest_scene, scene_id_of
from landcover.dataset.settings import (
    IngestConfig,
    prepare_dataset_folder,
    read_settings,
    remove_dataset_files,
    resplit_settings,
)
from landcover.dataset.splits import check_block_size, grid_area_warning, split_scheme
from landcover.dataset.stac_collection import write_scenes_collection
from landcover.errors import ConfigError, DatasetError
from landcover.io.aoi import aoi_window, no_overlap
from landcover.io.grid import Grid
from landcover.io.outputs import atomic_output
from landcover.nomenclature import default_bands, nomenclature, sentinel2_bands
from landcover.sources.bigearthnet import PATCH_PIXELS
from landcover.sources.bigearthnet_scenes import BigEarthNetProduct, open_inputs
from landcover.sources.clouds import bands_to_read
from landcover.sources.reader import target_grid
from landcover.sources.recipe import split_band
from landcover.sources.s2meta import dataset_level
from landcover.sources.sentinel2 import Product
from landcover.version import __version__


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` returns. A finalized dataset: its scenes, bands, nomenclature, warnings (the
    scenes' and the split's) and ``dataset``, the content of dataset.json. A shard of a sharded ingest
    (``finalized`` False): the shard's scenes out of ``total_scenes``; ``dataset`` is then empty."""

    finalized: bool
    scenes: list[str]  # scene ids
    total_scenes: int
    bands: list[str] = field(default_factory=list)
    nomenclature: str = ""
    warnings: list[str] = field(default_factory=list)
    shard: tuple[int, int] | None = None
    dataset: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_dataset(cls, dataset: dict[str, Any]) -> IngestResult:
        """The result of a finalized dataset, from its dataset.json content."""
        scene_warnings = {w for scene in dataset["scenes"] for w in scene["provenance"]["warnings"]}
        return cls(
            finalized=True,
            scenes=[scene["scene_id"] for scene in dataset["scenes"]],
            total_scenes=len(dataset["scenes"]),
            bands=list(dataset["bands"]),
            nomenclature=dataset["nomenclature"]["name"],
            warnings=sorted(scene_warnings) + list(dataset["split_scheme"].get("warnings", [])),
            dataset=dataset,
        )

    def to_dict(self) -> dict[str, Any]:
        """dataset.json's content; for a shard, the shard, its scenes and the scenes of all shards."""
        if self.finalized:
            return self.dataset
        shard = list(self.shard) if self.shard is not None else None
        return {"shard": shard, "scenes": list(self.scenes), "total_scenes": self.total_scenes, "finalized": False}

    def to_json(self) -> str:
        """The text of dataset.json (for a shard, of its summary, in the same format)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


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


def finalize(out: Path, progress: Progress | None = None, split: SplitConfig | None = None) -> dict[str, Any]:
    """Merge the scenes' catalog parts, assign splits, write splits.gpkg and dataset.json.

    Safe to run twice. It reads the scenes' catalog parts only, never their imagery, so it also
    re-splits a dataset: with ``split`` (new split settings, recorded in ingest_settings.json), or
    with the current scheme for a dataset ingested with an older one.
    """
    settings = read_settings(out)
    if split is not None:
        settings = resplit_settings(out, settings, split)
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
        "band_info": [_band_info(b) for b in bands],
        "scale": "reflectance x 10000 (uint16), 0 = no data",
        "resolution": cfg.resolution,
        "tile_size": cfg.tile_size,
        "nomenclature": nom.to_dict(),
        "normalization": stats,
        "split_scheme": scheme,
        "processing_level": dataset_level(meta),
        "scenes": [
            {
                "scene_id": m["scene_id"],
                "image": f"scenes/{m['scene_id']}/image.tif",
                "labels": f"scenes/{m['scene_id']}/labels.tif",
                "grid": m["grid"],
                "tiles": m["tiles"],
                "input": m["input"],
                "label_source": m["labels"],
                "provenance": m["provenance"],
            }
            for m in meta
        ],
        "config": settings["config"],
        **({"composite": cfg.composite.model_dump(mode="json")} if cfg.composite is not None else {}),
        "software": {"landcover": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__},
    }
    with atomic_output(out / "dataset.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n")
    write_scenes_collection(out)  # collection.json + scenes/<id>/item.json (STAC)
    return dataset


def _band_info(name: str) -> dict[str, Any]:
    """dataset.json's entry of a band (``B04``, or ``B04@spring`` of a composite: with its period)."""
    band, period = split_band(name)
    info = sentinel2_bands()[band]
    entry: dict[str, Any] = {"band": name, "wavelength_nm": info.wavelength_nm, "native_resolution_m": info.resolution}
    return entry if period is None else {**entry, "source_band": band, "period": period}


def no_tiles_error(scenes: list[dict[str, Any]], cfg: IngestConfig) -> DatasetError:
    """The error for scenes (``scene.json`` contents) none of which has a usable tile."""
    names = ", ".join(str(m["scene_id"]) for m in scenes[:3]) + (
        f" and {len(scenes) - 3} more" if len(scenes) > 3 else ""
    )
    if all(m.get("valid_fraction") == 0 for m in scenes):
        return DatasetError(
            f"every pixel of {names} is no data (0 in a band, or masked by the SCL / cloud mask): "
            "there is nothing to ingest; check that the inputs hold imagery"
        )
    threshold = cfg.split.min_valid_fraction
    return DatasetError(
        f"no {cfg.tile_size} x {cfg.tile_size} px tile of {names} has at least split.min_valid_fraction={threshold:g} "
        "of valid, cloud-free pixels, so there is nothing to ingest; use other inputs, or lower the threshold "
        "(--set split.min_valid_fraction=0.2) or the tile size (--tile-size)"
    )


def _check_some_tile(out: Path, cfg: IngestConfig, existed: bool) -> None:
    """Raise if no scene of ``out`` has a tile, removing the dataset first (it is not one; a rerun starts afresh)."""
    meta = [json.loads(p.read_text()) for p in sorted((out / "scenes").glob("*/scene.json"))]
    if any(m["tiles"] for m in meta):
        return
    remove_dataset_files(out)
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
    sign: Callable[[str], str] | None = None,
) -> IngestResult:
    """Ingest ``inputs`` into the dataset folder ``out`` (resuming a previous run) and finalize it.

    A STAC document is one scene per item (``sign`` rewrites its http(s) hrefs, e.g. ``planetary_computer.sign``).

    BigEarthNet patches and folders of them become one scene per product (tile and date) and group
    of touching patches, see :mod:`landcover.sources.bigearthnet_scenes`; when every input is BigEarthNet,
    ``tile_size`` defaults to 120 (one tile per patch).

    With ``shard=(I, N)``, N > 1, only the scenes of shard I are ingested (see
    :mod:`landcover.cluster`) and the dataset is not finalized: run :func:`finalize` (``landcover
    ingest --finalize``) once every shard is done. The result then describes the shard's scenes.
    """
    sharded = shard is not None and shard[1] > 1
    if sharded and overwrite:
        raise ConfigError(
            "--overwrite cannot be combined with --shard (shards would delete each other's "
            "scenes): remove the dataset folder once before submitting the shards"
        )
    cfg = config or IngestConfig()
    out = Path(out)
    label_path = Path(labels) if labels is not None else None
    if not inputs:
        raise ConfigError("no input given: pass one or more Sentinel-2 products")
    # the cloud detector may need bands the dataset does not keep (B10): products keep them until selected below
    opened = cfg.bands if cfg.clouds.detector == "none" else None
    with open_inputs(
        inputs, opened, nomenclature=cfg.nomenclature, metadata=cfg.bigearthnet_metadata, sign=sign
    ) as products:
        if "tile_size" not in cfg.model_fields_set and all(isinstance(p, BigEarthNetProduct) for p in products):
            cfg = cfg.model_copy(update={"tile_size": PATCH_PIXELS})
        if not cfg.split.by_scene:
            check_block_size(cfg.split, cfg.tile_size * cfg.resolution)
        bands = _dataset_bands(products, cfg)
        products = [p.select(bands_to_read(p, bands, cfg.clouds)) for p in products]
        ids = [scene_id_of(p) for p in products]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"inputs repeat a product ({', '.join(dup)}); give each product once")
        products, ids, outside = _in_aoi(products, ids, cfg)
        jobs = _scene_jobs(products, ids, cfg)
        existed = out.exists()
        prepare_dataset_folder(out, cfg, label_path, overwrite)
        todo = shard_items(jobs, shard, key=lambda item: item[0])
        for n, (scene_id, group) in enumerate(todo):
            if progress:
                progress("scenes", n, len(todo))
            if (out / "scenes" / scene_id / "scene.json").exists():  # finished by an earlier run
                if progress:
                    progress(f"{scene_id}: done before, skipped", 1, 1)
                continue
            clean_partials(out, scene_id)
            if cfg.composite is None:
                ingest_scene(group[0], label_path, out, cfg, bands, progress)
            else:
                ingest_composite_scene(group, label_path, out, cfg, bands, progress)
        if progress:
            progress("scenes", len(todo), len(todo))
        if not sharded:
            _check_some_tile(out, cfg, existed)
    if shard is not None and sharded:
        return IngestResult(
            finalized=False, scenes=[scene_id for scene_id, _ in todo], total_scenes=len(jobs), shard=shard
        )
    result = IngestResult.of_dataset(finalize(out, progress))
    return replace(result, warnings=[*outside, *result.warnings]) if outside else result


def _scene_jobs(products: list[Product], ids: list[str], cfg: IngestConfig) -> list[tuple[str, list[Product]]]:
    """(scene id, its products) of every scene to make: one per product, or one per composite group."""
    if cfg.composite is None:
        return [(scene_id, [product]) for product, scene_id in zip(products, ids, strict=True)]
    return [(composite_scene_id(g, cfg.composite), g) for g in composite_groups(products, cfg.composite)]


def _in_aoi(products: list[Product], ids: list[str], cfg: IngestConfig) -> tuple[list[Product], list[str], list[str]]:
    """The products that overlap the AOI of ``cfg`` (all without one), their ids, and a note per product left out.
    Raises :class:`AOIError` naming both extents when none overlaps."""
    if cfg.aoi is None:
        return products, ids, []
    aoi = cfg.aoi.to_aoi()
    kept: list[tuple[Product, str]] = []
    outside: list[tuple[str, Grid]] = []
    for product, scene_id in zip(products, ids, strict=True):
        grid = target_grid(product, list(product.bands), cfg.resolution)
        if aoi_window(grid, aoi) is None:
            outside.append((scene_id, grid))
        else:
            kept.append((product, scene_id))
    if not kept:
        raise no_overlap(aoi, outside)
    notes = [f"{scene_id} does not overlap the area of interest {aoi.source}: skipped" for scene_id, _ in outside]
    return [p for p, _ in kept], [i for _, i in kept], notes
