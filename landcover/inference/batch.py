"""``landcover predict`` of several scenes: one map per scene in a folder, named after the scene, finished
scenes skipped, scenes outside the area of interest noted and skipped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from landcover.errors import ConfigError
from landcover.inference.engine import open_engine
from landcover.inference.feeder import is_ingested_stack
from landcover.inference.predict import PredictResult, Progress, predict_scene
from landcover.inference.writers import output_paths
from landcover.io.aoi import AOIOutsideError, no_overlap
from landcover.io.grid import Grid
from landcover.preflight import check_inputs_exist
from landcover.sources.stac_refs import split_reference

if TYPE_CHECKING:
    from landcover.inference.checkpoint import LoadedModel
    from landcover.inference.engine import Engine


def scene_name(path: str | Path) -> str:
    """Output name of an input: the item id of a STAC item ``doc.json#<item id>``, the scene folder of an
    ingested image.tif, else the product's name."""
    _, item_id = split_reference(path)
    if item_id is not None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", item_id).strip("._") or "scene"
    p = Path(path)
    while p.name.upper() in ("IMG_DATA", "R10M", "R20M", "R60M") and p.parent != p:
        p = p.parent  # a band folder inside a product: name it after the product folder
    name = p.parent.name if p.name == "image.tif" and is_ingested_stack(p) else p.name
    for suffix in (".zip", ".SAFE", ".tiff", ".tif", ".jp2"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "scene"


def predict_many(
    checkpoint_or_loaded_model: str | Path | LoadedModel | Engine,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> list[PredictResult]:
    """Predict each input into ``out_dir/<scene>.tif``, skipping scenes whose outputs are complete. With a model
    trained on multi-date composites, the raw products make one map per composite (per MGRS tile, or one of all:
    the recipe's ``group``), named after the composite scene (``<tile>_<start>_<end>_composite``)."""
    if not inputs:
        raise ConfigError("no input given: pass Sentinel-2 products, ingested image.tif files, or --from-list FILE")
    check_inputs_exist(inputs)  # before any output is created
    lm = checkpoint_or_loaded_model  # loaded when a scene needs it: a finished batch costs nothing
    jobs: list[tuple[str, Any]] = [(scene_name(p), p) for p in inputs]
    if sum(not is_ingested_stack(Path(p)) for p in inputs) > 1:  # raw products: a composite model groups them
        lm = open_engine(lm, device=options.get("device", "auto"), precision=options.get("precision", "auto"))
        if lm.info.composite is not None:
            jobs = composite_jobs(inputs, lm, options.get("sign"))
    return _predict_jobs(lm, jobs, out_dir, overwrite, progress, options)


def composite_jobs(inputs: Sequence[str | Path], engine: Engine, sign: Any) -> list[tuple[str, Any]]:
    """(name, input) of each map a composite model makes: ingested stacks alone, raw products per composite."""
    from landcover.inference.composite_source import composite_inputs

    raw = [p for p in inputs if not is_ingested_stack(Path(p))]
    stacks = [(scene_name(p), p) for p in inputs if is_ingested_stack(Path(p))]
    return stacks + [(name, group) for name, group in composite_inputs(raw, engine.info, sign)]


def _predict_jobs(
    lm: Any, jobs: list[tuple[str, Any]], out_dir: str | Path, overwrite: bool, progress: Any, options: dict[str, Any]
) -> list[PredictResult]:
    names = [name for name, _ in jobs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"inputs repeat a scene ({', '.join(dup)}); give each scene once")
    flags = {k: options[k] for k in ("probabilities", "confidence", "quicklook") if k in options}
    summaries: list[PredictResult] = []
    outside: list[tuple[str, Grid]] = []
    for i, (name, path) in enumerate(jobs):
        target = Path(out_dir) / f"{name}.tif"
        if progress:
            progress("scenes", i, len(jobs))
        if not overwrite and all(p.exists() for p in output_paths(target, **flags).values()):
            summaries.append(PredictResult(input=_label(path), out={"map": str(target)}, skipped=True))
            continue
        lm = open_engine(lm, device=options.get("device", "auto"), precision=options.get("precision", "auto"))
        try:
            summaries.append(predict_scene(lm, path, target, overwrite=True, progress=progress, **options))
        except AOIOutsideError as exc:  # a scene beside the AOI: noted, not an error (unless every scene is)
            outside += exc.extents
            summaries.append(PredictResult(_label(path), {"map": str(target)}, skipped=True, outside_aoi=True))
    if progress:
        progress("scenes", len(jobs), len(jobs))
    if summaries and all(s.outside_aoi for s in summaries):
        raise no_overlap(options["aoi"], outside)
    return summaries


def _label(path: str | Path | list[Path]) -> str:
    """An input as PredictResult names it: its path, or the paths of a composite's products."""
    return ", ".join(str(p) for p in path) if isinstance(path, list) else str(path)
