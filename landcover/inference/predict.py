"""``landcover predict``: a checkpoint and Sentinel-2 scenes -> Cloud-Optimized GeoTIFF land-cover maps.

The model is rebuilt from the checkpoint's ``landcover`` section (no Lightning). A scene is read
through :class:`~landcover.sources.reader.SceneReader` (the band selection, resampling and baseline offsets
of ingest) or, for an ingested ``scenes/<id>/image.tif``, read as it is.

Streaming, with memory bounded by scene *width* (never height): the scene is padded by reflection
and covered by windows of ``tile`` pixels that start every ``stride = tile - overlap`` pixels,
``margin`` (= overlap) before the scene's first row and column, so every scene pixel lies in the
inner part of some window. Windows are blended with cosine ramps over the overlap; the weights of
the (at most two) windows over a pixel in each direction sum to exactly 1. One *row* of windows is
processed at a time: its probabilities are accumulated in a ``K x tile x padded width`` strip, the
top ``stride`` rows (which no later window touches) are finished and handed to a writer thread, and
the strip moves down. A reader thread prepares the next row of windows while the model runs.
Windows without any valid pixel are skipped; no-data pixels (0 in every band) become 255.
Classification checkpoints predict non-overlapping tiles (each tile gets its most probable class).

Outputs: ``OUT.tif`` (COG, uint8 class ids, 255 = no data, colour table, class names, provenance
tags), ``OUT.qml``, optional ``OUT_probabilities.tif`` (uint8 probability x 255 per class),
``OUT_confidence.tif`` (max probability x 255), ``OUT.png`` (quick look with a legend) and ``OUT.stac.json``
(the map's STAC Item, :mod:`landcover.io.stac_items`). All are written under temporary names and renamed at
the end, the class map last: when ``OUT.tif`` exists, the scene is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio
import rasterio.shutil

from landcover.errors import ConfigError, OutputExistsError
from landcover.inference.engine import Engine, open_engine
from landcover.inference.feeder import Feeder, SceneSource, open_source
from landcover.inference.model_info import ModelInfo
from landcover.inference.sliding import make_plan
from landcover.inference.stream import stream_windows
from landcover.inference.writers import block_writers, output_paths
from landcover.io.aoi import AOI
from landcover.io.grid import GDAL_ENV
from landcover.io.outputs import remove_stale_temporaries, temporaries
from landcover.io.stac_items import write_map_item
from landcover.io.style import style_class_map, to_cog, write_qgis_style, write_quicklook
from landcover.nomenclature import IGNORE, Nomenclature
from landcover.preflight import check_inputs_exist
from landcover.sources.s2meta import LEVEL_NAMES, level_mismatch
from landcover.version import __version__

if TYPE_CHECKING:
    from landcover.inference.checkpoint import LoadedModel

Progress = Callable[[str, int, int], None]
MULTIPLE = 32  # U-Net input sides must be multiples of this
SEGMENTATION_WINDOW = 256  # default smallest window side of a segmentation CNN (its tile size if larger)
BASELINE_WINDOW = 512  # default window side of a per-pixel baseline
CPU_BATCH, GPU_BATCH = 4, 8  # default windows per model call


@dataclass(frozen=True)
class PredictResult:
    """One scene of ``landcover predict``: the files written (``out``: role -> path; ``map`` always), the grid,
    the window geometry and how long it took. ``skipped``: the scene's outputs were complete already
    (:func:`predict_many` without ``overwrite``); only ``input`` and ``out["map"]`` are then known."""

    input: str
    out: dict[str, str]
    grid: dict[str, Any] = field(default_factory=dict)
    product_id: str = ""
    tile: int = 0
    overlap: int = 0
    device: str = ""
    engine: str = ""  # 'torch' or 'onnxruntime'
    precision: str = ""  # 'fp32', 'bf16', 'fp16'
    windows_run: int = 0
    windows_skipped: int = 0
    seconds: float = 0.0
    valid_fraction: float = 0.0
    processing_level: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False
    outside_aoi: bool = False  # skipped because the scene does not overlap the area of interest

    def to_dict(self) -> dict[str, Any]:
        if self.skipped:
            return {"input": self.input, "out": dict(self.out), "skipped": True, "outside_aoi": self.outside_aoi}
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def predict_scene(
    model: str | Path | LoadedModel | Engine,
    input: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    overlap: int | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    probabilities: bool = False,
    confidence: bool = False,
    quicklook: bool = True,
    overwrite: bool = False,
    mask_clouds: bool = False,
    allow_level_mismatch: bool = False,
    aoi: AOI | None = None,
    progress: Progress | None = None,
    sign: Callable[[str], str] | None = None,
) -> PredictResult:
    """Predict one scene into the COG ``out`` (and its side files) with a checkpoint, a loaded model, an engine or
    an exported ``.onnx`` (:func:`~landcover.inference.engine.open_engine`); return what was written. ``input``: a
    product, a stack, a STAC item ``doc.json#<item id>`` (``sign`` rewrites its http(s) hrefs), or the products of
    a model's multi-date composite (:mod:`.composite_source`). A scene of another processing level than the training
    data (L1C vs L2A) is refused (ConfigError) unless ``allow_level_mismatch`` (then warned, as is a scene without
    any valid pixel). With ``aoi`` the map covers the scene grid's window over the AOI's bounds, pixels outside its
    polygons are no data; a scene outside it raises :class:`~landcover.io.aoi.AOIOutsideError`."""
    started, inputs, out = time.perf_counter(), _input_paths(input), Path(out)
    scene = inputs[0] if len(inputs) == 1 else inputs  # one scene, or the products of one composite
    input = scene if isinstance(scene, Path) else Path(", ".join(p.name for p in scene))  # named in messages, tags
    paths = output_paths(out, probabilities=probabilities, confidence=confidence, quicklook=quicklook)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    check_inputs_exist(inputs)
    engine = open_engine(model, device=device, precision=precision)
    lm, batch_size = engine.info, batch_size or default_batch_size(engine.device)
    t, o = window_geometry(lm, tile, overlap, batch_size)
    nom, k = lm.nomenclature, lm.nomenclature.num_classes
    dtype, nodata = ("uint8", IGNORE) if k <= 254 else ("uint16", 65535)
    with (
        rasterio.Env(**GDAL_ENV),
        temporaries() as tmp,
        contextlib.closing(open_source(scene, lm, aoi, sign=sign, clouds=mask_clouds)) as source,
    ):
        warnings = [w for w in [check_level(lm, source.level, input, allow_level_mismatch)] if w]
        out.parent.mkdir(parents=True, exist_ok=True)  # the input is usable (bands, level...): only now
        for path in paths.values():  # what a killed earlier run (e.g. a requeued array task) left of this scene
            remove_stale_temporaries(path)
        grid = source.grid
        plan = make_plan(grid.height, grid.width, t, o)
        gtiffs: dict[str, Path] = {n: tmp(paths[n]) for n in ("map", "probabilities", "confidence") if n in paths}
        with block_writers(gtiffs, grid, k, dtype, nodata) as writers:
            feeder = Feeder(source, plan, batch_size, mask_clouds)
            run, skipped, valid_px = stream_windows(
                engine, plan, feeder, writers, dtype, nodata, _row_progress(progress, out.stem, plan.rows)
            )
        if progress:
            progress(f"{out.stem}: COG", 0, 1)
        valid_fraction = valid_px / max(1, grid.width * grid.height)
        if valid_px == 0:
            warnings.append(_no_data_warning(input, mask_clouds))
        _tag_outputs(gtiffs, nom, _map_tags(lm, source, input, t, o, valid_fraction, warnings, aoi))
        _publish(gtiffs, paths, tmp, nom, nodata, f"{source.product_id} ({nom.name})")
    return PredictResult(
        input=str(input),
        out={name: str(p) for name, p in paths.items()},
        grid=grid.to_dict(),
        product_id=source.product_id,
        tile=t,
        overlap=o,
        device=engine.device,
        engine=engine.name,
        precision=engine.precision,
        windows_run=run,
        windows_skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
        valid_fraction=valid_fraction,
        processing_level={"checkpoint": lm.level, "scene": source.level},
        warnings=warnings,
    )


def _input_paths(input: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(input)] if isinstance(input, (str, Path)) else [Path(p) for p in input]


def default_batch_size(device: str) -> int:
    """Windows per model call: 4 on a CPU (as fast per window as 8 or 16, half the activations' memory: see
    docs/benchmarks.md), 8 on a GPU."""
    return CPU_BATCH if device == "cpu" else GPU_BATCH


def window_geometry(lm: ModelInfo, tile: int | None, overlap: int | None, batch_size: int) -> tuple[int, int]:
    """The window side and overlap in pixels (checked). Segmentation: the checkpoint's tile size rounded down
    to a multiple of 32, at least 256 px (a U-Net is fully convolutional: a window larger than the training
    tile gives each pixel more context and the map fewer seams), a quarter-window overlap; a per-pixel
    baseline: 512-px windows overlapping by twice its features' context. Classification: the tiles, no overlap."""
    seg = lm.task == "segmentation"
    t = int(tile or (lm.tile_size // MULTIPLE * MULTIPLE if seg else lm.tile_size))
    if seg and not tile:  # fully convolutional: context beyond the training tile, fewer window seams
        t = max(t, BASELINE_WINDOW if lm.context else SEGMENTATION_WINDOW)
    if t < 1 or (seg and t % MULTIPLE):
        raise ConfigError(f"tile {t} px: segmentation windows must be a positive multiple of {MULTIPLE} px")
    if not seg and overlap:
        raise ConfigError("--overlap applies to segmentation; classification predicts non-overlapping tiles")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if lm.context:  # each pixel from the window where its whole neighbourhood lies: overlap >= 2 x context
        need = 2 * lm.context
        if overlap is not None and (overlap < need or overlap % 2):
            raise ConfigError(
                f"--overlap {overlap}: this baseline's features need {lm.context} px of context on each side; "
                f"pass an even --overlap of at least {need} (or leave it out)"
            )
        return t, need if overlap is None else int(overlap)
    return t, (t // 4 if overlap is None else int(overlap)) if seg else 0


def _row_progress(progress: Progress | None, stem: str, rows: int) -> Callable[[int], Any]:
    """``progress`` as the stream's callback of finished window rows."""
    return lambda done: progress and progress(f"{stem}: predict", done, rows)


def _no_data_warning(input: Path, mask_clouds: bool) -> str:
    """The warning of a scene without any valid pixel."""
    return (
        f"every pixel of {input.name} is no data (0 in a band{', or cloud' if mask_clouds else ''}): "
        "the map holds no class, only 255; check the input covers data"
    )


def _map_tags(
    lm: ModelInfo,
    source: SceneSource,
    input: Path,
    tile: int,
    overlap: int,
    valid_fraction: float,
    warnings: list[str],
    aoi: AOI | None = None,
) -> dict[str, str]:
    """The GeoTIFF tags of every output: provenance, window geometry, software, valid fraction, warnings, and the
    area of interest and the scene grid's window over it."""
    area = {}
    if aoi is not None and source.window is not None:
        w = source.window
        area = {"AOI": aoi.source, "AOI_WINDOW": f"{w.col_off},{w.row_off},{w.width},{w.height}"}
    return area | {
        **provenance_tags(lm, source, input),
        "TASK": lm.task,
        "TILE_SIZE": str(tile),
        "OVERLAP": str(overlap),
        "BLENDING": (
            "each pixel from the window where it lies deepest (a per-pixel model with "
            f"{lm.context} px of context: exact)"
            if lm.context
            else "cosine ramps over the overlap, weights sum to 1"
        ),
        "SOFTWARE": f"landcover {__version__}",
        "VALID_FRACTION": f"{valid_fraction:.6f}",
        "WARNINGS": " | ".join(warnings) or "none",
    }


def _tag_outputs(gtiffs: dict[str, Path], nom: Nomenclature, tags: dict[str, str]) -> None:
    """Class map style and provenance tags; band descriptions and scales of the probability rasters."""
    with rasterio.open(gtiffs["map"], "r+") as ds:
        style_class_map(ds, nom, **tags)
    if "probabilities" in gtiffs:
        with rasterio.open(gtiffs["probabilities"], "r+") as ds:
            ds.update_tags(SCALE="probability x 255", NOMENCLATURE=nom.name, **tags)
            for i, name in enumerate(nom.class_names, 1):
                ds.set_band_description(i, f"{nom.codes[i - 1]} {name}")
    if "confidence" in gtiffs:
        with rasterio.open(gtiffs["confidence"], "r+") as ds:
            ds.update_tags(SCALE="max class probability x 255", **tags)
            ds.set_band_description(1, "confidence (max class probability x 255)")


def _publish(
    gtiffs: dict[str, Path],
    paths: dict[str, Path],
    tmp: Callable[[Path], Path],
    nom: Nomenclature,
    nodata: int,
    title: str,
) -> None:
    """COGs (and the quick-look) under temporary names, then renamed: the class map last, since its
    final name means 'complete'."""
    finals = {name: tmp(paths[name]) for name in paths if name not in ("qml", "stac")}
    for name in ("probabilities", "confidence"):
        if name in gtiffs:
            to_cog(gtiffs[name], finals[name], "AVERAGE", None)
    to_cog(gtiffs["map"], finals["map"], "MODE", nom)
    if "quicklook" in finals:
        write_quicklook(finals["map"], finals["quicklook"], nom, nodata, title)
    for name in finals:
        if name != "map":
            os.replace(finals[name], paths[name])
    write_qgis_style(paths["map"], nom)
    sidecars = {name: path for name, path in paths.items() if name not in ("map", "stac")}
    write_map_item(paths["map"], nom, raster=finals["map"], sidecars=sidecars)  # <map stem>.stac.json
    os.replace(finals["map"], paths["map"])


def check_level(lm: ModelInfo, level: str, input: Path, allow: bool | None) -> str | None:
    """Refuse (ConfigError) a scene whose processing level differs from the checkpoint's training data.

    ``allow``: the warning to record instead (predict's --allow-level-mismatch); None for a command without
    that flag. Unknown levels (a plain GeoTIFF, an older checkpoint) and mixed training data pass.
    """
    if not level_mismatch(lm.level, level):
        return None
    trained, scene = f"{lm.level} ({LEVEL_NAMES[lm.level]})", f"{level} ({LEVEL_NAMES[level]})"
    if allow:
        return f"checkpoint trained on {trained} applied to {scene} input with --allow-level-mismatch: results are degraded"
    fix = (
        ", or pass --allow-level-mismatch to go ahead anyway (results will be degraded)"
        if allow is not None
        else f" or a checkpoint trained on {level} data"
    )
    raise ConfigError(
        f"checkpoint was trained on {trained} but {input.name} is {scene}: use an {lm.level} product{fix}"
    )


def provenance_tags(lm: ModelInfo, source: SceneSource, input: Path) -> dict[str, str]:
    """Where a map comes from: product id, levels, the input's and the checkpoint's file names (no path of
    the user's machine) and the checkpoint's sha256."""
    return {
        "PRODUCT_ID": source.product_id,
        "PROCESSING_BASELINE": str(source.baseline or "unknown"),
        "PROCESSING_LEVEL": source.level or "unknown",
        "SENSING_TIME": source.sensing_time or "unknown",
        "CHECKPOINT_PROCESSING_LEVEL": lm.level,
        "INPUT": input.name,
        "CHECKPOINT": Path(lm.path).name if lm.path else "in-memory model",
        "CHECKPOINT_SHA256": lm.sha256 or "none",
        "BANDS": json.dumps(lm.bands),
    }
