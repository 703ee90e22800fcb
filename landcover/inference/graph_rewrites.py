"""Exact rewrites of a network for inference on a CPU, on its torch.fx graph.

* Batch norms folded into the convolutions before them (torch.fx's inference fusion).
* A 3x3 convolution of a nearest 2x upsampling (U-Net decoders: ``conv(cat([upsample(x), skip]))``) computed on the
  coarse grid: output pixel ``(2i + a, 2j + b)`` sees only the coarse pixels ``i - 1 + a .. i + a`` and
  ``j - 1 + b .. j + b``, so each of the four phases ``(a, b)`` is a 2x2 convolution of ``x`` whose kernel sums the
  3x3 taps that fall on the same coarse pixel. The four phases are one convolution with 4x the output channels,
  interleaved into the output; the skip connection keeps its own 3x3 convolution. 16 instead of 36 multiply-adds
  per output and input channel of ``x``, and neither the upsampled tensor nor the concatenation is built
  (docs/benchmarks.md: the forward of four 256-px windows 0.204 -> 0.177 s here).

Both are the same arithmetic up to float rounding (sums in another order); the rewritten model is compared with
the original on a probe before use, and any model the rewrites cannot trace or do not fit runs as it is.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import fx, nn


def optimise_for_cpu(model: nn.Module, channels: int) -> nn.Module:
    """``model`` with its batch norms folded and its upsampling convolutions on the coarse grid, or ``model``
    itself when it cannot be traced (an untraceable architecture, a wrapper with side effects), nothing applies,
    or the rewritten model disagrees with it on a probe window (more than float rounding)."""
    import torch.fx.experimental.optimization as fx_optimization

    has_norms = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    has_upsampling = any(isinstance(m, nn.Conv2d) and _is_plain_3x3(m) for m in model.modules())  # a candidate
    if not (has_norms or has_upsampling):
        return model
    try:
        graph_module = fx_optimization.fuse(model) if has_norms else fx.symbolic_trace(model)
        rewritten = coarse_grid_convolutions(graph_module)  # type: ignore[arg-type]
        if not has_norms and not rewritten:
            return model
        probe = torch.randn(2, channels, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            same = torch.allclose(graph_module(probe), model(probe), rtol=1e-3, atol=1e-3)
    except Exception:  # fx raises many kinds of errors on untraceable code: run it as it is
        return model
    return graph_module if same else model


class CoarseGridConv(nn.Module):
    """``conv(cat([interpolate(x, size, mode='nearest'), *skips], 1))`` for a 3x3, stride-1, padding-1 ``conv``,
    computed on the coarse grid of ``x`` when ``size`` is twice its size (else exactly as written). The coarse
    kernels are derived from ``conv``'s weights on first use, in the input's dtype, device and memory format."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self._kernels: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor, size: tuple[int, int], *skips: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if tuple(size) != (2 * height, 2 * width) or x.dim() != 4:
            upsampled = F.interpolate(x, size=size, mode="nearest")
            return self.conv(torch.cat([upsampled, *skips], dim=1) if skips else upsampled)
        phases_w, skip_w, bias = self._coarse_kernels(x)
        cout = bias.shape[0]
        if skips:  # the skip's own 3x3 convolution carries the bias; the phases are added to it
            out = F.conv2d(torch.cat(skips, dim=1) if len(skips) > 1 else skips[0], skip_w, bias, padding=1)
            phases = F.conv2d(x, phases_w, padding=1)  # (B, 4 * Cout, H + 1, W + 1)
        else:
            out = torch.empty(
                (x.shape[0], cout, 2 * height, 2 * width), dtype=x.dtype, device=x.device, memory_format=_layout(x)
            )
            phases = F.conv2d(x, phases_w, bias.repeat(4), padding=1)
        for a in (0, 1):
            for b in (0, 1):
                k = 2 * a + b
                phase = phases[:, k * cout : (k + 1) * cout, a : a + height, b : b + width]
                target = out[:, :, a::2, b::2]
                target.add_(phase) if skips else target.copy_(phase)
        return out

    def _coarse_kernels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cx = x.shape[1]
        layout = _layout(x)
        key = (cx, x.dtype, x.device, layout)
        if key not in self._kernels:  # ordinary tensors even when first made in inference mode: usable with autograd
            with torch.inference_mode(False), torch.no_grad():
                self._kernels[key] = self._derive(cx, x.dtype, layout)
        return self._kernels[key]

    def _derive(
        self, cx: int, dtype: torch.dtype, layout: torch.memory_format
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The phases' kernels of the first ``cx`` input channels, the skip's kernel and the bias."""
        weight = self.conv.weight.detach()
        bias = self.conv.bias.detach() if self.conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
        return (
            phase_kernels(weight[:, :cx]).to(dtype).contiguous(memory_format=layout),
            weight[:, cx:].to(dtype).contiguous(memory_format=layout),
            bias.to(dtype),
        )


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cx, 3, 3) taps on the upsampled grid -> (4 * Cout, Cx, 2, 2) kernels on the coarse grid, phase
    ``(a, b)`` at output channels ``(2a + b) * Cout ..``: taps that land on the same coarse pixel are summed
    (phase 0 of an axis: tap 0 on the first coarse pixel, taps 1 and 2 on the second; phase 1: taps 0 and 1, tap 2).
    """
    taps = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}
    w = weight.double()
    kernels = []
    for a in (0, 1):
        rows = torch.stack([w[:, :, list(t)].sum(2) for t in taps[a]], dim=2)  # (Cout, Cx, 2, 3)
        for b in (0, 1):
            kernels.append(torch.stack([rows[..., list(t)].sum(-1) for t in taps[b]], dim=-1))
    return torch.cat(kernels, dim=0).to(weight.dtype)


