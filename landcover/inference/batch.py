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
    """Predict each input into ``out_dir/<scene>.tif``, skipping scenes whose outputs are complete."""
    if not inputs:
        raise ConfigError("no input given: pass Sentinel-2 products, ingested image.tif files, or --from-list FILE")
    names = [scene_name(p) for p in inputs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"inputs repeat a scene ({', '.join(dup)}); give each scene once")
    check_inputs_exist(inputs)  # before any output is created
    lm = checkpoint_or_loaded_model  # loaded when a scene needs it: a finished batch costs nothing
    flags = {k: options[k] for k in ("probabilities", "confidence", "quicklook") if k in options}
    summaries: list[PredictResult] = []
    outside: list[tuple[str, Grid]] = []
    for i, (path, name) in enumerate(zip(inputs, names, strict=True)):
        target = Path(out_dir) / f"{name}.tif"
        if progress:
            progress("scenes", i, len(inputs))
        if not overwrite and all(p.exists() for p in output_paths(target, **flags).values()):
            summaries.append(PredictResult(input=str(path), out={"map": str(target)}, skipped=True))
            continue
        lm = open_engine(lm, device=options.get("device", "auto"), precision=options.get("precision", "auto"))
        try:
            summaries.append(predict_scene(lm, path, target, overwrite=True, progress=progress, **options))
        except AOIOutsideError as exc:  # a scene beside the AOI: noted, not an error (unless every scene is)
            outside += exc.extents
            summaries.append(PredictResult(str(path), {"map": str(target)}, skipped=True, outside_aoi=True))
    if progress:
        progress("scenes", len(inputs), len(inputs))
    if summaries and all(s.outside_aoi for s in summaries):
        raise no_overlap(options["aoi"], outside)
    return summaries
