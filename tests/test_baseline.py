"""The per-pixel LightGBM baseline: features, training through `landcover train`, and the same streaming predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from landcover.config import load_config
from landcover.errors import ConfigError
from landcover.evaluation.bootstrap import compare_runs, load_counts
from landcover.evaluation.confusion import scores_from_confusion
from landcover.inference.checkpoint import load_checkpoint
from landcover.inference.predict import predict_scene
from landcover.models.config import FeatureRecipe, ModelConfig
from landcover.models.pixel_features import compute_features
from landcover.nomenclature import IGNORE
from landcover.training.config import TrainConfig
from landcover.training.datamodule import LandcoverDataModule
from landcover.training.train import evaluate_checkpoint, train
from tests.learnable import make_learnable_dataset

BANDS = ["B02", "B03", "B04", "B08", "B11"]


@settings(max_examples=15, deadline=None)
@given(r0=st.integers(0, 30), c0=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_features_do_not_depend_on_the_window(r0: int, c0: int, seed: int) -> None:
    """A pixel with its whole neighbourhood inside two different windows gets identical features."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(1, 8000, (5, 96, 96)) / 10000).astype(np.float32)
    valid = rng.random((96, 96)) > 0.2
    recipe = FeatureRecipe()
    whole = compute_features(x, valid, BANDS, recipe)
    part = compute_features(x[:, r0 : r0 + 60, c0 : c0 + 60], valid[r0 : r0 + 60, c0 : c0 + 60], BANDS, recipe)
    h = recipe.halo
    inner = part[:, h : 60 - h, h : 60 - h]
    assert np.array_equal(inner, whole[:, r0 + h : r0 + 60 - h, c0 + h : c0 + 60 - h])


def test_features_are_the_documented_statistics() -> None:
    """Band, NDVI, neighbourhood mean over valid pixels only, local standard deviation."""
    rng = np.random.default_rng(1)
    x = (rng.integers(1, 8000, (5, 40, 40)) / 10000).astype(np.float32)
    valid = np.ones((40, 40), bool)
    valid[20, 21] = False
    recipe = FeatureRecipe(mean_scales=[5], std_scale=5)
    names = recipe.feature_names(BANDS)
    f = compute_features(x, valid, BANDS, recipe)
    assert f.shape == (len(names), 40, 40)
    b08, b04 = x[3].astype(np.float64), x[2].astype(np.float64)
    ndvi = (b08 - b04) / (b08 + b04)
    assert f[names.index("NDVI"), 10, 10] == pytest.approx(ndvi[10, 10], abs=1e-4)
    patch, keep = x[0, 18:23, 19:24].astype(np.float64), valid[18:23, 19:24]
    assert f[names.index("B02_mean5"), 20, 21] == pytest.approx(patch[keep].mean(), abs=1e-4)
    assert f[names.index("B02_std5"), 20, 21] == pytest.approx(patch[keep].std(), abs=1e-4)
    assert f[names.index("B02"), 20, 21] == 0  # an invalid pixel is no evidence
    assert "NDBI" in names and "MNDWI" in names


def test_lightgbm_is_a_segmentation_baseline_and_reads_reflectance() -> None:
    with pytest.raises(ValueError, match=r"use model\.arch cnn for classification"):
        ModelConfig(arch="lightgbm", task="classification")
    with pytest.raises(ValueError, match=r"data\.normalization to auto or none"):
        TrainConfig.model_validate({"model": {"arch": "lightgbm"}, "data": {"normalization": "dataset"}})
    with pytest.raises(ValueError, match="odd numbers"):
        FeatureRecipe(mean_scales=[4])


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("baseline")
    dataset = make_learnable_dataset(root)
    cfg = load_config(
        TrainConfig,
        None,
        [
            "model.arch=lightgbm",
            f"data.dataset={dataset}",
            "model.lightgbm.n_estimators=40",
            "model.lightgbm.pixels_per_class=2000",
            "trainer.accelerator=cpu",
        ],
    )
    train(cfg, root / "run")
    return dataset, root / "run"


