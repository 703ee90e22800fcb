"""`landcover predict MODEL.onnx`: the same streaming pipeline run by onnxruntime gives the checkpoint's map, and
the process never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landcover.inference.onnx_export import export_onnx
from landcover.inference.predict import predict_scene
from tests.conftest import shared_data
from tests.learnable import BANDS, write_unet_checkpoint
from tests.test_predict import write_stack

MAJOR_TOM = ("major-tom", "S2L2A", "0U", "0U_199R", "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx-predict")
    ckpt = write_unet_checkpoint(root / "unet.ckpt", mean=1100.0, std=650.0)
    return ckpt, Path(export_onnx(ckpt, root / "unet.onnx").path)


def synthetic_stack(path: Path) -> Path:
    rng = np.random.default_rng(5)
    coarse = rng.integers(300, 3000, (len(BANDS), 12, 14))
    image = (coarse.repeat(16, 1).repeat(16, 2)[:, :181, :203] + rng.integers(0, 200, (len(BANDS), 181, 203))).astype(
        np.uint16
    )
    image[:, 150:, :40] = 0  # no data
    return write_stack(path, image, bands=list(BANDS))


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def assert_same_map(a: Path, b: Path) -> None:
    ma, mb = read(a)[0], read(b)[0]
    assert ma.shape == mb.shape
    assert (ma == mb).mean() >= 0.9999, f"{(ma != mb).sum()} of {ma.size} pixels differ"
    assert ((ma == 255) == (mb == 255)).all()  # the same no-data pixels exactly


def test_onnx_map_equals_the_checkpoints_on_real_bands(model, tmp_path) -> None:
    scene = shared_data(*MAJOR_TOM)
    ckpt, onnx = model
    a = predict_scene(ckpt, scene, tmp_path / "ckpt.tif", quicklook=False, confidence=True)
    b = predict_scene(onnx, scene, tmp_path / "onnx.tif", quicklook=False, confidence=True)
    assert (a.engine, b.engine) == ("torch", "onnxruntime")
    assert a.windows_run == b.windows_run > 1
    assert_same_map(tmp_path / "ckpt.tif", tmp_path / "onnx.tif")
    conf = np.abs(read(tmp_path / "ckpt_confidence.tif").astype(int) - read(tmp_path / "onnx_confidence.tif"))
    assert conf.max() <= 1  # probabilities x 255, rounded: equal up to float rounding


def test_cli_predict_of_an_onnx_model_imports_no_torch(model, tmp_path) -> None:
    """The whole command in a fresh process: the map equals the checkpoint's and torch never loads."""
    ckpt, onnx = model
    stack = synthetic_stack(tmp_path / "scene" / "image.tif")
    predict_scene(ckpt, stack, tmp_path / "ckpt.tif", quicklook=False)
    code = (
        "import json, sys\n"
        "from landcover.cli import app\n"
        f"args = ['predict', {str(onnx)!r}, {str(stack)!r}, '--out', {str(tmp_path / 'onnx.tif')!r}]\n"
        "try:\n    app(args)\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "torch": False}, proc.stderr[-2000:]
    assert_same_map(tmp_path / "ckpt.tif", tmp_path / "onnx.tif")
    with rasterio.open(tmp_path / "onnx.tif") as ds:
        assert ds.tags()["CHECKPOINT"] == "unet.onnx"


def test_an_onnx_model_refuses_a_gpu_and_bf16(model, tmp_path) -> None:
    from landcover.errors import ConfigError

    stack = synthetic_stack(tmp_path / "image.tif")
    for kwargs in ({"device": "cuda"}, {"precision": "bf16"}):
        with pytest.raises(ConfigError, match=r"ONNX|onnx"):
            predict_scene(model[1], stack, tmp_path / "x.tif", **kwargs)
    assert not (tmp_path / "x.tif").exists()
