"""The settings of an ingest run (:class:`IngestConfig`) and the dataset folder's ``ingest_settings.json``.

Every scene of a dataset is made with the same settings: the file records them, a re-run (a resumed
ingest, another shard) must match them, and ``landcover ingest --finalize`` re-splits by changing its
``split`` section only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import shapely
import shapely.errors
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from landcover.config import apply_override
from landcover.dataset.catalog import SplitConfig
from landcover.errors import ConfigError, DatasetError, OutputExistsError
from landcover.io.aoi import AOI
from landcover.io.outputs import atomic_output
from landcover.nomenclature import nomenclature, normalize_band_name
from landcover.sources.bigearthnet import PATCH_PIXELS
from landcover.sources.clouds import CloudConfig
from landcover.sources.recipe import CompositeRecipe
from landcover.version import __version__

SETTINGS_FILE = "ingest_settings.json"
DATASET_FILES = ("scenes", "catalog.parquet", "splits.gpkg", "dataset.json", "collection.json", SETTINGS_FILE)


class AOISettings(BaseModel):
    """An area of interest as settings record it: where it came from, its CRS and its polygons as WKT."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="The --aoi file's name or the --bbox given")
    crs: str = Field(description="CRS of the WKT, e.g. EPSG:4326")
    wkt: str = Field(description="The polygons (one geometry) as WKT")

    @classmethod
    def of(cls, aoi: AOI) -> AOISettings:
        return cls.model_validate(aoi.to_setting())

    def to_aoi(self) -> AOI:
        try:
            geometry = shapely.from_wkt(self.wkt)
        except shapely.errors.GEOSException as exc:
            raise ConfigError(f"aoi.wkt is not valid WKT ({exc}); fix it or pass --aoi/--bbox") from exc
        return AOI(geometry, self.crs, self.source)


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
        1,
        ge=1,
        le=22,
        description="ZSTD/DEFLATE level of image.tif and its overviews: 1 is several times faster "
        "to write than GDAL's default (9) for files about 10 % larger",
    )
    overviews: bool = Field(
        False,
        description="Also build overviews of image.tif (average): QGIS then draws whole scenes quickly, but "
        "on a full tile it costs about as much CPU as decoding the product. labels.tif always gets (cheap) overviews",
    )
    clouds: CloudConfig = Field(
        CloudConfig(), description="Cloud masking: a detector for products without an SCL (L1C), dilation, probability"
    )
    labels: LabelOptions = LabelOptions()
    split: SplitConfig = SplitConfig()
    aoi: AOISettings | None = Field(None, description="Only the part of each scene over these polygons (--aoi/--bbox)")
    bigearthnet_metadata: Path | None = Field(
        None,
        description="BigEarthNet v2 metadata.parquet (patch labels, official split); default: one above the patches",
    )
    composite: CompositeRecipe | None = Field(
        None, description="Multi-date composites: periods, method, grouping (see landcover.sources.recipe)"
    )

    def reader_options(self) -> dict[str, Any]:
        """How every product is read (SceneReader's keyword arguments; a composite's readers take the same)."""
        return {
            "resolution": self.resolution,
            "resampling": self.resampling,
            "harmonize": self.harmonize,
            "scl_invalid": self.scl_invalid,
            "aoi": None if self.aoi is None else self.aoi.to_aoi(),
            "clouds": self.clouds,
        }

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


def remove_dataset_files(out: Path) -> None:
    """Remove what ingest writes into ``out`` (scenes, catalog, splits, dataset.json, settings); keep the rest."""
    for name in DATASET_FILES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def prepare_dataset_folder(out: Path, cfg: IngestConfig, labels: Path | None, overwrite: bool) -> None:
    """Create ``out`` or check it holds a dataset made with the same settings (``cfg`` and the labels' name).

    A folder whose settings file exists but that holds no finished scene (a run that failed on bad labels
    or a bad mapping) is not a dataset yet: its settings are replaced by these.

    Safe when several shards (array tasks) start at once: the settings file is created atomically
    (the first one wins) and every other shard checks it holds the same settings.
    """
    settings = _settings(cfg, labels)
    marker = out / SETTINGS_FILE
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
            remove_dataset_files(out)
    elif out.exists() and any(p.name != "scenes" and not p.name.startswith(".") for p in out.iterdir()):
        raise OutputExistsError(f"{out} exists and is not a landcover dataset; choose an empty or new --out")
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        _create_settings_file(out, settings)


def _create_settings_file(out: Path, settings: dict[str, Any]) -> None:
    """Write ``ingest_settings.json`` atomically; if another shard was first, check it wrote the same."""
    marker = out / SETTINGS_FILE
    tmp = out / f".{marker.name}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        os.link(tmp, marker)  # atomic, and fails if another shard created it first
    except FileExistsError:
        if json.loads(marker.read_text()) != settings:
            raise OutputExistsError(
                f"{out} was just created by another run with other settings; give every shard the same settings"
            ) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_settings(out: Path) -> dict[str, Any]:
    """The contents of ``out/ingest_settings.json``; a DatasetError if ``out`` is not a dataset."""
    marker = out / SETTINGS_FILE
    if not marker.is_file():
        raise DatasetError(f"{out} is not a landcover dataset (no {marker.name}); run `landcover ingest` first")
    settings: dict[str, Any] = json.loads(marker.read_text())
    return settings


def resplit_settings(out: Path, settings: dict[str, Any], split: SplitConfig) -> dict[str, Any]:
    """Record new split settings in ingest_settings.json (later ingests into ``out`` use them)."""
    old = SplitConfig.model_validate(settings["config"].get("split", {}))
    if split.min_valid_fraction != old.min_valid_fraction:
        raise ConfigError(
            f"split.min_valid_fraction decides which tiles exist, so it cannot change when "
            f"re-splitting ({old.min_valid_fraction} -> {split.min_valid_fraction}); re-run "
            f"`landcover ingest --overwrite --out {out}` with the new value"
        )
    settings = {**settings, "config": {**settings["config"], "split": split.model_dump(mode="json")}}
    with atomic_output(out / SETTINGS_FILE, overwrite=True) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return settings


def split_settings(out: Path, overrides: Sequence[str]) -> SplitConfig:
    """The split settings of the dataset ``out`` with ``split.KEY=VALUE`` overrides (a re-split)."""
    data = {"split": dict(read_settings(out)["config"].get("split", {}))}
    for assignment in overrides:
        if not assignment.strip().startswith("split."):
            raise ConfigError(
                f"--finalize re-splits only: {assignment!r} is not a split.* setting; other "
                "settings need a new ingest (`landcover ingest ... --overwrite`)"
            )
        apply_override(data, assignment)
    return SplitConfig.from_mapping(data["split"])


def settings_digest(out: Path) -> str:
    """A short hash of a dataset's settings (recorded with models trained on it)."""
    return hashlib.sha256((out / SETTINGS_FILE).read_bytes()).hexdigest()[:16]
