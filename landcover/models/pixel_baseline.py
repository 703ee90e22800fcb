"""The strong per-pixel baseline: LightGBM over the features of :mod:`landcover.models.pixel_features`.

:class:`PixelBaseline` wraps a trained LightGBM booster as a torch module with the U-Net's contract, a
``(B, C, H, W)`` batch of reflectance in, ``(B, K, H, W)`` log-probabilities out, so ``landcover predict``
streams it through the same windows, writers and checks as a CNN. Its checkpoint is a torch file with the
same ``landcover`` section as a CNN's and the booster as text (``lightgbm``), loadable with
``weights_only=True``. A feature needs :attr:`context` pixels on each side: predict gives it windows
that overlap by twice that and takes each pixel from the window where it lies deepest, so the map does
not depend on the window grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from landcover.models.config import FeatureRecipe, LightGBMConfig
from landcover.models.pixel_features import compute_features


def lightgbm_params(cfg: LightGBMConfig, num_classes: int, seed: int) -> dict[str, Any]:
    """LightGBM's parameters for a multi-class booster of ``cfg``."""
    return {
        "objective": "multiclass",
        "num_class": num_classes,
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1 if cfg.bagging_fraction < 1 else 0,
        "lambda_l2": cfg.lambda_l2,
        "num_threads": cfg.num_threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


class PixelBaseline(nn.Module):
    """A LightGBM booster behind the segmentation model contract (log-probabilities per pixel)."""

    def __init__(self, model_text: str, bands: Sequence[str], num_classes: int, recipe: FeatureRecipe) -> None:
        super().__init__()
        import lightgbm

        self.booster = lightgbm.Booster(model_str=model_text)
        self.bands, self.num_classes, self.recipe = list(bands), int(num_classes), recipe
        expected = len(recipe.feature_names(self.bands))
        if self.booster.num_feature() != expected or self.booster.num_model_per_iteration() != num_classes:
            raise ValueError(
                f"the booster has {self.booster.num_feature()} features and "
                f"{self.booster.num_model_per_iteration()} classes; its recipe gives {expected} features and "
                f"the nomenclature {num_classes} classes"
            )

    @property
    def context(self) -> int:
        return self.recipe.halo

    def predict_proba(self, reflectance: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(K, H, W) float32 class probabilities of a (C, H, W) reflectance window (uniform where invalid)."""
        k, (h, w) = self.num_classes, valid.shape
        out = np.full((k, h, w), 1.0 / k, np.float32)
        if valid.any():
            feats = compute_features(reflectance, valid, self.bands, self.recipe)
            out[:, valid] = np.asarray(self.booster.predict(feats[:, valid].T)).T.astype(np.float32)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, K, H, W) of a batch of reflectance (no-data pixels 0 in every band)."""
        arrays = x.detach().float().cpu().numpy()
        probs = np.stack([self.predict_proba(a, (a != 0).any(axis=0)) for a in arrays])
        return torch.from_numpy(np.log(np.maximum(probs, 1e-12))).to(x.device)


def baseline_from_checkpoint(model_text: str, meta: dict[str, Any]) -> PixelBaseline:
    """The baseline of a checkpoint's booster text and ``landcover`` section."""
    recipe = FeatureRecipe.model_validate(((meta["model"] or {}).get("lightgbm") or {}).get("features") or {})
    return PixelBaseline(model_text, [str(b) for b in meta["bands"]], len(meta["nomenclature"]["classes"]), recipe)


__all__ = ["PixelBaseline", "baseline_from_checkpoint", "lightgbm_params"]