def coarse_grid_convolutions(gm: fx.GraphModule) -> int:
    """Replace every ``conv3x3(cat([interpolate(x, size, mode='nearest'), skip]))`` (identity modules between them
    allowed) in ``gm`` by a :class:`CoarseGridConv`; returns how many were replaced."""
    modules = dict(gm.named_modules())
    replaced = 0
    for node in list(gm.graph.nodes):
        conv = modules.get(str(node.target)) if node.op == "call_module" else None
        match = _upsampling_input(node, modules) if isinstance(conv, nn.Conv2d) and _is_plain_3x3(conv) else None
        if conv is None or match is None:
            continue
        x, size, skips = match
        name = f"{str(node.target).replace('.', '_')}_coarse"
        gm.add_submodule(name, CoarseGridConv(conv))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (x, size, *skips))
        node.replace_all_uses_with(new)
        replaced += 1
    if replaced:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return replaced


def _upsampling_input(conv: fx.Node, modules: dict[str, nn.Module]) -> tuple[Any, Any, list[Any]] | None:
    """``(x, size, skips)`` when the input of ``conv`` is ``cat([interpolate(x, size, mode='nearest'), *skips])`` or
    ``interpolate(x, size, mode='nearest')``, each used only there; else None."""
    source = _skip_identities(conv.args[0], modules)
    skips: list[Any] = []
    if _is_call(source, torch.cat) and _cat_dim(source) == 1 and len(source.users) == 1:
        tensors = source.args[0]
        if not isinstance(tensors, (list, tuple)) or not tensors:
            return None
        source, skips = tensors[0], list(tensors[1:])
    if not (_is_call(source, F.interpolate) and _is_nearest_resize(source) and len(source.users) == 1):
        return None
    return source.args[0], source.kwargs["size"], skips


def _is_plain_3x3(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _skip_identities(arg: object, modules: dict[str, nn.Module]) -> object:
    while (
        isinstance(arg, fx.Node) and arg.op == "call_module" and isinstance(modules.get(str(arg.target)), nn.Identity)
    ):
        if len(arg.users) != 1:
            return None
        arg = arg.args[0]
    return arg


def _is_call(node: object, fn: object) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is fn


def _cat_dim(node: fx.Node) -> object:
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)


def _is_nearest_resize(node: fx.Node) -> bool:
    kw = node.kwargs
    return bool(
        len(node.args) == 1
        and kw.get("mode") == "nearest"
        and kw.get("size") is not None
        and kw.get("scale_factor") is None
        and not kw.get("antialias", False)
    )


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = bool(x.is_contiguous(memory_format=torch.channels_last))
    return torch.channels_last if channels_last else torch.contiguous_format
