"""Model construction: a U-Net (segmentation) or a ResNet classifier (classification).

* ``task="segmentation"``: ``smp.Unet`` with a ResNet encoder, ``len(bands)`` input channels and
  ``num_classes`` output channels at the input resolution (H and W must be multiples of 32).
* ``task="classification"``: a timm ResNet with ``len(bands)`` input channels and ``num_classes``
  logits.

Neither is ever built with library weights (no hub downloads): pretrained weights are loaded by
:mod:`landcover.weights`, which matches the first convolution to the data's bands by name and
verifies what it loaded. This module does not import Lightning, so prediction works without it.

The *encoder* (:func:`encoder_of`) is what pretrained weights go into: ``model.encoder`` of the
U-Net, or the timm ResNet without its ``fc`` head. :func:`parameter_groups` splits the
parameters the same way for optimizers (encoder vs. decoder/head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from landcover.errors import ConfigError, ModelError
from landcover.train_config import ModelConfig

ENCODERS = ("resnet18", "resnet34", "resnet50")


class _DropoutSegmentationHead(nn.Sequential):
    """smp's segmentation head with dropout on its input; state-dict keys stay those of the head."""

    def __init__(self, p: float, head: nn.Sequential) -> None:
        super().__init__(*head)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, self.p, self.training))

    def extra_repr(self) -> str:
        return f"dropout={self.p}"


class _EncoderView(nn.Module):
    """The timm ResNet without its classifier (and pooling): the modules pretrained weights fill.

    It shares its submodules with the model, so loading into the view loads into the model.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


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
    verified (:func:`landcover.weights.load_pretrained`); the provenance dict says which file
    (path, sha256), which bands and how many tensors. With ``load_weights=False`` (rebuilding a
    model whose parameters come from a checkpoint) nothing is read and no file is needed.
    """
    names = _check_bands(bands)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    model: nn.Module
    if cfg.task == "segmentation":
        model = smp.Unet(
            encoder_name=cfg.encoder, encoder_weights=None, in_channels=len(names),
            classes=num_classes,
        )
        if cfg.drop_path > 0:
            raise ConfigError("model.drop_path (stochastic depth) needs the timm encoders of the classification "
                              "task; smp's U-Net encoders have none: set it to 0 (use model.dropout instead)")
        head = model.segmentation_head
        if cfg.dropout > 0 and isinstance(head, nn.Sequential):
            model.segmentation_head = _DropoutSegmentationHead(cfg.dropout, head)
    else:
        model = timm.create_model(
            cfg.encoder, pretrained=False, in_chans=len(names), num_classes=num_classes,
            drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path,
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
    from landcover.weights import load_pretrained  # lazy: torchgeo only when weights are named

    provenance.update(load_pretrained(model, cfg, names))
    return model, provenance


def _timm_head_name(model: nn.Module) -> str:
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        raise ModelError(f"{type(model).__name__} is neither an smp U-Net nor a timm classifier")
    head = get_classifier()
    for name, module in model.named_children():
        if module is head:
            return name
    raise ModelError(f"cannot find the classifier of {type(model).__name__}")


def head_name(model: nn.Module) -> str | None:
    """Name of the classification head (``'fc'`` for timm ResNets), None for a U-Net."""
    if isinstance(model, smp.Unet):
        return None
    return _timm_head_name(model)


def encoder_of(model: nn.Module) -> nn.Module:
    """The part of ``model`` that pretrained weights go into.

    ``model.encoder`` for the U-Net; for a timm ResNet a view of every child but the classifier
    and the global pooling (state-dict keys ``conv1.weight``, ``bn1.*``, ``layer1..4.*``).
    """
    if isinstance(model, smp.Unet):
        return model.encoder
    head = _timm_head_name(model)
    skip = {head, "global_pool", "head_drop"}
    return _EncoderView({n: m for n, m in model.named_children() if n not in skip})


def encoder_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the encoder's parameters."""
    ids = {id(p) for p in encoder_of(model).parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{'encoder': [...], 'head': [...]}``: encoder parameters vs. everything else.

    U-Net: 'encoder' = ``encoder.*``, 'head' = ``decoder.*`` + ``segmentation_head.*``;
    timm ResNet: 'encoder' = all but ``fc.*``, 'head' = ``fc.*``. Use them as optimizer parameter
    groups (e.g. a lower learning rate for the pretrained encoder).
    """
    names = encoder_parameter_names(model)
    groups: dict[str, list[nn.Parameter]] = {"encoder": [], "head": []}
    for name, param in model.named_parameters():
        groups["encoder" if name in names else "head"].append(param)
    return groups


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
