"""CUDA paths: predict on the GPU gives the CPU's map; training runs there in mixed precision.

Marked ``gpu`` (``pytest -m gpu``); skipped without a CUDA device. Run on a lent GPU machine (see
docs/benchmarks.md, "GPU", for how the packages that machine lacks are carried).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if torch.cuda.is_available() and importlib.util.find_spec("pyogrio") is None:
    # the GPU machine lacks pyogrio (a 33 MB wheel); only splits.gpkg, which QGIS reads, needs it
    _stub = types.ModuleType("pyogrio")
    _stub.get_gdal_config_option = lambda name: None  # type: ignore[attr-defined]
    _stub.set_gdal_config_options = lambda options: None  # type: ignore[attr-defined]
    _stub.write_dataframe = lambda frame, path, **kw: Path(path).touch()  # type: ignore[attr-defined]
    sys.modules["pyogrio"] = _stub

from landcover.inference.predict import predict_scene  # noqa: E402
from landcover.models.build import build_model  # noqa: E402
from landcover.models.config import ModelConfig  # noqa: E402
from landcover.nomenclature import default_bands, nomenclature  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_predict_on_cuda_gives_the_cpu_map(tmp_path):
    bands = list(default_bands("L2A"))
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), bands, 5, load_weights=False)
    meta = {
        "format": "landcover-checkpoint/1",
        "task": "segmentation",
        "bands": bands,
        "tile_size": 128,
        "nomenclature": nomenclature("level1").to_dict(),
        "resolution": 10.0,
        "label_mode": "single",
        "normalization": {"mean": [1500.0] * 12, "std": [900.0] * 12},
        "model": ModelConfig().model_dump(mode="json"),
    }
    ckpt = tmp_path / "best.ckpt"
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    rng = np.random.default_rng(0)
    image = (rng.random((12, 700, 900)) * 4000 + 1).astype(np.uint16)
    image[:, :40, :60] = 0  # no data
    stack = tmp_path / "stack.tif"
    with rasterio.open(
        stack,
        "w",
        driver="GTiff",
        width=900,
        height=700,
        count=12,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32633",
        transform=from_origin(300_000, 5_400_000, 10, 10),
    ) as dst:
        dst.write(image)
        dst.descriptions = tuple(bands)
    cpu = predict_scene(ckpt, stack, tmp_path / "cpu.tif", device="cpu", quicklook=False)
    gpu = predict_scene(ckpt, stack, tmp_path / "gpu.tif", device="cuda", batch_size=16, quicklook=False)
    assert gpu["device"].startswith("cuda") and cpu["device"] == "cpu"
    with rasterio.open(tmp_path / "cpu.tif") as a, rasterio.open(tmp_path / "gpu.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
        x, y = a.read(1), b.read(1)
    assert np.array_equal(x == 255, y == 255) and (x[:40, :60] == 255).all()
    assert (x == y).mean() > 0.99  # bf16 autocast on the GPU may flip near-ties


def test_training_on_the_gpu_in_mixed_precision(tmp_path):
    from landcover.config import load_config
    from landcover.training.train import TrainConfig, train
    from tests.learnable import make_learnable_dataset

    dataset = make_learnable_dataset(tmp_path)
    cfg = load_config(
        TrainConfig,
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.dataset={dataset}",
            "trainer.accelerator=gpu",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=6",
            "data.num_workers=2",
        ],
    )
    torch.cuda.reset_peak_memory_stats()
    metrics = train(cfg, tmp_path / "run")
    assert torch.cuda.max_memory_allocated() > 0
    assert metrics.metrics["val/miou"] > 0.8, metrics  # the learnable dataset is learnt on the GPU too
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_samples_per_second"] > 0
