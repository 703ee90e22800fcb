"""The data commands: ``labels`` (CORINE on any grid) and ``ingest`` (products + labels -> tile dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from landcover.cli.common import (
    NOMENCLATURE_HELP,
    SHARD_HELP,
    AOIOption,
    BBoxOption,
    CodeColumnOption,
    FromListOption,
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
    from landcover.dataset.ingest import IngestResult


@app.command()
@handles_errors
def labels(
    source: Annotated[Path, typer.Argument(help="CORINE raster (any CRS) or vector with CODE_18.")],
    like: Annotated[Path, typer.Option("--like", help="Reference raster whose grid the labels take.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF of class ids.")],
    nomenclature: Annotated[str, typer.Option(help=NOMENCLATURE_HELP)] = "level3",
    code_column: Annotated[
        str | None, typer.Option(help="Attribute with the CLC codes (default: CODE_18, CODE_12, ...).")
    ] = None,
    all_touched: Annotated[
        bool, typer.Option(help="Burn every pixel a polygon touches (default: pixel centres).")
    ] = False,
    raster_values: Annotated[
        str, typer.Option(help="For raster sources: 'codes' (111..523), 'indices' (1..44) or 'auto'.")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Put CORINE Land Cover labels on exactly the grid of a reference raster."""
    from landcover.preflight import check_output_path

    check_output_path(out_path, folder=False)
    from landcover.sources.labels import labels_like

    with progress_bars() as update:
        summary = labels_like(
            source,
            like,
            out_path,
            nomenclature_name=nomenclature,
            code_column=code_column,
            all_touched=all_touched,
            raster_values=raster_values,
            overwrite=overwrite,
            progress=lambda done, total: update("labels", done, total),
        )
    out.print(
        f"wrote {summary.out} ({summary.nomenclature}, {len(summary.class_pixels)} classes present, "
        f"{summary.labelled_fraction:.1%} of {summary.pixels} pixels labelled) from {summary.source}"
    )


IngestShardOption = Annotated[
    str | None, typer.Option(help=SHARD_HELP + " Sharded runs leave --finalize to a last step.")
]
FinalizeOption = Annotated[
    bool,
    typer.Option(
        "--finalize",
        help="Only merge the finished scenes' catalogs into catalog.parquet, splits.gpkg and "
        "dataset.json (after all shards; safe to run twice). With --seed, --block-size, --split-by-scene or "
        "--set split.KEY=VALUE it re-splits the dataset without reading its imagery.",
    ),
]


@app.command()
@handles_errors
def ingest(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder (created, or resumed).")],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Sentinel-2 products: SAFE dir/zip, band folder, GeoTIFF; STAC documents (Item, ItemCollection, "
            "catalog.json, .parquet; one scene per item); BigEarthNet patch folders or a folder of them."
        ),
    ] = None,
    labels_path: Annotated[
        Path | None, typer.Option("--labels", "-l", help="CORINE raster/vector, or another vector with --mapping.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings (see configs/ingest.yaml).")] = None,
    bands: Annotated[
        str | None, typer.Option(help="Comma-separated bands in stack order, e.g. B02,B03,B04,B08.")
    ] = None,
    nomenclature: Annotated[str | None, typer.Option(help=NOMENCLATURE_HELP)] = None,
    tile_size: Annotated[
        int | None, typer.Option(min=1, help="Training tile side in pixels (default 256; 120 = one BigEarthNet patch).")
    ] = None,
    code_column: CodeColumnOption = None,
    mapping: Annotated[
        Path | None, typer.Option(help="CSV mapping --code-column values onto the nomenclature.")
    ] = None,
    block_size: Annotated[float | None, typer.Option(help="Spatial split block side in metres.")] = None,
    split_by_scene: Annotated[bool | None, typer.Option(help="Assign whole scenes to splits.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split assignment.")] = None,
    bigearthnet_metadata: Annotated[
        Path | None, typer.Option(help="BigEarthNet v2 metadata.parquet (default: one above the patches).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a dataset made with other settings.")] = False,
    from_list: FromListOption = None,
    aoi: AOIOption = None,
    bbox: BBoxOption = None,
    shard: IngestShardOption = None,
    finalize: FinalizeOption = False,
    sign: SignOption = None,
) -> None:
    """Turn Sentinel-2 products and CORINE labels into an analysis-ready tile dataset."""
    from landcover.cluster import parse_shard
    from landcover.config import load_config
    from landcover.dataset.ingest import ingest as run_ingest
    from landcover.dataset.settings import IngestConfig
    from landcover.errors import ConfigError
    from landcover.preflight import check_inputs_exist, check_output_path
    from landcover.sources.stac_refs import sign_hook

    check_output_path(out_dir)
    hook = sign_hook(sign)
    check_inputs_exist([p for p in (labels_path, mapping, bigearthnet_metadata) if p is not None])
    if finalize:
        if inputs or from_list:
            raise ConfigError("--finalize takes no inputs: it merges the scenes already in --out")
        options = {"seed": seed, "block_size_m": block_size, "by_scene": split_by_scene}
        _finalize(out_dir, [f"split.{k}={v}" for k, v in options.items() if v is not None] + list(set_ or []))
        return
    items = input_list(inputs, from_list, "Sentinel-2 products or --from-list FILE")
    part = parse_shard(shard)

    area = read_aoi_options(aoi, bbox)
    settings = _option_settings(
        bands, nomenclature, tile_size, bigearthnet_metadata, code_column, mapping, block_size, split_by_scene, seed
    ) | {"aoi": None if area is None else area.to_setting()}
    cfg = load_config(IngestConfig, config, set_, **settings)
    with progress_bars() as update:
        dataset = run_ingest(
            items, out_dir, labels=labels_path, config=cfg, overwrite=overwrite, progress=update, shard=part, sign=hook
        )
    if part is not None and not dataset.finalized:
        _report_shard(out_dir, dataset, part)
        return
    _report(out_dir, dataset)


