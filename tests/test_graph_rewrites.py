"""The CPU engine's exact graph rewrites: a 3x3 convolution of a nearest 2x upsampling computed on the coarse grid
gives the convolution of the upsampled (and concatenated) tensor, up to float rounding, in both memory layouts;
other sizes, modes and shapes of graph run as written; a U-Net's five decoder blocks are rewritten."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from landcover.inference.graph_rewrites import CoarseGridConv, coarse_grid_convolutions, optimise_for_cpu
from landcover.models.build import build_model
from landcover.models.config import ModelConfig

LAYOUTS = [torch.contiguous_format, torch.channels_last]


def reference(conv: nn.Conv2d, x: torch.Tensor, size: tuple[int, int], *skips: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(x, size=size, mode="nearest")
    return conv(torch.cat([up, *skips], dim=1) if skips else up)


def seeded_conv(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.normal_(0, 0.1)
    return conv


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("cx", "skip_channels", "bias"), [(6, (5,), True), (7, (), True), (4, (3, 2), False)])
def test_coarse_grid_conv_equals_the_convolution_of_the_upsampled_input(layout, cx, skip_channels, bias) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 5, 7  # not square, odd: every border case of the phases
    x = torch.randn(2, cx, h, w, generator=g).contiguous(memory_format=layout)
    skips = [torch.randn(2, c, 2 * h, 2 * w, generator=g).contiguous(memory_format=layout) for c in skip_channels]
    conv = seeded_conv(cx + sum(skip_channels), 9, bias).to(memory_format=layout)
    with torch.inference_mode():
        want = reference(conv, x, (2 * h, 2 * w), *skips)
        got = CoarseGridConv(conv)(x, (2 * h, 2 * w), *skips)
    assert got.shape == want.shape and got.is_contiguous(memory_format=layout)
    assert float((got - want).abs().max()) <= 1e-5
    assert float(want.abs().max()) > 0.5  # not a comparison of near-zeros


def test_sizes_other_than_twice_run_as_written() -> None:
    conv = seeded_conv(5, 4)
    x, skip = torch.randn(1, 3, 5, 6), torch.randn(1, 2, 11, 13)
    with torch.inference_mode():
        assert torch.equal(CoarseGridConv(conv)(x, (11, 13), skip), reference(conv, x, (11, 13), skip))


class Decoder(nn.Module):
    """A U-Net-like step: upsample, concatenate the skip, convolve; optionally a second use of the upsampled map."""

    def __init__(self, mode: str = "nearest", reuse: bool = False):
        super().__init__()
        self.down, self.conv, self.mode, self.reuse = nn.Conv2d(3, 4, 3, 2, 1), seeded_conv(7, 5), mode, reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.down(x)
        up = F.interpolate(coarse, size=x.shape[2:], mode=self.mode)
        out = self.conv(torch.cat([up, x], dim=1))
        return out + up.mean() if self.reuse else out


@pytest.mark.parametrize(
    ("mode", "reuse", "rewritten"), [("nearest", False, 1), ("bilinear", False, 0), ("nearest", True, 0)]
)
def test_only_nearest_upsamplings_used_once_are_rewritten(mode, reuse, rewritten) -> None:
    model = Decoder(mode, reuse).eval()
    gm = fx.symbolic_trace(model)
    assert coarse_grid_convolutions(gm) == rewritten
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert float((gm(x) - model(x)).abs().max()) <= 1e-5
        assert gm(x[..., :15]).shape == model(x[..., :15]).shape  # odd sizes: the size check falls back


def test_a_unet_has_its_five_decoder_blocks_rewritten_and_the_same_probabilities() -> None:
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), ["B02", "B03", "B04", "B08"], 6, load_weights=False)
    model.eval()
    fast = optimise_for_cpu(model, 4)
    assert sum(isinstance(m, CoarseGridConv) for m in fast.modules()) == 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    fast = fast.to(memory_format=torch.channels_last)
    x = torch.randn(3, 4, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = model(x).softmax(1)
        got = fast(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    assert float((got - want).abs().max()) <= 1e-4
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.9999


def test_kernels_first_derived_in_inference_mode_still_serve_autograd() -> None:
    """predict runs the model in inference mode; Grad-CAM-like callers may run it later with gradients."""
    conv = seeded_conv(5, 4)
    module = CoarseGridConv(conv)
    x, skip = torch.randn(1, 3, 4, 4), torch.randn(1, 2, 8, 8)
    with torch.inference_mode():
        module(x, (8, 8), skip)
    x.requires_grad_(True)
    module(x, (8, 8), skip).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    reference(conv, x_ref, (8, 8), skip).square().sum().backward()
    assert x.grad is not None and x_ref.grad is not None and float(x_ref.grad.abs().max()) > 0.1
    assert float((x.grad - x_ref.grad).abs().max()) <= 1e-5
