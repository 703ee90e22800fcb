"""Batch augmentation (kornia geometry + reflectance jitter): image and mask move together, mask ids are
never blended, no-data stays 0, draws are reproducible per generator and leave the global RNG alone."""

from __future__ import annotations

import torch

from landcover.training.augment import augment_batch
from landcover.training.config import AugmentConfig

ZERO, ONE = torch.zeros(2), torch.ones(2)


def coordinates(b: int = 16, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose two bands are the row and column of each pixel, and a mask of 8 x 8-px blocks."""
    yy, xx = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    image = torch.stack([yy, xx])[None].repeat(b, 1, 1, 1)
    mask = (yy // 8 * 4 + xx // 8).long()[None].repeat(b, 1, 1)
    return image, mask


def test_flips_and_quarter_turns_move_image_and_mask_alike():
    cfg = AugmentConfig(hflip=True, vflip=True, rot90=True)
    mask = torch.randint(0, 5, (64, 32, 32))
    image = mask[:, None].float().repeat(1, 2, 1, 1)
    out = augment_batch({"image": image, "mask": mask}, cfg, ZERO, ONE, torch.Generator().manual_seed(1))
    assert torch.equal(out["image"][:, 0].round().long(), out["mask"])
    assert (out["mask"] != mask).flatten(1).any(1).float().mean() > 0.5  # most samples were transformed
    assert out["mask"].dtype == torch.int64 and out["image"].dtype == torch.float32


def test_resized_crop_samples_the_mask_with_nearest():
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, resized_crop=True, crop_scale=(0.5, 0.9))
    image, mask = coordinates()
    mask[:, :8] = 255  # ignored pixels keep their id
    out = augment_batch({"image": image, "mask": mask}, cfg, ZERO, ONE, torch.Generator().manual_seed(2))
    assert set(out["mask"].unique().tolist()) <= set(mask.unique().tolist())  # ids, never blends of ids
    rows, cols = out["image"][:, 0].round().clamp(0, 31).long(), out["image"][:, 1].round().clamp(0, 31).long()
    assert (mask[0][rows, cols] == out["mask"]).float().mean() > 0.97  # the mask follows the image's warp
    assert not torch.equal(out["mask"], mask)


def test_draws_are_reproducible_per_generator_and_leave_the_global_rng_alone():
    cfg = AugmentConfig(resized_crop=True, brightness=0.2, contrast=0.2)
    image, mask = coordinates()
    state = torch.random.get_rng_state()
    a, b, c = (
        augment_batch({"image": image, "mask": mask}, cfg, ZERO, ONE, torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    )
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])  # another rank or epoch: other draws
    assert torch.equal(state, torch.random.get_rng_state())


def test_jitter_changes_the_image_only_and_keeps_no_data_at_zero():
    cfg = AugmentConfig(hflip=False, vflip=False, rot90=False, brightness=0.3, contrast=0.3)
    image = torch.randn(4, 3, 16, 16)
    image[:, :, :4] = 0  # no data: every band 0
    mask = torch.randint(0, 5, (4, 16, 16))
    out = augment_batch(
        {"image": image, "mask": mask},
        cfg,
        torch.full((3,), 1000.0),
        torch.full((3,), 500.0),
        torch.Generator().manual_seed(3),
    )
    assert torch.equal(out["mask"], mask)
    assert torch.all(out["image"][:, :, :4] == 0)
    assert not torch.allclose(out["image"][:, :, 4:], image[:, :, 4:])
