"""BigEarthNet v1/v2 patches: discovery, patch-level labels, official splits, reference maps.

BigEarthNet cuts Sentinel-2 L2A tiles into 1.2 x 1.2 km patches (120 x 120 px at 10 m), one folder
each. v2: ``BigEarthNet-S2/<product>/<product>_<row>_<col>/<patch>_B02.tif``; labels (19-class
names) and the official split in the official ``metadata.parquet``; pixel reference maps (CLC
level-3 codes) in ``Reference_Maps/<product>/<patch>/<patch>_reference_map.tif``. v1:
``<S2A_MSIL2A_<date>>_<row>_<col>/`` with ``<patch>_labels_metadata.json`` (CLC level-3 names).

Opening one patch folder is :func:`landcover.sources.sentinel2.open_product`'s job; turning patches into
ingest scenes (mosaics of the patches of one product) is :mod:`landcover.sources.bigearthnet_scenes`'.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from landcover import nomenclature as tables
from landcover.errors import DatasetError, InputFormatError, UnknownCodeError
from landcover.sources.sentinel2 import BEN_PATCH_RE, is_bigearthnet_patch

PATCH_PIXELS = 120
"""Side of a BigEarthNet patch in 10 m pixels: the default tile size when every input is BigEarthNet."""

OFFICIAL_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
"""metadata.parquet split names -> the catalog's split names."""


@dataclass(frozen=True)
class Patch:
    """One BigEarthNet patch of a scene and its patch-level labels."""

    patch_id: str
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in the scene CRS
    label_names: tuple[str, ...] = ()  # v1: CLC level-3 names; v2: 19-class names
    label_ids: tuple[int, ...] = ()  # class ids of the dataset nomenclature; () when unknown
    official_split: str = ""  # train | val | test (v2 metadata.parquet); '' when unknown


# --- discovery and labels ------------------------------------------------------------------------


def find_bigearthnet_patches(root: str | Path) -> list[Path]:
    """Every BigEarthNet patch folder under ``root`` (v1 ``root/<patch>``, v2 ``root/<tile>/<patch>``).

    Folders are recognised by their patch names (``<product>_<row>_<col>``), without listing them.
    """
    top = Path(root).expanduser()
    if not top.is_dir():
        raise InputFormatError(f"{top} is not a folder; point at a folder of BigEarthNet patches")
    if is_bigearthnet_patch(top):
        return [top]
    patches, stack = [], [top]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            subdirs = [Path(e.path) for e in entries if e.is_dir() and "Reference_Maps" not in e.name]
        patches += [d for d in subdirs if BEN_PATCH_RE.fullmatch(d.name)]
        stack += [d for d in subdirs if not BEN_PATCH_RE.fullmatch(d.name)]
    return sorted(patches)


def bigearthnet_metadata(metadata_parquet: str | Path, patch_ids: Sequence[str]) -> dict[str, tuple[list[str], str]]:
    """19-class label names and official split (train/val/test, '' if absent) of ``patch_ids``.

    Read from the official v2 ``metadata.parquet`` in one filtered read; absent patches are left out.
    """
    import pyarrow.parquet as pq

    if not patch_ids:
        return {}
    try:
        names = pq.ParquetFile(metadata_parquet).schema_arrow.names
        columns = ["patch_id", "labels", *(["split"] if "split" in names else [])]
        wanted = [("patch_id", "in", list(patch_ids))]
        table = pq.read_table(metadata_parquet, columns=columns, filters=wanted)
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
        raise DatasetError(
            f"cannot read labels from {metadata_parquet} ({exc}); pass the official BigEarthNet v2 metadata.parquet"
        ) from exc
    known = set(tables.nomenclature("ben19").class_names)
    found: dict[str, tuple[list[str], str]] = {}
    for row in table.to_pylist():
        labels = [str(n) for n in row["labels"]]
        if unknown := sorted(set(labels) - known):
            raise UnknownCodeError(
                f"labels {unknown} of {row['patch_id']} in {metadata_parquet} are not BigEarthNet "
                "19-class names (data_catalog/ben19.csv); use the official BigEarthNet v2 metadata.parquet"
            )
        split = str(row.get("split") or "")
        found[row["patch_id"]] = (labels, OFFICIAL_SPLITS.get(split.lower(), split))
    return found


def bigearthnet_labels(metadata_parquet: str | Path, patch_ids: Sequence[str]) -> dict[str, list[str]]:
    """19-class label names of ``patch_ids`` from the official v2 ``metadata.parquet`` (one filtered read)."""
    return {pid: labels for pid, (labels, _) in bigearthnet_metadata(metadata_parquet, patch_ids).items()}


def _labels_json(patch: Path) -> Path:
    return patch / f"{patch.name}_labels_metadata.json"


def find_metadata_parquet(patch: Path) -> Path | None:
    """A ``metadata.parquet`` in one of the patch's four nearest parent folders, if any."""
    found = [p / "metadata.parquet" for p in list(Path(patch).parents)[:4]]
    return next((p for p in found if p.is_file()), None)


