"""``landcover export``: a checkpoint as a verified ONNX model (torch is imported inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landcover.cli.common import CheckpointArgument, app, handles_errors, out


@app.command("export")
@handles_errors
def export_model(
    checkpoint: CheckpointArgument,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset of the graph (18-23).")] = 18,
    check: Annotated[
        Path | None,
        typer.Option(
            help="A scene (SAFE, band folder, GeoTIFF) or ingested image.tif whose windows verify the export "
            "(default: synthetic windows)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a checkpoint to ONNX (runs in onnxruntime and QGIS Deepness without PyTorch), verified first."""
    from landcover.errors import ConfigError, OutputExistsError
    from landcover.preflight import check_checkpoint_exists, check_inputs_exist, check_output_path

    if out_path.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out_path} must end in .onnx (e.g. {out_path.with_suffix('.onnx').name})")
    check_output_path(out_path, folder=False)
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path} exists; pass --overwrite to replace it or choose another --out")
    check_checkpoint_exists(checkpoint)  # before torch is imported
    if check is not None:
        check_inputs_exist([check])
    from landcover.inference.onnx_export import export_onnx

    result = export_onnx(checkpoint, out_path, opset=opset, check=check, overwrite=overwrite)
    if as_json:
        import json

        out.print_json(json.dumps(result.to_dict()))
        return
    out.print(
        f"wrote {result.path} ({result.bytes / 1e6:.1f} MB, opset {result.opset}, {result.task}, "
        f"{len(result.bands)} bands -> {result.classes} classes; sha256 {result.sha256[:12]}...)",
        highlight=False,
        soft_wrap=True,
    )
    agreement = "decision (p > 0.5) agreement" if result.label_mode == "multilabel" else "argmax agreement"
    out.print(
        f"verified against PyTorch on {result.checked_on} ({'/'.join(map(str, result.sizes))} px, batch "
        f"{'/'.join(map(str, result.batches))}): max abs difference {result.max_abs_diff:.1e}, {agreement} "
        f"{result.argmax_agreement:.4%}",
        highlight=False,
        soft_wrap=True,
    )
