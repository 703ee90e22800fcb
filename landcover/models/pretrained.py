"""Transfer learning: band-match, load and verify pretrained ResNet weights.

Which file a weight spec (``ModelConfig.encoder_weights``: a torchgeo name, ``imagenet`` or a local
file) names, finding or fetching it, and reading its tensors and stored band names are
:mod:`landcover.models.weight_files`' part; this module puts those tensors into the encoder.

First-convolution rule: the kernel of data band ``b`` is the file's kernel of band ``b`` (matched by
name, so 13-band L1C weights on 12-band L2A data drop B10 and keep the others exactly, in the data's
order). A data band the file lacks is an error unless ``adapt_channels``; then its kernel is the mean
of the file's kernels. A channel's response to inputs of similar scale is about the sum of its
kernels, and the pretrained layer summed ``n_file`` of them: if the data has more channels than
the file, every kernel is multiplied by ``n_file / n_data`` (the timm/smp convention, e.g. x 3/12
for RGB weights on 12 bands); otherwise kernels are kept as they are.

Multi-date composites (bands ``B04@spring``, ``B04@summer``..., :mod:`landcover.sources.recipe`): single-date
weights give every period's ``B04`` the file's ``B04`` kernel, so the kernels are repeated once per period and,
by the rule above, multiplied by ``n_file / n_data`` (1/3 for 12-band weights on a 3-period composite of the
same 12 bands): the first layer responds to a pixel whose periods agree as the pretrained one did to one date.
Weights whose file names period bands themselves (a model trained on composites) are matched name for name.

Verification: only tensors whose names and shapes match are loaded (``strict=False``); afterwards
each must equal its file tensor, and at least 90 % of the encoder's tensors must have been loaded,
else :class:`ModelError` (a ``strict=False`` load that silently loads nothing, torchgeo #4036).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landcover.errors import ModelError
from landcover.models.config import ModelConfig
from landcover.models.encoders import encoder_of, head_name
from landcover.models.weight_files import (
    RGB_BANDS,
    WeightSource,
    band_key,
    file_sha256,
    find_weight_file,
    l1c_bands,
    read_state_dict,
    resolve_weights,
)
from landcover.sources.recipe import split_band

log = logging.getLogger(__name__)

MIN_LOADED_FRACTION = 0.9


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
    return prefix, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def adapt_first_conv(
    weight: torch.Tensor, weight_bands: Sequence[str], data_bands: Sequence[str], *, adapt_channels: bool = False
) -> tuple[torch.Tensor, dict[str, int | None], float]:
    """First-conv kernel ``(out, len(data_bands), k, k)`` for the data's bands (see module doc).

    Returns the kernel, the channel map (data band -> index of its kernel in the file, None for a
    new channel) and the scale applied to every kernel.
    """
    wkeys = [band_key(b) for b in weight_bands]
    if weight.ndim != 4 or weight.shape[1] != len(wkeys):
        raise ModelError(
            f"the file's first convolution has {tuple(weight.shape)[1:2]} input channels "
            f"but {len(wkeys)} weight bands ({', '.join(wkeys)}); set model.weight_bands"
        )
    index = {b: i for i, b in enumerate(wkeys)}
    # a composite's B04@spring, B04@summer... start from the single-date kernel of B04 (repeated per period; the
    # scale below divides by the number of periods, so the first layer's response keeps its size)
    dkeys = [band_key(b) if band_key(b) in index else band_key(split_band(b)[0]) for b in data_bands]
    missing = [b for b in dkeys if b not in index]
    if missing and not adapt_channels:
        raise ModelError(
            f"the weights have no kernels for data bands {', '.join(missing)} (weight bands: "
            f"{', '.join(wkeys)}); drop those bands, use other weights, or set "
            "model.adapt_channels=true to start them from the mean kernel"
        )
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


def _file_band_order(
    source: WeightSource, stored_bands: list[str] | None, n_channels: int, data_bands: Sequence[str], path: Path
) -> tuple[list[str], str]:
    """The band order of the file's first convolution, and where it comes from."""
    if source.bands is not None:
        return list(source.bands), source.bands_from
    if stored_bands is not None:
        return [band_key(b) for b in stored_bands], "stored in the file"
    single_dates = list(dict.fromkeys(band_key(split_band(b)[0]) for b in data_bands))  # a composite's bands
    if n_channels == len(data_bands):
        wbands, bands_from = [band_key(b) for b in data_bands], "assumed: same as the data"
    elif n_channels == len(single_dates) < len(data_bands):
        wbands, bands_from = single_dates, "assumed: the data's bands of one period"
    elif n_channels == 13:
        wbands, bands_from = list(l1c_bands()), "assumed: 13 L1C bands in ESA order"
    elif n_channels == 3:
        wbands, bands_from = list(RGB_BANDS), "assumed: RGB (B04, B03, B02)"
    else:
        raise ModelError(
            f"{path}: the first convolution takes {n_channels} bands and the file does not "
            "name them; set model.weight_bands to the file's band order"
        )
    log.warning("%s: band order %s", path, bands_from)
    return wbands, bands_from