def _report_shard(out_dir: Path, dataset: IngestResult, part: tuple[int, int]) -> None:
    """One line for a shard of a sharded ingest: its scenes, and the --finalize step still to run."""
    out.print(
        f"shard {part[0]}/{part[1]}: {len(dataset.scenes)} of {dataset.total_scenes} scene(s) in "
        f"{out_dir}; run `landcover ingest --finalize --out {out_dir}` when every shard is done"
    )


def _option_settings(
    bands: str | None,
    nomenclature: str | None,
    tile_size: int | None,
    bigearthnet_metadata: Path | None,
    code_column: str | None,
    mapping: Path | None,
    block_size: float | None,
    split_by_scene: bool | None,
    seed: int | None,
) -> dict[str, Any]:
    """The ingest settings given as command-line options, by their keys in the settings (None: not given)."""
    return {
        "bands": bands.split(",") if bands else None,
        "nomenclature": nomenclature,
        "tile_size": tile_size,
        "bigearthnet_metadata": str(bigearthnet_metadata) if bigearthnet_metadata else None,
        "labels.code_column": code_column,
        "labels.mapping": str(mapping) if mapping else None,
        "split.block_size_m": block_size,
        "split.by_scene": split_by_scene,
        "split.seed": seed,
    }


def _finalize(out_dir: Path, resplit: list[str]) -> None:
    """``ingest --finalize``: merge the finished scenes (re-split with ``split.KEY=VALUE`` settings, if any)."""
    from landcover.dataset.ingest import finalize as finalize_dataset
    from landcover.dataset.settings import split_settings

    with progress_bars() as update:
        dataset = finalize_dataset(out_dir, update, split=split_settings(out_dir, resplit) if resplit else None)
    for warning in dataset["split_scheme"].get("warnings", []):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    out.print(f"dataset {out_dir}: finalized {len(dataset['scenes'])} scene(s); catalog {out_dir / 'catalog.parquet'}")


def _report(out_dir: Path, dataset: IngestResult) -> None:
    """The warnings of an ingest (scenes' and split's) and a one-line summary of the dataset."""
    norm = dataset.dataset["normalization"]
    for warning in dataset.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    out.print(
        f"dataset {out_dir}: {len(dataset.scenes)} scene(s), bands {','.join(dataset.bands)}, "
        f"{dataset.nomenclature}; catalog {out_dir / 'catalog.parquet'}, "
        f"splits {out_dir / 'splits.gpkg'}; train pixels for band statistics: {norm.get('count', 0)}"
    )
