"""landcover explain: Grad-CAM maps on the input grid, peaks where the evidence is, entropy/margin, errors.

The classification model is a real timm ResNet-18 checkpoint (as `landcover train` saves it) whose
weights are set by hand: every convolution passes a box average of channel 0 along (the stem
averages all bands), every BatchNorm is the identity, so ``layer4``'s channel 0 is a blurred,
1/32-resolution map of the bright pixels and class 2's logit grows with it. Its evidence for class
2 sits exactly where the bright square is, without training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from landcover.errors import ConfigError, MissingBandError, ModelError, OutputExistsError
from landcover.inference import explain as explain_module
from landcover.inference.checkpoint import LoadedModel
from landcover.inference.explain import explain, explain_command_summary
from landcover.inference.gradcam import last_stage
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from tests.test_predict import BANDS, MEAN, STD, meta, scene, write_stack

EVIDENCE = 2  # level1 class id '3' Forest and semi natural areas
TILE = 128
SQUARE = (150, 182, 40, 72)  # rows r0:r1, cols c0:c1 (32 px) inside tile (1, 0) of a 256 x 300 scene


def square_detector() -> nn.Module:
    model, _ = build_model(ModelConfig(task="classification"), BANDS, 5, load_weights=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                kh, kw = m.kernel_size
                if m.in_channels == len(BANDS):  # the stem: mean of the bands
                    m.weight[0] = 1.0 / (len(BANDS) * kh * kw)
                else:
                    m.weight[0, 0] = 1.0 / (kh * kw)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[EVIDENCE, 0] = 40.0
        model.fc.weight[4, 0] = -40.0  # evidence against class '5': its CAM is 0 everywhere
    return model.eval()


def square_scene() -> np.ndarray:
    image = np.full((len(BANDS), 256, 300), MEAN - STD, np.uint16)  # dark: normalised -1, ReLU'd away
    image += np.random.default_rng(0).integers(0, 50, image.shape).astype(np.uint16)
    r0, r1, c0, c1 = SQUARE
    image[:, r0:r1, c0:c1] = MEAN + 4 * STD
    image[:, :20, 200:] = 0  # no data
    return image


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    model = square_detector()
    ckpt = root / "best.ckpt"
    torch.save(
        {
            "landcover": meta(task="classification", tile=TILE),
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        ckpt,
    )
    image = square_scene()
    stack = write_stack(root / "scenes" / "S2B_SQUARE" / "image.tif", image, product_id="S2B_SQUARE")
    result = explain(ckpt, stack, root / "out", device="cpu")
    return ckpt, stack, image, result, root / "out"


def test_default_classes_and_files(cam_run):
    ckpt, stack, _, result, out = cam_run
    assert [c["code"] for c in result["classes"]] == ["3"] and result["top_class"] == "3"
    assert sorted(p.name for p in out.iterdir()) == [
        "cam_3_forest-and-semi-natural-areas.tif",
        "explain.json",
        "overlay.png",
    ]
    record = json.loads((out / "explain.json").read_text())
    assert record["checkpoint"] == ckpt.name and len(record["checkpoint_sha256"]) == 64
    assert record["input"] == stack.name and record["layer"] == "layer4" and record["method"] == "grad-cam"
    assert record["classes"][0]["max_probability"] > 0.9 and set(record["files"]) == {p.name for p in out.iterdir()}
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = explain_command_summary(result)
    assert "Grad-CAM" in line and "3 Forest" in line and "S2B_SQUARE" in line and "\n" not in line


def test_cam_is_on_the_input_grid_in_0_1_and_nodata_where_the_input_has_none(cam_run):
    _, stack, image, _, out = cam_run
    with rasterio.open(stack) as src, rasterio.open(out / "cam_3_forest-and-semi-natural-areas.tif") as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (src.crs, src.transform, src.width, src.height)
        assert ds.dtypes == ("float32",) and ds.count == 1 and ds.nodata == -1
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.tags()["CLASS_CODE"] == "3"
        cam = ds.read(1)
    valid = image.any(axis=0)
    assert (cam[~valid] == -1).all()
    assert cam[valid].min() >= 0 and cam[valid].max() <= 1 and cam[valid].std() > 0.05


def test_cam_peak_falls_inside_the_region_with_the_evidence(cam_run):
    """The issue's check: class evidence in a known region -> the map's peak in that region."""
    _, _, _, _, out = cam_run
    with rasterio.open(out / "cam_3_forest-and-semi-natural-areas.tif") as ds:
        cam = ds.read(1)
    r0, r1, c0, c1 = SQUARE
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    margin = 32  # Grad-CAM's resolution: ResNet's 1/32 feature map
    assert r0 - margin <= r < r1 + margin and c0 - margin <= c < c1 + margin
    square, tile = np.zeros(cam.shape, bool), np.zeros(cam.shape, bool)
    square[r0:r1, c0:c1], tile[TILE:, :TILE] = True, True
    assert cam[square].mean() > 1.5 * cam[tile & ~square].mean()
    assert cam[~tile].max() == 0  # tiles without the square hold no evidence
    assert cam[tile].max() == pytest.approx(1.0)  # normalised per tile


def test_explicit_classes_all_and_zero_gradient(cam_run, tmp_path):
    ckpt, stack, _, _, _ = cam_run
    result = explain(ckpt, stack, tmp_path / "o", classes="Forest and semi natural areas,5", device="cpu")
    assert [c["code"] for c in result["classes"]] == ["3", "5"] and result["top_class"] == "3"
    with rasterio.open(tmp_path / "o" / "cam_5_water-bodies.tif") as ds:
        cam = ds.read(1, masked=True)
    assert (cam == 0).all()  # only negative evidence: ReLU leaves nothing
    again = explain(ckpt, stack, tmp_path / "o", classes="all", device="cpu", overwrite=True)
    assert len(again["classes"]) == 5 and len(list((tmp_path / "o").glob("cam_*.tif"))) == 5
    explain(ckpt, stack, tmp_path / "o", classes=["3"], device="cpu", overwrite=True)
    assert [p.name for p in (tmp_path / "o").glob("cam_*.tif")] == ["cam_3_forest-and-semi-natural-areas.tif"]


def test_errors_say_how_to_fix_them(cam_run, tmp_path):
    ckpt, stack, _, _, out = cam_run
    with pytest.raises(ConfigError, match=r"unknown class.*'Moon'.*Water bodies"):
        explain(ckpt, stack, tmp_path / "a", classes=["Moon", "3"])
    with pytest.raises(OutputExistsError, match="--overwrite"):
        explain(ckpt, stack, out)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        explain(tmp_path / "bad.ckpt", stack, tmp_path / "b")
    five = write_stack(tmp_path / "five.tif", scene(40, 40, c=5), bands=[*BANDS[:3], "B05", "B11"])
    with pytest.raises(MissingBandError, match="B08"):
        explain(ckpt, five, tmp_path / "c", device="cpu")
    tile_mean = LoadedModel.from_meta(
        nn.Sequential(nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), meta(task="classification", tile=32)
    )
    with pytest.raises(ModelError, match="Grad-CAM needs a ResNet"):
        last_stage(tile_mean.model)
    assert not any((tmp_path / d).exists() and any((tmp_path / d).iterdir()) for d in "abc")


def test_a_failure_midway_leaves_no_file(cam_run, tmp_path, monkeypatch):
    ckpt, stack, _, _, _ = cam_run

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(explain_module, "_overlay", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        explain(ckpt, stack, tmp_path / "out", device="cpu")
    assert list((tmp_path / "out").iterdir()) == []


class Hesitant(nn.Module):
    """Sure of class 2 where band 0 is bright, equal logits (uniform probabilities) elsewhere."""

    def forward(self, x):
        out = torch.zeros(len(x), 5, *x.shape[2:])
        out[:, 2] = 50.0 * (x[:, 0] > 1.0)
        return out


def test_segmentation_entropy_and_margin(tmp_path):
    image = scene(70, 90, seed=5)
    image[0] = np.where(np.arange(90) < 45, 500, MEAN + 2 * STD)[None]  # bright right half
    image[:, :10, :10] = 0
    stack = write_stack(tmp_path / "s.tif", image)
    result = explain(LoadedModel.from_meta(Hesitant(), meta()), stack, tmp_path / "out", device="cpu")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["entropy.tif", "explain.json", "margin.tif", "overlay.png"]
    valid, sure = image.any(axis=0), np.broadcast_to(np.arange(90) >= 45, (70, 90))
    with rasterio.open(stack) as src, rasterio.open(out / "entropy.tif") as e, rasterio.open(out / "margin.tif") as m:
        for ds in (e, m):
            assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape) and ds.dtypes == ("float32",)
        entropy, margin = e.read(1), m.read(1)
    assert (entropy[~valid] == -1).all() and (margin[~valid] == -1).all()
    assert np.allclose(entropy[valid & ~sure], 1.0, atol=1e-6) and np.allclose(margin[valid & ~sure], 0, atol=1e-6)
    assert np.allclose(entropy[valid & sure], 0.0, atol=1e-6) and np.allclose(margin[valid & sure], 1, atol=1e-6)
    assert result["method"] == "entropy-margin" and "entropy and margin" in explain_command_summary(result)
    assert not list(out.glob(".*"))  # predict's temporary folder is gone
    with pytest.raises(ConfigError, match="classification"):
        explain(LoadedModel.from_meta(Hesitant(), meta()), stack, tmp_path / "x", classes=["3"])


def test_cli_explain_and_its_errors(cam_run, tmp_path):
    from typer.testing import CliRunner

    from landcover.cli import app

    ckpt, stack, _, _, _ = cam_run
    runner = CliRunner()
    result = runner.invoke(app, ["explain", str(ckpt), str(stack), "--out", str(tmp_path / "x"), "--classes", "3"])
    assert result.exit_code == 0, result.output
    assert "Grad-CAM of 3" in result.output and (tmp_path / "x" / "explain.json").exists()
    result = runner.invoke(app, ["explain", str(ckpt), str(stack), "--out", str(tmp_path / "y"), "--classes", "999"])
    assert result.exit_code == 2 and "999" in result.output