def _tensors_to_load(
    prepared: dict[str, torch.Tensor], target: dict[str, torch.Tensor], head: str | None, encoder_name: str, path: Path
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The file's tensors that fit the encoder, the countable encoder keys and those left unmatched;
    a file that fits too little (or holds too much of another architecture) is an error."""
    to_load = {k: v for k, v in prepared.items() if k in target and v.shape == target[k].shape}
    shape_mismatch = [k for k, v in prepared.items() if k in target and v.shape != target[k].shape]
    total = [k for k in target if _countable(k)]
    unmatched = [k for k in total if k not in to_load]
    n_match = len(total) - len(unmatched)
    if n_match < MIN_LOADED_FRACTION * len(total):
        what = "loaded nothing" if not n_match else f"loaded only {n_match} of {len(total)} tensors"
        raise ModelError(
            f"weights {path} do not fit the {encoder_name} encoder: a strict=False load "
            f"{what} (unmatched e.g. {', '.join(unmatched[:5])}; shape mismatches: "
            f"{', '.join(shape_mismatch[:5]) or 'none'})"
        )
    extra = [k for k in prepared if _countable(k) and k not in target and not k.startswith(("fc.", f"{head or 'fc'}."))]
    if len(extra) > (1 - MIN_LOADED_FRACTION) * len(total):
        raise ModelError(
            f"weights {path} hold {len(extra)} encoder tensors the {encoder_name} encoder "
            f"lacks (e.g. {', '.join(extra[:5])}): weights of another architecture?"
        )
    return to_load, total, unmatched


def _verified(encoder: nn.Module, to_load: dict[str, torch.Tensor], total: list[str], path: Path) -> list[str]:
    """The keys whose tensors now equal the file's; an error when too few do (torchgeo #4036)."""
    after = encoder.state_dict()
    differ = [k for k, v in to_load.items() if not torch.equal(after[k], v.to(after[k].dtype))]
    loaded = [k for k in total if k in to_load and k not in differ]
    if differ or len(loaded) < MIN_LOADED_FRACTION * len(total):
        raise ModelError(
            f"weights {path}: after a strict=False load only {len(loaded)} of "
            f"{len(total)} tensors equal the file's (differ: {', '.join(differ[:5])})"
        )
    return loaded


def load_pretrained(model: nn.Module, cfg: ModelConfig, data_bands: Sequence[str]) -> dict[str, Any]:
    """Load ``cfg.encoder_weights`` into the encoder of ``model`` (and a matching classifier head).

    Returns provenance: spec, source, url, file name (not its path: outputs carry no paths of the
    user's machine), sha256, key prefix, weight/data bands, channel map, tensors loaded/total, whether
    the head was loaded.
    """
    source = resolve_weights(cfg.encoder_weights, cfg.encoder, cfg.weight_bands)
    path = find_weight_file(source, cfg.weights_dir, cfg.allow_download)
    sha256 = file_sha256(path)
    hash_ok = sha256.startswith(source.hash_prefix) if source.hash_prefix else None
    if hash_ok is False:
        log.warning("%s: sha256 %s does not start with %s from its name", path, sha256[:12], source.hash_prefix)
    state, stored_bands = read_state_dict(path)
    encoder = encoder_of(model)
    target = encoder.state_dict()
    head = head_name(model)
    head_target = {f"{head}.{k}": v for k, v in getattr(model, head).state_dict().items()} if head else {}
    prefix, stripped = strip_prefix(state, set(target) | set(head_target))
    conv_key = _first_conv_key(encoder)
    if not stripped:
        few = ", ".join(list(state)[:5])
        raise ModelError(
            f"weights {path} do not fit the {cfg.encoder} encoder: a strict=False load "
            f"loaded nothing - no key matches (file keys: {few}, ...; expected e.g. "
            f"{', '.join(list(target)[:3])})"
        )
    if conv_key not in stripped:
        raise ModelError(
            f"weights {path} have no first convolution {prefix}{conv_key}; they do not fit the {cfg.encoder} encoder"
        )
    wbands, bands_from = _file_band_order(source, stored_bands, stripped[conv_key].shape[1], data_bands, path)
    kernel, channel_map, scale = adapt_first_conv(
        stripped[conv_key], wbands, data_bands, adapt_channels=cfg.adapt_channels
    )
    prepared = {**stripped, conv_key: kernel}
    to_load, total, unmatched = _tensors_to_load(prepared, target, head, cfg.encoder, path)
    encoder.load_state_dict(dict(to_load), strict=False)
    head_loaded = False
    if (
        source.kind == "file"
        and head
        and all(  # a head from pretraining never fits our classes
            k in prepared and prepared[k].shape == v.shape for k, v in head_target.items()
        )
    ):
        getattr(model, head).load_state_dict({k[len(head) + 1 :]: prepared[k] for k in head_target})
        head_loaded = True
    loaded = _verified(encoder, to_load, total, path)
    dkeys = {band_key(b) for b in data_bands} | {band_key(split_band(b)[0]) for b in data_bands}
    return {
        "source": source.kind,
        "encoder_weights": source.spec,
        "url": source.url,
        "file": path.name,
        "sha256": sha256,
        "hash_prefix_ok": hash_ok,
        "key_prefix": prefix,
        "weight_bands": wbands,
        "weight_bands_from": bands_from,
        "data_bands": list(data_bands),
        "channel_map": channel_map,
        "dropped_weight_bands": [b for b in wbands if b not in dkeys],
        "new_bands": [b for b, i in channel_map.items() if i is None],
        "first_conv_scale": scale,
        "loaded": True,
        "tensors_loaded": len(loaded),
        "tensors_total": len(total),
        "unmatched_keys": unmatched[:10],
        "head_loaded": head_loaded,
    }
