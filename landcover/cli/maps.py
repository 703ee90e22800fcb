"""The map commands: ``predict``, ``explain`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from landcover.cli.common import (
    SHARD_HELP,
    AOIOption,
    BBoxOption,
    CheckpointArgument,
    CodeColumnOption,
    DeviceOption,
    FromListOption,
    ModelArgument,
    PrecisionOption,
    SignOption,
    app,
    err,
    handles_errors,
    input_list,
    out,
    progress_bars,
    read_aoi_options,
)

if TYPE_CHECKING:
    from landcover.inference.predict import PredictResult
    from landcover.io.aoi import AOI


@app.command()
@handles_errors
def evaluate(
    prediction: Annotated[
        Path,
        typer.Argument(metavar="PREDICTION", help="Class-map GeoTIFF to score (255 = no data), e.g. from predict."),
    ],
    labels_path: Annotated[
        Path,
        typer.Argument(
            metavar="LABELS", help="CORINE raster/vector (any CRS), or a class map on the same grid (labels.tif)."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder (metrics.json, report.md, PNGs, GPKG).")],
    nomenclature: Annotated[
        str | None, typer.Option(help="Classes to score in (default: the prediction's NOMENCLATURE tag).")
    ] = None,
    code_column: CodeColumnOption = None,
    tile_size: Annotated[
        int, typer.Option(min=1, help="Side in pixels of the tiles of tiles_iou.gpkg (the bootstrap's units).")
    ] = 256,
    block_size: Annotated[
        int | None,
        typer.Option(
            help="Side in pixels of the spatial blocks the bootstrap resamples (>= --tile-size; default 4 tiles)."
        ),
    ] = None,
    replicates: Annotated[int, typer.Option(help="Bootstrap replicates of the 95 % intervals (>= 10).")] = 2000,
    compare: Annotated[
        Path | None, typer.Option(help="Another class map on the same grid: paired bootstrap of PREDICTION minus it.")
    ] = None,
    raster_values: Annotated[
        str, typer.Option(help="For CORINE rasters: 'codes' (111..523), 'indices' (1..44) or 'auto'.")
    ] = "auto",
    all_touched: Annotated[bool, typer.Option(help="Vector labels: burn every pixel a polygon touches.")] = False,
    aoi: AOIOption = None,
    bbox: BBoxOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
) -> None:
    """Score a land-cover map against CORINE labels: IoU, kappa, confusion matrix, per-tile error map."""
    from landcover.preflight import check_inputs_exist, check_output_path

    check_inputs_exist([prediction, labels_path, *([compare] if compare else [])])
    check_output_path(out_dir)
    area = read_aoi_options(aoi, bbox)
    from landcover.evaluation.evaluate import evaluate_maps

    with progress_bars() as update:
        metrics = evaluate_maps(
            prediction,
            labels_path,
            out_dir,
            nomenclature_name=nomenclature,
            code_column=code_column,
            tile_size=tile_size,
            block_size=block_size,
            replicates=replicates,
            compare=compare,
            raster_values=raster_values,
            all_touched=all_touched,
            overwrite=overwrite,
            aoi=area,
            progress=lambda done, total: update("evaluate", done, total),
        )
    _report_evaluation(metrics.metrics, out_dir)


def _report_evaluation(metrics: dict[str, Any], out_dir: Path) -> None:
    """The scores with their 95 % intervals (and the --compare difference) on the console."""
    s, px = metrics["scores"], metrics["pixels"]
    iv = s["intervals"]

    def ci(key: str) -> str:
        return "" if iv[key]["low"] is None else f" ({iv[key]['low']:.3f}-{iv[key]['high']:.3f})"

    out.print(
        f"mIoU {s['miou']:.3f}{ci('miou')}, mIoU over reference classes {s['miou_reference']:.3f}"
        f"{ci('miou_reference')}, overall accuracy {s['overall_accuracy']:.3f}{ci('overall_accuracy')} "
        f"[95 % CI, {iv['n_blocks']} blocks], kappa "
        f"{s['kappa'] if s['kappa'] is None else format(s['kappa'], '.3f')} on {px['evaluated']:,} of "
        f"{px['total']:,} pixels ({metrics['nomenclature']['name']}); report {out_dir / 'report.md'}"
    )
    if iv["note"]:
        err.print(f"note: {iv['note']}")
    if "comparison" in s:
        d = s["comparison"]["miou"]
        out.print(
            f"mIoU minus {s['comparison']['a']}: {d['estimate']:+.3f} "
            f"(95 % CI {d['low']:+.3f} to {d['high']:+.3f}; better in {d['share_b_better']:.0%} of replicates)"
        )


OVERLAP_HELP = "Window overlap in pixels (default: tile / 4; a lightgbm baseline: twice its features' context)."
TILE_HELP = (
    "Window side in pixels (default: segmentation max(256, the checkpoint's tile size); classification its tile size)."
)


MosaicOption = Annotated[
    Path | None,
    typer.Option(
        help="With --aoi/--bbox: also mosaic the scenes' maps into this one COG (per pixel the most "
        "confident valid map; implies --confidence)."
    ),
]
MosaicCrsOption = Annotated[
    str | None, typer.Option(help="CRS of the --mosaic, e.g. EPSG:32631 (default: the AOI's UTM zone).")
]


@app.command()
@handles_errors
def predict(
    checkpoint: ModelArgument,
    out_path: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .tif for one input; a folder (one <scene>.tif each) for several or --from-list."
        ),
    ],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Sentinel-2 products (SAFE dir/zip, band folder, GeoTIFF), STAC documents (one map per item, "
            "named after it; doc.json#<item id> for one) or ingested scenes/<id>/image.tif."
        ),
    ] = None,
    from_list: FromListOption = None,
    shard: Annotated[str | None, typer.Option(help=SHARD_HELP)] = None,
    probabilities: Annotated[
        bool, typer.Option(help="Also write OUT_probabilities.tif (uint8 x 255 per class).")
    ] = False,
    confidence: Annotated[bool, typer.Option(help="Also write OUT_confidence.tif (max probability x 255).")] = False,
    overlap: Annotated[int | None, typer.Option(min=0, help=OVERLAP_HELP)] = None,
    tile: Annotated[int | None, typer.Option(min=1, help=TILE_HELP)] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Windows per model call (default 4 on a CPU, 8 on a GPU).")
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    mask_clouds: Annotated[bool, typer.Option(help="Write 255 where SCL, cloud mask or detector see clouds.")] = False,
    quicklook: Annotated[bool, typer.Option(help="Write a PNG quick look with a legend next to each map.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (default: skip finished scenes).")] = False,
    allow_level_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-level-mismatch",
            help="Predict scenes of another processing level (L1C/L2A) than the checkpoint's "
            "training data (refused by default: results are degraded); warned and recorded in the map's tags.",
        ),
    ] = False,
    aoi: AOIOption = None,
    bbox: BBoxOption = None,
    mosaic: MosaicOption = None,
    mosaic_crs: MosaicCrsOption = None,
    sign: SignOption = None,
) -> None:
    """Predict land-cover maps (Cloud-Optimized GeoTIFFs with palette and class names) for scenes."""
    from landcover.preflight import check_device, check_output_path
    from landcover.sources.stac_refs import sign_hook

    check_device(device)
    hook = sign_hook(sign)
    check_output_path(out_path, folder=out_path.suffix.lower() not in (".tif", ".tiff"))
    area = read_aoi_options(aoi, bbox)
    _check_mosaic_options(area is not None, mosaic, mosaic_crs)
    items, part = _predict_inputs(checkpoint, inputs, from_list, shard)

    if part is not None and part[1] > 1:
        items = _shard_scenes(items, part, out_path)
        if not items:
            return
    batch = from_list is not None or (part is not None and part[1] > 1)  # --out is then a folder
    options: dict[str, Any] = dict(
        overlap=overlap,
        tile=tile,
        batch_size=batch_size,
        device=device,
        precision=precision,
        probabilities=probabilities,
        confidence=confidence or mosaic is not None,
        quicklook=quicklook,
        aoi=area,
        mask_clouds=mask_clouds,
        allow_level_mismatch=allow_level_mismatch,
        sign=hook,
    )
    summaries = _run_predict(checkpoint, items, out_path, batch, overwrite, options)
    _report_maps(summaries)
    if mosaic is not None and area is not None:
        _write_mosaic(summaries, area, mosaic, mosaic_crs)


def _run_predict(
    checkpoint: Path, items: list[Path], out_path: Path, batch: bool, overwrite: bool, options: dict[str, Any]
) -> list[PredictResult]:
    """One scene into the file ``out_path``, or each scene into the folder ``out_path``."""
    from landcover.errors import ConfigError
    from landcover.inference.batch import predict_many
    from landcover.inference.predict import predict_scene

    is_file = out_path.suffix.lower() in (".tif", ".tiff")
    single = is_file and not batch
    if batch and is_file:
        raise ConfigError(f"--out {out_path} is a file name but there are {len(items)} inputs; pass a folder")
    with progress_bars() as update:
        if single:  # several inputs make one map only with a model of multi-date composites (else one line, exit 2)
            scene = items[0] if len(items) == 1 else items
            return [predict_scene(checkpoint, scene, out_path, overwrite=overwrite, progress=update, **options)]
        return predict_many(checkpoint, items, out_path, overwrite=overwrite, progress=update, **options)


def _write_mosaic(summaries: list[PredictResult], area: AOI, mosaic: Path, crs: str | None) -> None:
    """``--mosaic``: the maps of the scenes over the AOI merged into one COG, and its line."""
    from landcover.inference.mosaic import mosaic_maps

    done = [Path(s.out["map"]) for s in summaries if not s.outside_aoi]
    result = mosaic_maps(done, area, mosaic, crs=crs)
    g = result.grid
    out.print(
        f"wrote {result.out} (mosaic of {len(done)} map(s), {g['width']} x {g['height']} px in {g['crs']}, "
        f"{result.valid_fraction:.1%} with a class)"
    )


def _check_mosaic_options(has_aoi: bool, mosaic: Path | None, mosaic_crs: str | None) -> None:
    """--mosaic needs an AOI; --mosaic-crs needs --mosaic and a CRS pyproj knows (checked before torch is imported)."""
    from landcover.errors import ConfigError

    if mosaic is not None and not has_aoi:
        raise ConfigError("--mosaic needs an area of interest: pass --aoi FILE or --bbox minx,miny,maxx,maxy")
    if mosaic_crs is not None and mosaic is None:
        raise ConfigError("--mosaic-crs is the CRS of the --mosaic; pass --mosaic OUT.tif too")
    if mosaic is not None and mosaic.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"--mosaic {mosaic} must be a .tif file name")
    if mosaic_crs is not None:
        from pyproj import CRS

        try:
            CRS.from_user_input(mosaic_crs)
        except Exception:
            raise ConfigError(f"--mosaic-crs {mosaic_crs!r} is not a CRS; give it as EPSG:32631 or similar") from None


def _predict_inputs(
    checkpoint: Path, inputs: list[Path] | None, from_list: Path | None, shard: str | None
) -> tuple[list[Path], tuple[int, int] | None]:
    """The scenes to predict (arguments, then --from-list) and the shard, checked before torch is imported."""
    from landcover.cluster import parse_shard
    from landcover.preflight import check_checkpoint_exists, check_inputs_exist

    items = input_list(inputs, from_list, "Sentinel-2 products or ingested image.tif files, or --from-list FILE")
    part = parse_shard(shard)
    check_checkpoint_exists(checkpoint, onnx=True)  # before torch is imported
    check_inputs_exist(items)
    from landcover.sources.stac import expand_references

    return [Path(p) for p in expand_references(items)], part


def _shard_scenes(items: list[Path], part: tuple[int, int], out_path: Path) -> list[Path]:
    """This shard's share of the scenes (by scene name); says so when it has none."""
    from landcover.cluster import shard_items
    from landcover.errors import ConfigError
    from landcover.inference.batch import scene_name

    if out_path.suffix.lower() in (".tif", ".tiff"):
        raise ConfigError(f"--out {out_path} is a file name but --shard splits a batch; pass a folder")
    items = shard_items(items, part, key=lambda p: scene_name(p))
    if not items:
        out.print(f"shard {part[0]}/{part[1]}: no scene (there are fewer scenes than shards)")
    return items


