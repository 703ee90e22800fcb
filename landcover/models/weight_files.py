"""Pretrained weight files: which file a weight spec names, where it is, what it holds.

Weight specs (``ModelConfig.encoder_weights``):

* a torchgeo name, e.g. ``ResNet18_Weights.SENTINEL2_ALL_MOCO`` or ``ResNet50_Weights.SENTINEL2_ALL_DINO``
  (Sentinel-2 members of torchgeo's ResNet enums; their band order comes from the weight's meta);
* ``imagenet``: torchvision's ResNet ``IMAGENET1K_V1`` weights, bands B04, B03, B02 (RGB);
* a local ``.pth``/``.pt``/``.safetensors``/Lightning ``.ckpt`` file.

Named weights are looked up by the file name their URL ends with, in ``weights_dir`` and then in
``torch.hub.get_dir()/checkpoints`` (where torchgeo's own ``get_state_dict`` caches them); only if
absent and ``allow_download`` is set is the URL fetched (torch hub's downloader, sha256 prefix
checked). Offline, every failure is a :class:`ModelError` that names the file, the folders searched
and the URL to fetch it from. A file's tensors and the band names stored with it are read by
:func:`read_state_dict`; loading them into a network is :mod:`landcover.models.pretrained`'s part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from landcover.errors import ConfigError, ModelError
from landcover.models.safeload import load_torch_file
from landcover.nomenclature import normalize_band_name, sentinel2_bands
from landcover.offline import ENV as OFFLINE_ENV
from landcover.offline import is_offline
from landcover.sources.recipe import period_band, split_band

log = logging.getLogger(__name__)

RGB_BANDS = ("B04", "B03", "B02")
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_TORCHGEO_NAME = re.compile(r"^(ResNet\d+)_Weights\.(\w+)$", re.IGNORECASE)
_HASH = re.compile(r"-([a-f0-9]{6,})\.")


def l1c_bands() -> tuple[str, ...]:
    """The 13 Sentinel-2 L1C bands in ESA order (B01..B08, B8A, B09, B10, B11, B12)."""
    return tuple(b.name for b in sentinel2_bands().values() if b.in_l1c)


def band_key(name: str) -> str:
    """Canonical band name for matching: Sentinel-2 names normalised ('B8a' -> 'B8A'), others upper; a
    composite's period is kept as it is ('b4@spring' -> 'B04@spring')."""
    band, period = split_band(name.strip())
    try:
        key = normalize_band_name(band)
    except ConfigError:
        key = band.strip().upper()
    return key if period is None else period_band(key, period)


@dataclass(frozen=True)
class WeightSource:
    """A resolved weight spec (no file access yet)."""

    spec: str
    kind: Literal["torchgeo", "imagenet", "file"]
    file_name: str
    url: str | None = None
    bands: tuple[str, ...] | None = None
    path: Path | None = None  # for kind == 'file'
    bands_from: str = ""  # where ``bands`` came from

    @property
    def hash_prefix(self) -> str | None:
        """The sha256 prefix that named weight files carry in their names (torch hub convention)."""
        match = _HASH.search(self.file_name) if self.kind != "file" else None
        return match.group(1) if match else None


def _torchgeo_enums() -> dict[str, Any]:
    from torchgeo.models import ResNet18_Weights, ResNet50_Weights

    return {"resnet18": ResNet18_Weights, "resnet50": ResNet50_Weights}


def _sentinel2_members(enum: Any) -> list[str]:
    return [f"{enum.__name__}.{m.name}" for m in enum if m.name.startswith("SENTINEL2")]


def resolve_weights(spec: str, encoder: str, weight_bands: Sequence[str] | None = None) -> WeightSource:
    """Turn a weight spec into a :class:`WeightSource`; invalid names raise :class:`ConfigError`."""
    spec = spec.strip()
    match = _TORCHGEO_NAME.match(spec)
    looks_like_file = spec.lower().endswith(SUFFIXES) or "/" in spec or "\\" in spec
    if match or ("_Weights." in spec and not looks_like_file):
        enums = _torchgeo_enums()
        valid = _sentinel2_members(enums[encoder]) if encoder in enums else []
        hint = (
            f"valid names for {encoder}: {', '.join(valid)}"
            if valid
            else f"torchgeo has no weights for {encoder}; use 'imagenet', a local file, or encoder "
            f"{' / '.join(enums)} with one of its torchgeo weights"
        )
        arch = match.group(1).lower() if match else ""
        if arch != encoder:
            raise ConfigError(f"weights {spec!r} do not fit encoder {encoder}; {hint}")
        member = match.group(2).upper() if match else ""
        enum = enums[encoder]
        if member not in enum.__members__ or not member.startswith("SENTINEL2"):
            raise ConfigError(f"unknown or non-Sentinel-2 torchgeo weights {spec!r}; {hint}")
        weight = enum[member]
        meta_bands = weight.meta.get("bands")
        in_chans = int(weight.meta["in_chans"])
        if meta_bands is None:
            meta_bands = {13: l1c_bands(), 3: RGB_BANDS}.get(in_chans)
        if meta_bands is None or len(meta_bands) != in_chans:
            raise ModelError(f"torchgeo weights {spec} do not state their {in_chans} bands")
        bands = tuple(band_key(b) for b in meta_bands)
        if weight_bands is not None and [band_key(b) for b in weight_bands] != list(bands):
            raise ConfigError(f"{spec} expects bands {', '.join(bands)}; remove model.weight_bands")
        return WeightSource(
            f"{enum.__name__}.{member}",
            "torchgeo",
            weight.url.rsplit("/", 1)[-1],
            weight.url,
            bands,
            bands_from="torchgeo meta",
        )
    if spec.lower() == "imagenet":
        from torchvision.models import get_weight

        url = get_weight(f"{encoder.replace('resnet', 'ResNet')}_Weights.IMAGENET1K_V1").url
        bands = tuple(band_key(b) for b in weight_bands) if weight_bands else RGB_BANDS
        return WeightSource(
            "imagenet",
            "imagenet",
            url.rsplit("/", 1)[-1],
            url,
            bands,
            bands_from="config" if weight_bands else "imagenet RGB (B04, B03, B02)",
        )
    path = Path(spec).expanduser()
    given = tuple(band_key(b) for b in weight_bands) if weight_bands else None
    return WeightSource(spec, "file", path.name, None, given, path, bands_from="config")


