"""The encoder of a network: the part pretrained weights go into, and the parameter groups around it.

``model.encoder`` of the U-Net, or the timm ResNet without its classifier and pooling
(:func:`encoder_of`); :func:`parameter_groups` splits the parameters the same way for optimizers
(encoder vs. decoder/head). A leaf: it knows nothing of configs or weight files.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from landcover.errors import ModelError


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


def set_encoder_trainable(model: nn.Module, trainable: bool) -> int:
    """Set ``requires_grad`` of the encoder's parameters; returns how many tensors changed.

    BatchNorm running statistics still update in train mode: call ``encoder_of(model).eval()``
    after ``model.train()`` as well to freeze them.
    """
    params = list(encoder_of(model).parameters())
    for param in params:
        param.requires_grad_(trainable)
    return len(params)
