"""The input transform that pretrained weights declare, as the per-band ``(x - mean) / std`` landcover applies.

Every input normalisation in landcover (training, ``predict``, ``explain``) is ``(x - mean) / std`` per
band on the stored values (reflectance x 10000), with no-data pixels (0 in every band) set to 0; a
checkpoint records the ``mean``/``std`` it was trained with in ``landcover.normalization``. Weights
pretrained on Sentinel-2 expect their own input scale; this module reads what they declare:

* **torchgeo** weights: the ``Normalize`` steps of the weight's ``transforms``, composed into one
  ``mean``/``std`` (``Resize``/``CenterCrop`` are geometry: landcover keeps its tiles), for weights
  pretrained on Sentinel-2 digital numbers, the units of the stacks (SSL4EO-S12, SSL4Eco,
  CrisisLandMark; e.g. SSL4EO-S12 MoCo: ``mean 0, std 10000``, SoftCon: per-band statistics). SeCo and
  SatlasPretrain transforms expect 8-bit true-colour images, which the stacks are not: they declare
  nothing here.
* **imagenet**: nothing. ImageNet's mean/std are ImageNet's own channel statistics: the inputs the
  network was trained on have zero mean and unit variance per channel, which is what the dataset
  z-score gives Sentinel-2 reflectance; scaling reflectance to 0..1 and applying ImageNet's numbers
  would feed it inputs around -1.5 to -2 with a fraction of the spread (land is dark next to photos).
* **local files**: an ``input_transform`` entry next to ``bands`` in the saved dict (``torch.save({
  "state_dict": ..., "bands": [...], "input_transform": {"mean": 0, "std": 10000}}, path)``), or a
  ``.safetensors`` metadata key ``input_transform`` holding the same as JSON. ``mean`` and ``std`` are
  numbers (every band) or lists in the file's band order (``input_transform.bands``, else
  ``model.weight_bands``, else the file's ``bands``), in stored units (reflectance x 10000).

Data bands the weights have no statistics for (``model.adapt_channels``) keep the dataset's z-score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from landcover.errors import ConfigError, DatasetError, ModelError

if TYPE_CHECKING:
    from landcover.models.config import ModelConfig

RAW_SCALE = 10000.0
"""normalization='none' divides by this: uint16 reflectance x 10000 -> reflectance."""

DN_DATASETS = ("SSL4EO-S12", "SSL4Eco Dataset", "CrisisLandMark")
"""torchgeo ``meta['dataset']`` values whose transforms take Sentinel-2 digital numbers (reflectance x 10000)."""


@dataclass(frozen=True)
class InputTransform:
    """``(x - mean) / std``: one value for every band, or one per band of ``bands``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    bands: tuple[str, ...] | None
    source: str

    def for_bands(self, data_bands: Sequence[str]) -> dict[str, Any]:
        """``{'mean', 'std'}`` per data band (None where the weights have no value) and ``source``."""
        from landcover.models.weight_files import band_key
        from landcover.sources.recipe import split_band

        if len(self.mean) == 1:
            return {
                "mean": [self.mean[0]] * len(data_bands),
                "std": [self.std[0]] * len(data_bands),
                "source": self.source,
            }
        bands = self.bands
        if bands is None:
            if len(self.mean) != len(data_bands):
                raise ModelError(
                    f"{self.source}: {len(self.mean)} per-band values but no band names for "
                    f"{len(data_bands)} data bands; add 'bands' to the input_transform entry or "
                    "set model.weight_bands"
                )
            bands = tuple(data_bands)
        index = {band_key(b): i for i, b in enumerate(bands)}
        # a composite's B04@spring takes the values of B04 when the weights are of single dates
        picks = [index.get(band_key(b), index.get(band_key(split_band(b)[0]))) for b in data_bands]
        return {
            "mean": [None if i is None else self.mean[i] for i in picks],
            "std": [None if i is None else self.std[i] for i in picks],
            "source": self.source,
        }


