"""`landcover export` and the onnxruntime engine: the ONNX file is valid, carries the model's facts (and the Deepness
QGIS plugin's keys), and onnxruntime gives predict's PyTorch probabilities on real Sentinel-2 windows."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ConfigError, ModelError
from landcover.inference import onnx_export
from landcover.inference.checkpoint import load_checkpoint
from landcover.inference.model_info import ModelInfo
from landcover.inference.onnx_engine import OnnxEngine, session_options
from landcover.inference.onnx_export import compare, export_onnx, real_windows
from landcover.inference.torch_engine import TorchEngine
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.nomenclature import nomenclature
from tests.conftest import shared_data
from tests.helpers import CLI, ROOT
from tests.learnable import BANDS, write_unet_checkpoint

MAJOR_TOM = ("major-tom", "S2L2A", "0U", "0U_199R", "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419")
MEAN, STD = [1200.0, 1100.0, 1000.0, 2500.0], [600.0, 550.0, 700.0, 900.0]  # per band, as dataset.json has them


def write_classification_checkpoint(path: Path) -> Path:
    """A multi-label ResNet-18 (BigEarthNet's 19 classes) with seeded random weights, saved as `landcover train`."""
    torch.manual_seed(1)
    cfg = ModelConfig(task="classification")
    model, _ = build_model(cfg, list(BANDS), 19, load_weights=False)
    meta = {
        "format": "landcover-checkpoint/1",
        "task": "classification",
        "bands": list(BANDS),
        "tile_size": 64,
        "nomenclature": nomenclature("ben19").to_dict(),
        "resolution": 10.0,
        "label_mode": "multilabel",
        "processing_level": "L2A",
        "normalization": {"mode": "dataset", "mean": MEAN, "std": STD},
        "model": cfg.model_dump(mode="json"),
    }
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """task -> (checkpoint, its exported .onnx): a U-Net/ResNet-18 (level 1) and a multi-label ResNet-18."""
    root = tmp_path_factory.mktemp("export")
    seg = write_unet_checkpoint(root / "unet.ckpt", mean=1100.0, std=650.0)
    cls = write_classification_checkpoint(root / "resnet.ckpt")
    return {
        task: (ckpt, Path(export_onnx(ckpt, root / f"{ckpt.stem}.onnx").path))
        for task, ckpt in (("segmentation", seg), ("classification", cls))
    }


def test_the_file_passes_onnx_checker_and_carries_the_models_facts(models):
    import onnx

    ckpt, path = models["segmentation"]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    lm = load_checkpoint(ckpt)
    # the checkpoint's landcover section round-trips through ModelInfo.parse
    info = ModelInfo.parse(meta["landcover"])
    assert info.bands == lm.bands == meta["bands"] == list(BANDS)
    np.testing.assert_array_equal(info.mean, lm.mean)
    np.testing.assert_array_equal(info.std, lm.std)
    assert info.nomenclature.codes == lm.nomenclature.codes and info.nomenclature.colors == lm.nomenclature.colors
    assert info.task == "segmentation" and info.tile_size == lm.tile_size
    # flat keys for humans and tools
    assert meta["normalization"] == {"mean": lm.mean.tolist(), "std": lm.std.tolist(), "in_graph": True}
    assert meta["class_codes"] == list(lm.nomenclature.codes)
    assert meta["class_colors"] == [list(c) for c in lm.nomenclature.colors]
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["resolution_m"] == 10.0 and meta["overlap_px"] == 64
    # the Deepness QGIS plugin's keys, in its formats
    assert meta["model_type"] == "Segmentor" and meta["seg_thresh"] == 0.0 and meta["seg_small_segment"] == 0
    assert meta["class_names"] == {str(i): n for i, n in enumerate(lm.nomenclature.class_names)}
    assert meta["resolution"] == 1000  # cm per pixel
    assert meta["tile_size"] == meta["tiles_size"] == 256 and meta["tiles_overlap"] == 25  # px, percent
    # Deepness divides by 255 then standardises: these give the graph the raw values back
    assert meta["standardization_mean"] == [0.0] * 4 and meta["standardization_std"] == [1 / 255] * 4
    dims = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    ]
    assert dims == [["batch", 4, "size", "size"], ["batch", 5, "size", "size"]]


def test_classification_metadata_has_no_deepness_model_type(models):
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(models["classification"][1]).metadata_props}
    assert "model_type" not in meta  # Deepness has no per-window classification model
    assert meta["task"] == "classification" and meta["label_mode"] == "multilabel" and len(meta["class_names"]) == 19


CASES = [("segmentation", 256, 1), ("segmentation", 320, 3), ("classification", 64, 1), ("classification", 96, 3)]