def search_dirs(weights_dir: Path | None) -> list[Path]:
    """Folders searched for named weight files: ``weights_dir``, then the torch hub cache."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir is not None else []
    return [*dirs, Path(torch.hub.get_dir()) / "checkpoints"]


def find_weight_file(source: WeightSource, weights_dir: Path | None = None, allow_download: bool = True) -> Path:
    """The local file of ``source``, downloading it into the hub cache only if allowed and absent."""
    if source.kind == "file":
        assert source.path is not None
        candidates = [source.path]
        if weights_dir is not None and not source.path.is_absolute():
            candidates.append(Path(weights_dir).expanduser() / source.path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ModelError(
            f"weight file {source.spec} not found (looked at "
            f"{', '.join(map(str, candidates))}); check model.encoder_weights"
        )
    dirs = search_dirs(weights_dir)
    for folder in dirs:
        if (folder / source.file_name).is_file():
            return folder / source.file_name
    where = ", ".join(map(str, dirs))
    howto = (
        f"download {source.url} on a machine with internet and copy it to one of: {where} "
        f"(or set model.weights_dir to its folder)"
    )
    if is_offline():
        raise ModelError(
            f"weights {source.spec}: file {source.file_name} not found in {where} and "
            f"{OFFLINE_ENV} is set, so nothing is downloaded; {howto}"
        )
    if not allow_download:
        raise ModelError(
            f"weights {source.spec}: file {source.file_name} not found in {where} and "
            f"downloading is off (model.allow_download=false); {howto}"
        )
    target = dirs[-1] / source.file_name
    log.info("downloading %s to %s", source.url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(str(source.url), str(target), hash_prefix=source.hash_prefix)
    except Exception as exc:  # no network, blocked socket, HTTP error, bad hash, ...
        raise ModelError(
            f"weights {source.spec}: file {source.file_name} not found in {where} and "
            f"the download failed ({type(exc).__name__}: {exc}); {howto}"
        ) from exc
    return target


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (recorded in provenance)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bands_hint(obj: dict[str, Any]) -> list[str] | None:
    """Band names stored with a checkpoint: top-level 'bands' or hyper_parameters[...]['bands']."""
    hp = obj.get("hyper_parameters")
    places = [obj, hp] + (list(hp.values()) if isinstance(hp, dict) else [])
    for place in places:
        bands = place.get("bands") if isinstance(place, dict) else None
        if isinstance(bands, list | tuple) and bands and all(isinstance(b, str) for b in bands):
            return list(bands)
    return None


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Tensors of a weight file and the band names stored with it (if any).

    ``.safetensors`` (bands from metadata key 'bands', JSON list or comma-separated); anything else
    through ``torch.load(weights_only=True)``: a raw state dict, or one under 'state_dict'
    (Lightning), 'model_state_dict', 'model' or 'teacher'.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
                raw = (fh.metadata() or {}).get("bands")
            bands = None
            if raw:
                bands = json.loads(raw) if raw.lstrip().startswith("[") else raw.split(",")
            return tensors, [b.strip() for b in bands] if bands else None
        obj = load_torch_file(path, "weights", "use a tensor-only .pth/.pt/.ckpt or a .safetensors file")
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"cannot read weights {path}: {type(exc).__name__}: {exc}. It must be a "
            "tensor-only .pth/.pt/.ckpt (torch.load weights_only=True) or a "
            ".safetensors file"
        ) from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bands = _bands_hint(obj)
    state: Any = obj
    for key in ("state_dict", "model_state_dict", "model", "teacher"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path} holds no tensors (top-level keys: {', '.join(map(str, obj))[:300]})")
    return tensors, bands
