"""Checks of a command's arguments that need no heavy library (no torch, no Lightning, no geopandas).

The CLI runs them before importing the modules that do the work, so a missing file, a typo in a
``--set`` key or an unreadable config is reported in a second instead of after the tens of seconds
torch and Lightning take to import on a loaded machine; nothing is created before they pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from landcover.errors import ConfigError, DatasetError, InputFormatError, ModelError
from landcover.sources.stac_refs import split_reference


def check_checkpoint_exists(path: str | Path, *, onnx: bool = False) -> None:
    """``path`` is a file that looks like a torch checkpoint (a zip archive or a pickle), checked by its first
    bytes so that a text file, an empty file or a folder is reported before torch is imported. With ``onnx`` an
    ``.onnx`` file passes too (the onnxruntime engine checks its contents)."""
    path = Path(path)
    hint = "point at RUN/checkpoints/best.ckpt of a `landcover train` run"
    if onnx:
        hint += " or at a model `landcover export` wrote (.onnx)"
    if path.is_dir():
        raise ModelError(f"checkpoint {path} is a folder; {hint}")
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; {hint}")
    if onnx and path.suffix.lower() == ".onnx":
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save: a zip archive (or a legacy pickle)
        what = "is empty" if not head else "is not a checkpoint (not a torch zip archive or pickle)"
        raise ModelError(f"checkpoint {path} {what}; {hint}")


def check_output_path(path: str | Path, *, option: str = "--out", folder: bool = True) -> None:
    """``path`` can be created: no regular file stands where a folder is needed (``path`` itself when it is a
    folder, or one of its parents), and a file output is not an existing folder."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; pass a folder (it is created if needed)")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; pass a file name, e.g. {path / 'map.tif'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; choose another {option}")
            return


def check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")


def check_inputs_exist(inputs: Sequence[str | Path]) -> None:
    """Every input exists (checked before any output is created); ``doc.json#<item id>`` needs its document."""
    missing = [str(p) for p in inputs if not split_reference(p)[0].exists()]
    if len(inputs) == 1 and missing:
        raise InputFormatError(f"{missing[0]} does not exist; check the path")
    if missing:
        raise InputFormatError(
            f"{len(missing)} of {len(inputs)} inputs do not exist ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); check the paths (or the --from-list file)"
        )


def check_dataset_folder(dataset: str | Path | None) -> None:
    """``dataset`` is a finished ``landcover ingest`` folder (the DataModule checks the rest)."""
    if dataset is None:
        raise ConfigError("no dataset: pass --dataset DIR (a folder made by landcover ingest) or set data.dataset")
    folder = Path(dataset)
    if not folder.is_dir() or not (folder / "dataset.json").is_file() or not (folder / "catalog.parquet").is_file():
        what = "does not exist" if not folder.is_dir() else "has no dataset.json or catalog.parquet"
        raise DatasetError(
            f"dataset folder {folder} {what}: it is not a finished ingested dataset; run "
            "`landcover ingest ... --out DIR` first and pass that DIR"
        )
