"""Training augmentation of a batch, on its device: geometry with kornia, a reflectance-aware jitter.

Geometry (flips, 90-degree rotations, a random resized crop) is kornia's ``AugmentationSequential`` over
``image`` and ``mask`` together, as torchgeo does it: the image is resampled bilinearly, the mask with
nearest (its ids, 255 included, are never blended). The photometric jitter is ours, because it works in
reflectance units: brightness ``x (1 + u)`` and contrast around each band's mean, per sample and band,
leaving no-data pixels (every band 0) at 0; kornia's colour jitter assumes RGB in [0, 1].

Draws are reproducible: every call takes its randomness from a ``torch.Generator`` (the data module keys
one by seed, rank and epoch), and kornia, which draws from torch's global generator, runs inside
``torch.random.fork_rng`` seeded from it, so the global state is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kornia.augmentation as K
import torch

from landcover.training.config import AugmentConfig


def geometry(cfg: AugmentConfig, height: int, width: int) -> K.AugmentationSequential | None:
    """kornia's pipeline for ``cfg``'s geometric augmentations of (height, width) crops (None: none)."""
    steps: list[Any] = []
    if cfg.hflip:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    if cfg.vflip:
        steps.append(K.RandomVerticalFlip(p=0.5))
    if cfg.rot90 and height == width:  # a quarter turn of a non-square crop would change its shape
        steps.append(K.RandomRotation90(times=(0, 3), p=1.0))
    if cfg.resized_crop:
        steps.append(
            K.RandomResizedCrop(
                (height, width), scale=(cfg.crop_scale[0], cfg.crop_scale[1]), ratio=(3 / 4, 4 / 3), p=1.0
            )
        )
    return K.AugmentationSequential(*steps, data_keys=["input", "mask"]) if steps else None


def reflectance_jitter(
    image: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    brightness: float,
    contrast: float,
    rand: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Brightness/contrast jitter of normalised ``image`` (B, C, H, W) in raw units, then renormalised."""
    b, c = image.shape[:2]
    mean, std = mean.to(image.device).view(1, -1, 1, 1), std.to(image.device).view(1, -1, 1, 1)
    nodata = (image == 0).all(dim=1, keepdim=True)
    raw = image * std + mean
    raw = raw * (1 + (rand(b, c, 1, 1) * 2 - 1) * brightness)
    valid = (~nodata).to(image.dtype)
    band_mean = (raw * valid).sum((-2, -1), keepdim=True) / valid.sum((-2, -1), keepdim=True).clamp(min=1)
    raw = (raw - band_mean) * (1 + (rand(b, c, 1, 1) * 2 - 1) * contrast) + band_mean
    return torch.where(nodata, torch.zeros_like(image), (raw - mean) / std)


def augment_batch(
    batch: dict[str, Any], cfg: AugmentConfig, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> dict[str, Any]:
    """``batch`` with its image (B, C, H, W) and mask (B, H, W) augmented alike; draws from ``generator``."""
    image, mask = batch["image"], batch["mask"]
    pipeline = geometry(cfg, *image.shape[-2:])
    if pipeline is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [image.device] if image.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            image, warped = pipeline(image, mask[:, None].to(image.dtype))
        mask = warped[:, 0].round().to(mask.dtype)
    if cfg.brightness > 0 or cfg.contrast > 0:

        def rand(*shape: int) -> torch.Tensor:  # drawn on the CPU generator, then moved
            return torch.rand(*shape, generator=generator).to(image.device)

        image = reflectance_jitter(image, mean, std, cfg.brightness, cfg.contrast, rand)
    return {**batch, "image": image, "mask": mask}


__all__ = ["augment_batch", "geometry", "reflectance_jitter"]
