"""Model construction: a U-Net (segmentation) or a ResNet classifier (classification).

* ``task="segmentation"``: ``smp.Unet`` with a ResNet encoder, ``len(bands)`` input channels and
  ``num_classes`` output channels at the input resolution (H and W must be multiples of 32).
* ``task="classification"``: a timm ResNet with ``len(bands)`` input channels and ``num_classes``
  logits.

Neither is ever built with library weights (no hub downloads): pretrained weights are loaded by
:mod:`landcover.models.pretrained`, which matches the first convolution to the data's bands by name and
verifies what it loaded. This module does not import Lightning, so prediction works without it.

The settings are :class:`landcover.models.config.ModelConfig`; the encoder and the parameter groups
:mod:`landcover.models.encoders`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from landcover.errors import ConfigError
from landcover.models.config import ModelConfig
from landcover.models.encoders import count_parameters


class _DropoutSegmentationHead(nn.Sequential):
    """smp's segmentation head with dropout on its input; state-dict keys stay those of the head."""

    def __init__(self, p: float, head: nn.Sequential) -> None:
        super().__init__(*head)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"dropout={self.p}"


def _check_bands(bands: Sequence[str]) -> list[str]:
    if isinstance(bands, str) or not bands:
        raise ConfigError(f"the model needs a non-empty list of band names, got {bands!r}")
    names = [str(b) for b in bands]
    if len(set(names)) != len(names):
        raise ConfigError(f"band names must be distinct, got {names}")
    return names


def build_model(
    cfg: ModelConfig, bands: Sequence[str], num_classes: int, *, load_weights: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The network for ``bands`` (in the data's order) and ``num_classes``, and its provenance.

    With ``load_weights`` the weights of ``cfg.encoder_weights`` are loaded into the encoder and
    verified (:func:`landcover.models.pretrained.load_pretrained`); the provenance dict says which file
    (path, sha256), which bands and how many tensors. With ``load_weights=False`` (rebuilding a
    model whose parameters come from a checkpoint) nothing is read and no file is needed.
    """
    names = _check_bands(bands)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    model: nn.Module
    if cfg.task == "segmentation":
        model = smp.Unet(encoder_name=cfg.encoder, encoder_weights=None, in_channels=len(names), classes=num_classes)
        if cfg.drop_path > 0:
            raise ConfigError(
                "model.drop_path (stochastic depth) needs the timm encoders of the classification "
                "task; smp's U-Net encoders have none: set it to 0 (use model.dropout instead)"
            )
        head = model.segmentation_head
        if cfg.dropout > 0 and isinstance(head, nn.Sequential):
            model.segmentation_head = _DropoutSegmentationHead(cfg.dropout, head)
    else:
        model = timm.create_model(
            cfg.encoder,
            pretrained=False,
            in_chans=len(names),
            num_classes=num_classes,
            drop_rate=cfg.dropout,
            drop_path_rate=cfg.drop_path,
        )
    provenance: dict[str, Any] = {
        "task": cfg.task,
        "encoder": cfg.encoder,
        "encoder_weights": cfg.encoder_weights,
        "data_bands": names,
        "num_classes": num_classes,
        "parameters": count_parameters(model),
    }
    if not load_weights:
        provenance.update(source="checkpoint", loaded=False, tensors_loaded=0)
        return model, provenance
    if cfg.encoder_weights == "none":
        provenance.update(source="none", loaded=False, tensors_loaded=0)
        return model, provenance
    from landcover.models.pretrained import load_pretrained

    provenance.update(load_pretrained(model, cfg, names))
    return model, provenance
