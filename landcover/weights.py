"""Transfer learning: find, read, band-match, load and verify pretrained ResNet weights.

Weight specs (``ModelConfig.encoder_weights``):

* a torchgeo name, e.g. ``ResNet18_Weights.SENTINEL2_ALL_MOCO`` or ``ResNet50_Weights.SENTINEL2_ALL_DINO``
  (Sentinel-2 members of torchgeo's ResNet enums; their band order comes from the weight's meta);
* ``imagenet``: torchvision's ResNet ``IMAGENET1K_V1`` weights, bands B04, B03, B02 (RGB);
* a local ``.pth``/``.pt``/``.safetensors``/Lightning ``.ckpt`` file.

Named weights are looked up by the file name their URL ends with, in ``weights_dir`` and then in
``torch.hub.get_dir()/checkpoints`` (where torchgeo's own ``get_state_dict`` caches them); only if
absent and ``allow_download`` is set is the URL fetched (torch hub's downloader, sha256 prefix
checked). Offline, every failure is a :class:`ModelError` that names the file, the folders searched
and the URL to fetch it from.

First-convolution rule: the kernel of data band ``b`` is the file's kernel of band ``b`` (matched by
name, so 13-band L1C weights on 12-band L2A data drop B10 and keep the others exactly, in the data's
order). A data band the file lacks is an error unless ``adapt_channels``; then its kernel is the mean
of the file's kernels. A channel's response to inputs of similar scale is about the sum of its
kernels, and the pretrained layer summed ``n_file`` of them: if the data has more channels than
the file, every kernel is multiplied by ``n_file / n_data`` (the timm/smp convention, e.g. x 3/12
for RGB weights on 12 bands); otherwise kernels are kept as they are.

Verification: only tensors whose names and shapes match are loaded (``strict=False``); afterwards
each must equal its file tensor, and at least 90 % of the encoder's tensors must have been loaded,
else :class:`ModelError` (a ``strict=False`` load that silently loads nothing, torchgeo #4036).
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
from torch import nn

from landcover.errors import ConfigError, ModelError
from landcover.models import ModelConfig, encoder_of, head_name
from landcover.offline import ENV as OFFLINE_ENV
from landcover.offline import is_offline
from landcover.safeload import load_torch_file
from landcover.tables import normalize_band_name, sentinel2_bands

log = logging.getLogger(__name__)

RGB_BANDS = ("B04", "B03", "B02")
MIN_LOADED_FRACTION = 0.9
SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_TORCHGEO_NAME = re.compile(r"^(ResNet\d+)_Weights\.(\w+)$", re.IGNORECASE)
_HASH = re.compile(r"-([a-f0-9]{6,})\.")


def l1c_bands() -> tuple[str, ...]:
    """The 13 Sentinel-2 L1C bands in ESA order (B01..B08, B8A, B09, B10, B11, B12)."""
    return tuple(b.name for b in sentinel2_bands().values() if b.in_l1c)


def band_key(name: str) -> str:
    """Canonical band name for matching: Sentinel-2 names normalised ('B8a' -> 'B8A'), others upper."""
    try:
        return normalize_band_name(name)
    except ConfigError:
        return name.strip().upper()


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
        hint = (f"valid names for {encoder}: {', '.join(valid)}" if valid else
                f"torchgeo has no weights for {encoder}; use 'imagenet', a local file, or encoder "
                f"{' / '.join(enums)} with one of its torchgeo weights")
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
        return WeightSource(f"{enum.__name__}.{member}", "torchgeo", weight.url.rsplit("/", 1)[-1],
                            weight.url, bands, bands_from="torchgeo meta")
    if spec.lower() == "imagenet":
        from torchvision.models import get_weight

        url = get_weight(f"{encoder.replace('resnet', 'ResNet')}_Weights.IMAGENET1K_V1").url
        bands = tuple(band_key(b) for b in weight_bands) if weight_bands else RGB_BANDS
        return WeightSource("imagenet", "imagenet", url.rsplit("/", 1)[-1], url, bands,
                            bands_from="config" if weight_bands else "imagenet RGB (B04, B03, B02)")
    path = Path(spec).expanduser()
    given = tuple(band_key(b) for b in weight_bands) if weight_bands else None
    return WeightSource(spec, "file", path.name, None, given, path, bands_from="config")


def search_dirs(weights_dir: Path | None) -> list[Path]:
    """Folders searched for named weight files: ``weights_dir``, then the torch hub cache."""
    dirs = [Path(weights_dir).expanduser()] if weights_dir is not None else []
    return [*dirs, Path(torch.hub.get_dir()) / "checkpoints"]


def find_weight_file(source: WeightSource, weights_dir: Path | None = None,
                     allow_download: bool = True) -> Path:
    """The local file of ``source``, downloading it into the hub cache only if allowed and absent."""
    if source.kind == "file":
        assert source.path is not None
        candidates = [source.path]
        if weights_dir is not None and not source.path.is_absolute():
            candidates.append(Path(weights_dir).expanduser() / source.path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ModelError(f"weight file {source.spec} not found (looked at "
                         f"{', '.join(map(str, candidates))}); check model.encoder_weights")
    dirs = search_dirs(weights_dir)
    for folder in dirs:
        if (folder / source.file_name).is_file():
            return folder / source.file_name
    where = ", ".join(map(str, dirs))
    howto = (f"download {source.url} on a machine with internet and copy it to one of: {where} "
             f"(or set model.weights_dir to its folder)")
    if is_offline():
        raise ModelError(f"weights {source.spec}: file {source.file_name} not found in {where} and "
                         f"{OFFLINE_ENV} is set, so nothing is downloaded; {howto}")
    if not allow_download:
        raise ModelError(f"weights {source.spec}: file {source.file_name} not found in {where} and "
                         f"downloading is off (model.allow_download=false); {howto}")
    target = dirs[-1] / source.file_name
    log.info("downloading %s to %s", source.url, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(str(source.url), str(target), hash_prefix=source.hash_prefix)
    except Exception as exc:  # no network, blocked socket, HTTP error, bad hash, ...
        raise ModelError(f"weights {source.spec}: file {source.file_name} not found in {where} and "
                         f"the download failed ({type(exc).__name__}: {exc}); {howto}") from exc
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
        raise ModelError(f"cannot read weights {path}: {type(exc).__name__}: {exc}. It must be a "
                         "tensor-only .pth/.pt/.ckpt (torch.load weights_only=True) or a "
                         ".safetensors file") from exc
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


def strip_prefix(state: dict[str, torch.Tensor], targets: set[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """The key prefix ('', 'module.', 'model.encoder.', ...) whose removal matches most ``targets``.

    Returns the prefix and the keys that start with it, prefix removed.
    """
    scores: dict[str, int] = {}
    for key in state:
        starts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
        for start in starts:
            if key[start:] in targets:
                prefix = key[:start]
                scores[prefix] = scores.get(prefix, 0) + 1
    if not scores:
        return "", {}
    prefix = max(scores, key=lambda p: (scores[p], -len(p)))
    return prefix, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def adapt_first_conv(weight: torch.Tensor, weight_bands: Sequence[str], data_bands: Sequence[str],
                     *, adapt_channels: bool = False) -> tuple[torch.Tensor, dict[str, int | None], float]:
    """First-conv kernel ``(out, len(data_bands), k, k)`` for the data's bands (see module doc).

    Returns the kernel, the channel map (data band -> index of its kernel in the file, None for a
    new channel) and the scale applied to every kernel.
    """
    wkeys = [band_key(b) for b in weight_bands]
    if weight.ndim != 4 or weight.shape[1] != len(wkeys):
        raise ModelError(f"the file's first convolution has {tuple(weight.shape)[1:2]} input channels "
                         f"but {len(wkeys)} weight bands ({', '.join(wkeys)}); set model.weight_bands")
    index = {b: i for i, b in enumerate(wkeys)}
    dkeys = [band_key(b) for b in data_bands]
    missing = [b for b in dkeys if b not in index]
    if missing and not adapt_channels:
        raise ModelError(f"the weights have no kernels for data bands {', '.join(missing)} (weight bands: "
                         f"{', '.join(wkeys)}); drop those bands, use other weights, or set "
                         "model.adapt_channels=true to start them from the mean kernel")
    mean = weight.mean(dim=1)
    kernel = torch.stack([weight[:, index[b]] if b in index else mean for b in dkeys], dim=1)
    scale = min(1.0, len(wkeys) / len(dkeys))
    if scale != 1.0:
        kernel = kernel * scale
    channel_map = {name: index.get(key) for name, key in zip(data_bands, dkeys, strict=True)}
    return kernel.contiguous(), channel_map, scale


def _first_conv_key(encoder: nn.Module) -> str:
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ModelError(f"{type(encoder).__name__} has no convolution")


def _countable(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def load_pretrained(model: nn.Module, cfg: ModelConfig, data_bands: Sequence[str]) -> dict[str, Any]:
    """Load ``cfg.encoder_weights`` into the encoder of ``model`` (and a matching classifier head).

    Returns provenance: spec, source, url, file, sha256, key prefix, weight/data bands, channel map,
    tensors loaded/total, whether the head was loaded.
    """
    source = resolve_weights(cfg.encoder_weights, cfg.encoder, cfg.weight_bands)
    path = find_weight_file(source, cfg.weights_dir, cfg.allow_download)
    sha256 = file_sha256(path)
    hash_ok = sha256.startswith(source.hash_prefix) if source.hash_prefix else None
    if hash_ok is False:
        log.warning("%s: sha256 %s does not start with %s from its name", path, sha256[:12],
                    source.hash_prefix)
    state, stored_bands = read_state_dict(path)
    encoder = encoder_of(model)
    target = encoder.state_dict()
    head = head_name(model)
    head_target = {f"{head}.{k}": v for k, v in getattr(model, head).state_dict().items()} if head else {}
    prefix, stripped = strip_prefix(state, set(target) | set(head_target))
    conv_key = _first_conv_key(encoder)
    if not stripped:
        few = ", ".join(list(state)[:5])
        raise ModelError(f"weights {path} do not fit the {cfg.encoder} encoder: a strict=False load "
                         f"loaded nothing - no key matches (file keys: {few}, ...; expected e.g. "
                         f"{', '.join(list(target)[:3])})")
    if conv_key not in stripped:
        raise ModelError(f"weights {path} have no first convolution {prefix}{conv_key}; they do not "
                         f"fit the {cfg.encoder} encoder")
    file_conv = stripped[conv_key]
    if source.bands is not None:
        wbands, bands_from = list(source.bands), source.bands_from
    elif stored_bands is not None:
        wbands, bands_from = [band_key(b) for b in stored_bands], "stored in the file"
    else:
        n = file_conv.shape[1]
        if n == len(data_bands):
            wbands, bands_from = [band_key(b) for b in data_bands], "assumed: same as the data"
        elif n == 13:
            wbands, bands_from = list(l1c_bands()), "assumed: 13 L1C bands in ESA order"
        elif n == 3:
            wbands, bands_from = list(RGB_BANDS), "assumed: RGB (B04, B03, B02)"
        else:
            raise ModelError(f"{path}: the first convolution takes {n} bands and the file does not "
                             "name them; set model.weight_bands to the file's band order")
        log.warning("%s: band order %s", path, bands_from)
    kernel, channel_map, scale = adapt_first_conv(file_conv, wbands, data_bands,
                                                  adapt_channels=cfg.adapt_channels)
    prepared = dict(stripped)
    prepared[conv_key] = kernel
    to_load = {k: v for k, v in prepared.items() if k in target and v.shape == target[k].shape}
    shape_mismatch = [k for k, v in prepared.items() if k in target and v.shape != target[k].shape]
    total = [k for k in target if _countable(k)]
    unmatched = [k for k in total if k not in to_load]
    n_match = len(total) - len(unmatched)
    if n_match < MIN_LOADED_FRACTION * len(total):
        what = "loaded nothing" if not n_match else f"loaded only {n_match} of {len(total)} tensors"
        raise ModelError(f"weights {path} do not fit the {cfg.encoder} encoder: a strict=False load "
                         f"{what} (unmatched e.g. {', '.join(unmatched[:5])}; shape mismatches: "
                         f"{', '.join(shape_mismatch[:5]) or 'none'})")
    extra = [k for k in stripped if _countable(k) and k not in target
             and not k.startswith(("fc.", f"{head or 'fc'}."))]
    if len(extra) > (1 - MIN_LOADED_FRACTION) * len(total):
        raise ModelError(f"weights {path} hold {len(extra)} encoder tensors the {cfg.encoder} encoder "
                         f"lacks (e.g. {', '.join(extra[:5])}): weights of another architecture?")
    encoder.load_state_dict(dict(to_load), strict=False)
    head_loaded = False
    if source.kind == "file" and head and all(  # a head from pretraining never fits our classes
        k in prepared and prepared[k].shape == v.shape for k, v in head_target.items()
    ):
        getattr(model, head).load_state_dict({k[len(head) + 1:]: prepared[k] for k in head_target})
        head_loaded = True
    # verify: every tensor with a counterpart in the file now equals it (torchgeo #4036)
    after = encoder.state_dict()
    differ = [k for k, v in to_load.items() if not torch.equal(after[k], v.to(after[k].dtype))]
    loaded = [k for k in total if k in to_load and k not in differ]
    if differ or len(loaded) < MIN_LOADED_FRACTION * len(total):
        raise ModelError(f"weights {path}: after a strict=False load only {len(loaded)} of "
                         f"{len(total)} tensors equal the file's (differ: {', '.join(differ[:5])})")
    dkeys = {band_key(b) for b in data_bands}
    return {
        "source": source.kind, "encoder_weights": source.spec, "url": source.url,
        "file": path.name, "sha256": sha256, "hash_prefix_ok": hash_ok,
        "key_prefix": prefix, "weight_bands": wbands, "weight_bands_from": bands_from,
        "data_bands": list(data_bands), "channel_map": channel_map,
        "dropped_weight_bands": [b for b in wbands if b not in dkeys],
        "new_bands": [b for b, i in channel_map.items() if i is None],
        "first_conv_scale": scale, "loaded": True, "tensors_loaded": len(loaded),
        "tensors_total": len(total), "unmatched_keys": unmatched[:10], "head_loaded": head_loaded,
    }


def set_encoder_trainable(model: nn.Module, trainable: bool) -> int:
    """Set ``requires_grad`` of the encoder's parameters; returns how many tensors changed.

    BatchNorm running statistics still update in train mode: call ``encoder_of(model).eval()``
    after ``model.train()`` as well to freeze them.
    """
    params = list(encoder_of(model).parameters())
    for param in params:
        param.requires_grad_(trainable)
    return len(params)