@pytest.mark.parametrize(("task", "size", "batch"), CASES)
def test_onnxruntime_matches_predicts_torch_engine_on_real_windows(models, task, size, batch):
    scene = shared_data(*MAJOR_TOM)
    ckpt, path = models[task]
    reference = TorchEngine.load(ckpt, device="cpu")
    engine = OnnxEngine.load(path)
    raw = real_windows(scene, reference.lm, size, batch)
    assert raw.shape == (batch, 4, size, size) and raw.any()
    want = reference.probabilities(raw).numpy()
    got = engine.probabilities(raw)
    assert got.dtype == np.float32 and got.shape == want.shape
    diff, agreement = compare(want, got, multilabel=task == "classification")
    assert diff <= 1e-4 and agreement >= 0.9999
    if task == "segmentation":  # any window shape runs, not only squares (both spatial axes are named 'size')
        diff, agreement = compare(reference.probabilities(raw[..., :192]).numpy(), engine.probabilities(raw[..., :192]))
        assert diff <= 1e-4 and agreement >= 0.9999


def test_no_data_pixels_are_zeroed_inside_the_graph_like_the_torch_engine(models):
    ckpt, path = models["segmentation"]
    engine, reference = OnnxEngine.load(path, threads=1), TorchEngine.load(ckpt, device="cpu")
    mean = np.rint(engine.info.mean).astype(np.uint16).reshape(1, -1, 1, 1)
    empty = np.zeros((1, 4, 64, 64), np.uint16)  # no data: 0 in every band normalises to 0 ...
    at_mean = np.broadcast_to(mean, empty.shape).copy()  # ... as the band means do
    one_band_zero = at_mean.copy()
    one_band_zero[:, 0] = 0  # 0 in one band only is data: (0 - mean) / std
    got = [engine.probabilities(x) for x in (empty, at_mean, one_band_zero)]
    np.testing.assert_allclose(got[0], got[1], atol=1e-5)
    assert np.abs(got[2] - got[1]).max() > 1e-3
    for x, g in zip((empty, at_mean, one_band_zero), got, strict=True):
        np.testing.assert_allclose(g, reference.probabilities(x).numpy(), atol=1e-4)
    assert engine.name == "onnxruntime" and engine.device == "cpu" and engine.backend == "numpy"
    assert engine.precision == "fp32" and engine.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_session_options_use_every_optimisation_the_usable_cores_and_no_spinning():
    import onnxruntime as ort

    options = session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == len(os.sched_getaffinity(0)) and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(threads=3).intra_op_num_threads == 3


def test_the_onnx_engine_runs_without_importing_torch(models):
    path = models["classification"][1]
    code = (
        "import sys, numpy as np\n"
        "from landcover.inference.onnx_engine import OnnxEngine\n"
        f"e = OnnxEngine.load({str(path)!r})\n"
        "p = e.probabilities(np.full((2, 4, 64, 64), 900, np.uint16))\n"
        "assert p.shape == (2, 19) and p.dtype == np.float32, p.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(e.info.nomenclature.name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ben19"


def test_files_that_are_not_landcover_models_are_refused_with_the_fix(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        )
    )
    onnx.save(plain, tmp_path / "plain.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    for name, message in (("plain.onnx", "without landcover metadata"), ("text.onnx", "not a readable ONNX model")):
        with pytest.raises(ModelError, match=message) as info:
            OnnxEngine.load(tmp_path / name)
        assert "landcover export" in str(info.value) and "\n" not in str(info.value)


def test_a_failed_verification_writes_nothing(models, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "MAX_ABS_DIFF", 0.0)  # no export can match exactly: refused
    with pytest.raises(ModelError, match="differs from the checkpoint"):
        export_onnx(models["classification"][0], tmp_path / "out" / "m.onnx")
    assert not (tmp_path / "out").exists()


def test_the_baseline_is_refused_in_one_line(tmp_path):
    meta = {"task": "segmentation", "model": {"arch": "lightgbm"}}
    torch.save({"landcover": meta, "state_dict": {}, "lightgbm": "tree"}, tmp_path / "baseline.ckpt")
    with pytest.raises(ConfigError, match="LightGBM pixel baseline: it cannot be exported"):
        export_onnx(tmp_path / "baseline.ckpt", tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == [tmp_path / "baseline.ckpt"]


def test_opsets_below_18_are_refused_as_torch_would_silently_write_18(models, tmp_path):
    with pytest.raises(ConfigError, match="opsets 18 to 23"):
        export_onnx(models["classification"][0], tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_exports_prints_json_and_refuses_an_existing_out(models, tmp_path):
    ckpt = models["classification"][0]
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["sha256"] == hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()
    assert result["task"] == "classification" and result["max_abs_diff"] <= 1e-4 and result["sizes"] == [64, 96]
    import onnx

    opsets = {o.domain: o.version for o in onnx.load(tmp_path / "m.onnx").opset_import}
    assert result["opset"] == opsets.get("", opsets.get("ai.onnx")) == 18
    again = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert again.exit_code == 2 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1


def test_cli_as_a_process_writes_the_file_and_bad_checkpoints_exit_2(models, tmp_path):
    ckpt = models["classification"][0]
    done = subprocess.run(
        [*CLI, "export", str(ckpt), "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.onnx").is_file() and "verified against PyTorch" in done.stdout
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    bad = subprocess.run(
        [*CLI, "export", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "new" / "b.onnx")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "checkpoint" in bad.stderr
    assert not (tmp_path / "new").exists()