def parse_transform(raw: Any, source: str, bands: Sequence[str] | None = None) -> InputTransform:
    """An :class:`InputTransform` from a declared ``{'mean': ..., 'std': ..., 'bands': [...]}``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ModelError(
                f'{source}: input_transform is not JSON ({exc}); write e.g. {{"mean": 0, "std": 10000}}'
            ) from exc
    fix = 'declare it as {"mean": number or list, "std": number or list} in reflectance x 10000'
    if not isinstance(raw, dict) or not {"mean", "std"} <= set(raw):
        raise ModelError(f"{source}: input_transform {raw!r} lacks mean/std; {fix}")
    mean, std = ([v] if isinstance(v, int | float) else v for v in (raw["mean"], raw["std"]))
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{source}: input_transform mean/std must be numbers or lists of numbers; {fix}") from exc
    given = raw.get("bands") or bands
    if len(mean) != len(std) or not mean or (len(mean) > 1 and given is not None and len(given) != len(mean)):
        raise ModelError(f"{source}: input_transform has {len(mean)} means, {len(std)} stds for bands {given}; {fix}")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise ModelError(f"{source}: input_transform needs finite means and positive stds; {fix}")
    return InputTransform(mean, std, tuple(str(b) for b in given) if given and len(mean) > 1 else None, source)


def torchgeo_transform(weight: Any, spec: str) -> InputTransform | None:
    """The ``Normalize`` steps of a torchgeo weight's transforms as one mean/std (None if not in stored units)."""
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    steps: list[Any] = (
        list(weight.transforms) if isinstance(weight.transforms, torch.nn.Sequential) else [weight.transforms]
    )
    if weight.meta.get("dataset") not in DN_DATASETS:
        return None
    n = int(weight.meta["in_chans"])
    mean, std = [0.0] * n, [1.0] * n
    for step in steps:
        if isinstance(step, v2.Resize | v2.CenterCrop | v1.Resize | v1.CenterCrop | torch.nn.Identity):
            continue  # geometry: landcover keeps its tiles
        if not isinstance(step, v2.Normalize | v1.Normalize):
            return None
        m, s = ([float(v) for v in vals] * (n if len(vals) == 1 else 1) for vals in (step.mean, step.std))
        mean = [a + b * c for a, b, c in zip(mean, m, std, strict=True)]  # ((x - M) / S - m) / s
        std = [a * b for a, b in zip(std, s, strict=True)]
    if len(set(mean)) == 1 and len(set(std)) == 1:
        mean, std = mean[:1], std[:1]
    return parse_transform(
        {"mean": mean, "std": std}, f"torchgeo {spec} transforms", weight.meta.get("bands") if len(mean) > 1 else None
    )


def file_transform(path: Path) -> tuple[Any, list[str] | None]:
    """The raw ``input_transform`` entry of a weight file and its stored ``bands`` (None if absent)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            bands = meta.get("bands")
            names = (json.loads(bands) if bands.lstrip().startswith("[") else bands.split(",")) if bands else None
            return meta.get("input_transform"), names
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        return None, None
    bands = obj.get("bands")
    return obj.get("input_transform"), list(bands) if isinstance(bands, list | tuple) else None


def declared_input_transform(cfg: ModelConfig) -> InputTransform | None:
    """The input transform ``cfg.encoder_weights`` declares (see the module doc), None if it declares none."""
    if cfg.encoder_weights == "none":
        return None
    from landcover.models.weight_files import find_weight_file, resolve_weights  # torch hub, torchvision

    source = resolve_weights(cfg.encoder_weights, cfg.encoder, cfg.weight_bands)
    if source.kind == "torchgeo":
        from torchgeo.models import get_weight

        return torchgeo_transform(get_weight(source.spec), source.spec)
    if source.kind == "imagenet":
        return None
    path = find_weight_file(source, cfg.weights_dir, cfg.allow_download)
    raw, stored = file_transform(path)
    if raw is None:
        return None
    return parse_transform(raw, f"weight file {path}", source.bands or stored)


def normalization_statistics(
    mode: str, bands: list[str], dataset: dict[str, Any], declared: InputTransform | None, where: Path
) -> tuple[list[float], list[float], str, str]:
    """Per-band ``mean``, ``std``, the resolved mode and where they come from, for ``data.normalization``.

    ``auto``: the declared transform if any, else ``dataset``; ``weights``: the declared transform
    (data bands it has no values for keep the dataset's); ``dataset``: the train-tile statistics
    ``dataset`` (of ``data.split_column``, read from ``where``; a constant band gets std 1); ``none``:
    mean 0, std 10000.
    """
    if mode == "weights" and declared is None:
        raise ConfigError(
            "data.normalization=weights, but model.encoder_weights declares no input transform; "
            "use data.normalization=auto or dataset, or weights that declare one"
        )
    mode = ("weights" if declared is not None else "dataset") if mode == "auto" else mode
    weights = declared.for_bands(bands) if declared is not None and mode == "weights" else None
    if mode == "none":
        return [0.0] * len(bands), [RAW_SCALE] * len(bands), mode, "x / 10000"
    if weights is not None and None not in weights["mean"]:
        return weights["mean"], weights["std"], mode, weights["source"]
    if dataset.get("mean") is None or dataset.get("std") is None:
        raise DatasetError(
            f"{where} holds no normalization statistics ({dataset.get('from', 'missing')}); "
            "re-ingest so that the train split has tiles, or set data.normalization=none"
        )
    mean = [float(v) for v in dataset["mean"]]
    std = [float(v) if v > 0 else 1.0 for v in dataset["std"]]  # a constant band stays finite
    if weights is None:
        return mean, std, mode, str(dataset.get("from") or "train tiles of dataset.json")
    mean = [d if w is None else w for d, w in zip(mean, weights["mean"], strict=True)]
    std = [d if w is None else w for d, w in zip(std, weights["std"], strict=True)]
    return mean, std, mode, f"{weights['source']}; {dataset.get('from') or 'train tiles'} for the other bands"