def bigearthnet_patch_labels(patch_dir: str | Path, metadata_parquet: str | Path | None = None) -> list[str]:
    """A patch's label names: v1 CLC level-3 names (its JSON), v2 19-class names (metadata.parquet).

    Without ``metadata_parquet``, the v1 JSON is used, else a ``metadata.parquet`` in a parent folder.
    """
    patch = Path(patch_dir)
    labels_json = _labels_json(patch)
    if metadata_parquet is None and labels_json.is_file():
        names = [str(n) for n in json.loads(labels_json.read_text()).get("labels", [])]
        known = {c.ben43_name for c in tables.corine_classes() if c.ben43_name}
        if unknown := sorted(set(names) - known):
            raise UnknownCodeError(
                f"labels {unknown} in {labels_json} are not BigEarthNet v1 names "
                "(data_catalog/corine_legend.csv, ben43_name); re-download the patch"
            )
        return names
    if metadata_parquet is None:
        metadata_parquet = find_metadata_parquet(patch)
        if metadata_parquet is None:
            raise DatasetError(
                f"no labels for {patch}: no {labels_json.name} and no metadata.parquet in its parent "
                "folders; pass the BigEarthNet v2 metadata.parquet"
            )
    labels = bigearthnet_labels(metadata_parquet, [patch.name])
    if patch.name not in labels:
        raise DatasetError(
            f"patch {patch.name} is not in {metadata_parquet}; pass the metadata.parquet of its BigEarthNet version"
        )
    return labels[patch.name]


def bigearthnet_reference_map(patch_dir: str | Path) -> Path | None:
    """The v2 pixel reference map ``Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif``, if any.

    Looked for in the patch folder itself, then in ``Reference_Maps`` (or
    ``BigEarthNet-Reference_Maps``) beside the patch's parents.
    """
    patch = Path(patch_dir)
    places = [patch] + [
        ancestor / folder / sub
        for ancestor in list(patch.parents)[:4]
        for folder in ("Reference_Maps", "BigEarthNet-Reference_Maps")
        for sub in (Path(patch.parent.name) / patch.name, Path(patch.name))
    ]
    for place in places:
        for suffix in (".tif", ".tiff"):
            if (candidate := place / f"{patch.name}_reference_map{suffix}").is_file():
                return candidate
    return None


def patch_class_ids(names: Sequence[str], v1: bool, nom: tables.Nomenclature) -> tuple[int, ...]:
    """Patch label names (``v1``: CLC level-3 names, else 19-class names) -> sorted class ids of
    ``nom``; 19-class names have ids in ben19 only (others: ())."""
    if not v1:
        return tuple(sorted(nom.class_names.index(n) for n in names)) if nom.name == "ben19" else ()
    code_of = {c.ben43_name: c.code for c in tables.corine_classes() if c.ben43_name}
    ids = nom.encode(np.array([code_of[n] for n in names], dtype=np.uint16))
    return tuple(sorted({int(i) for i in ids} - {tables.IGNORE}))


def read_patch_labels(
    patches: Sequence[Path], nom: tables.Nomenclature, metadata: Path | None
) -> tuple[dict[str, Patch], dict[str, Path | None]]:
    """Labels of ``patches`` (v1: their JSON; v2: ``metadata`` or a metadata.parquet found above),
    as :class:`Patch` records without bounds, and the parquet searched for each v2 patch (None: none)."""
    labels: dict[str, Patch] = {}
    by_parquet: dict[Path | None, list[str]] = defaultdict(list)
    near: dict[Path, Path | None] = {}
    for patch in patches:
        if _labels_json(patch).is_file():
            names = bigearthnet_patch_labels(patch)
            labels[patch.name] = Patch(patch.name, (0, 0, 0, 0), tuple(names), patch_class_ids(names, True, nom))
        else:
            if metadata is None and patch.parent not in near:
                near[patch.parent] = find_metadata_parquet(patch)
            by_parquet[metadata or near[patch.parent]].append(patch.name)
    searched = {pid: parquet for parquet, ids in by_parquet.items() for pid in ids}
    for parquet, ids in by_parquet.items():
        for pid, (names, split) in (bigearthnet_metadata(parquet, ids) if parquet else {}).items():
            labels[pid] = Patch(pid, (0, 0, 0, 0), tuple(names), patch_class_ids(names, False, nom), split)
    return labels, searched


def label_warnings(
    names: Sequence[str], labels: dict[str, Patch], searched: dict[str, Path | None], nom: tables.Nomenclature
) -> list[str]:
    """Warnings for the patches ``names`` of one scene: v2 labels unknown, or kept as names only."""
    v2 = [n for n in names if n in searched]
    warnings = []
    if unread := [n for n in v2 if searched[n] is None]:
        warnings.append(
            f"no metadata.parquet above {len(unread)} BigEarthNet v2 patch(es) (e.g. {unread[0]}): "
            "patch labels and official split unknown; pass --bigearthnet-metadata"
        )
    if absent := [n for n in v2 if searched[n] is not None and n not in labels]:
        warnings.append(
            f"{len(absent)} patch(es) are not in {searched[absent[0]]} (e.g. {absent[0]}): "
            "their patch labels and official split are unknown"
        )
    if nom.name != "ben19" and any(n in labels for n in v2):
        warnings.append(
            f"BigEarthNet v2 patch labels are 19-class names, which are not classes of {nom.name}: "
            "kept as names only (catalog column patch_label_names); use --nomenclature ben19 for class ids"
        )
    return warnings