def test_baseline_trains_into_a_run_folder_like_a_cnn(baseline_run: tuple[Path, Path]) -> None:
    dataset, run = baseline_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == "checkpoints/best.ckpt" and metrics["monitor"] == "val/miou"
    assert metrics["val/miou"] > 0.8 and metrics["split"] == "val"  # the learnable classes have distinct spectra
    assert "test/miou" not in metrics  # as for a CNN, test is scored once, on demand
    # the scores are the one score function applied to the recorded matrix
    scores = scores_from_confusion(np.array(metrics["confusion_matrix"]))
    assert scores["miou"] == pytest.approx(metrics["val/miou"], abs=1e-12)
    cfg = load_config(TrainConfig, run / "config.yaml")
    test = evaluate_checkpoint(run / "checkpoints" / "best.ckpt", LandcoverDataModule(cfg.data), split="test")
    assert test["test/miou"] > 0.8 and np.array(test["confusion_matrix"]).sum() > 0
    # intervals and per-tile counts like a CNN's: the same bootstrap, pairable with a CNN run on these tiles
    assert metrics["val/intervals"]["miou"]["estimate"] == pytest.approx(metrics["val/miou"], abs=1e-12)
    low, high = metrics["val/intervals"]["miou"]["low"], metrics["val/intervals"]["miou"]["high"]
    assert low <= metrics["val/miou"] <= high
    ids, _groups, counts = load_counts(run / "val_counts.npz")
    assert len(ids) == len(counts)
    assert counts.sum(0)[1].tolist() == np.array(metrics["confusion_matrix"]).sum(1).tolist()
    assert compare_runs(run, run, split="val").miou.estimate == 0
    for name in ("config.yaml", "dataset.json"):
        assert (run / name).is_file()
    lm = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert (
        lm.context == FeatureRecipe().halo and lm.bands == json.loads((dataset / "dataset.json").read_text())["bands"]
    )
    with pytest.raises(Exception, match="holds a run"):
        train(load_config(TrainConfig, run / "config.yaml"), run)


def test_baseline_map_does_not_depend_on_the_window_grid(baseline_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Each pixel is taken from a window holding its whole neighbourhood: two window grids, one map; the map
    agrees with the labels where the test scores say it does."""
    dataset, run = baseline_run
    stack = next((dataset / "scenes").glob("*/image.tif"))
    ckpt = run / "checkpoints" / "best.ckpt"
    a = predict_scene(ckpt, stack, tmp_path / "a.tif", quicklook=False)
    predict_scene(ckpt, stack, tmp_path / "b.tif", tile=96, overlap=30, quicklook=False)
    with rasterio.open(tmp_path / "a.tif") as da, rasterio.open(tmp_path / "b.tif") as db:
        ma, mb = da.read(1), db.read(1)
        assert da.tags()["BLENDING"].startswith("each pixel from the window where it lies deepest")
        assert (da.width, da.height, da.transform) == (db.width, db.height, db.transform)
    assert np.array_equal(ma, mb)
    assert a.overlap == 2 * FeatureRecipe().halo
    with rasterio.open(stack.parent / "labels.tif") as src:
        labels = src.read(1)
    keep = labels != IGNORE
    assert (ma[keep] == labels[keep]).mean() > 0.85
    # the map is the model the test scores describe: on the test tiles, the map's confusion matrix is exactly
    # the one evaluate_checkpoint computed from the dataset's tiles
    cfg = load_config(TrainConfig, run / "config.yaml")
    data = LandcoverDataModule(cfg.data)
    test = evaluate_checkpoint(ckpt, data, split="test")
    k = data.num_classes
    matrix = np.zeros((k, k), np.int64)
    for t in data.split_tiles("test").itertuples():
        ref, pred = (
            labels[t.row : t.row + t.height, t.col : t.col + t.width],
            ma[t.row : t.row + t.height, t.col : t.col + t.width],
        )
        ok = (ref != IGNORE) & (pred != IGNORE)
        matrix += np.bincount(ref[ok].astype(np.int64) * k + pred[ok], minlength=k * k).reshape(k, k)
    assert matrix.tolist() == test["confusion_matrix"]
    with pytest.raises(ConfigError, match="even --overlap of at least 20"):
        predict_scene(ckpt, stack, tmp_path / "c.tif", overlap=8, quicklook=False)