def _report_maps(summaries: list[PredictResult]) -> None:
    """The warnings of a prediction (each once) and one line per scene: written or skipped."""
    for warning in dict.fromkeys(w for s in summaries for w in s.warnings):  # each once
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    for s in summaries:
        if s.outside_aoi:
            out.print(f"skipped {s.input}: it does not overlap the area of interest")
            continue
        if s.skipped:
            out.print(f"skipped {s.input}: {s.out['map']} is complete (pass --overwrite to redo it)")
            continue
        extra = ", ".join(Path(p).name for name, p in s.out.items() if name != "map")
        out.print(
            f"wrote {s.out['map']} ({s.grid['width']} x {s.grid['height']} px, {s.windows_run} windows, "
            f"{s.windows_skipped} empty skipped, {s.seconds:.1f} s on {s.device}; {extra})"
        )


@app.command()
@handles_errors
def explain(
    checkpoint: CheckpointArgument,
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="A Sentinel-2 product or an ingested image.tif.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps, overlay.png and explain.json.")],
    classes: Annotated[
        str | None,
        typer.Option(help="Classification: codes or names, comma-separated, or 'all' (default: the classes found)."),
    ] = None,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    allow_level_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-level-mismatch",
            help="Explain a scene of another processing level (L1C/L2A) than the checkpoint's "
            "training data (refused otherwise; a warning is printed and recorded).",
        ),
    ] = False,
) -> None:
    """Show what a model relies on: Grad-CAM heat maps (classification) or entropy/margin maps (segmentation)."""
    from landcover.preflight import check_checkpoint_exists, check_device, check_inputs_exist, check_output_path

    check_device(device)
    check_checkpoint_exists(checkpoint)  # before torch is imported
    check_inputs_exist([input_path])
    check_output_path(out_dir)

    from landcover.inference.explain import explain as run_explain
    from landcover.inference.explain import explain_command_summary

    with progress_bars() as update:
        result = run_explain(
            checkpoint,
            input_path,
            out_dir,
            classes=classes,
            device=device,
            overwrite=overwrite,
            allow_level_mismatch=allow_level_mismatch,
            progress=update,
        )
    for warning in result.get("warnings", []):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    out.print(explain_command_summary(result), highlight=False)
