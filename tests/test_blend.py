"""predict's strip carries only the overlap: its maps, probabilities and confidence equal a whole-scene
accumulation of the same windows in the same order (bit for bit), for both array backends (numpy: the
onnxruntime engine; torch), any batch size, skipped windows and classification tiles."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from landcover.inference.blend import NumpyOps, Strip
from landcover.inference.model_info import ModelInfo
from landcover.inference.predict import predict_scene
from landcover.inference.sliding import blend_weights, make_plan
from tests.test_predict import BANDS, meta, write_stack

K = 5


class WindowEngine:
    """Probabilities that depend on the pixel and on the window's mean (so overlapping windows disagree)."""

    name, device, precision = "fake", "cpu", "fp32"

    def __init__(self, backend: str, task: str = "segmentation"):
        # 'torch-cl': channels-last probabilities, as the torch engine returns them on a CPU
        self.classes_last = backend == "torch-cl" and task == "segmentation"
        self.backend, self.calls = backend.removesuffix("-cl"), []
        self.info = ModelInfo.parse(meta(task=task))
        rng = np.random.default_rng(1)
        self.a, self.b = rng.normal(size=(K, len(BANDS))) / 1000, rng.normal(size=K)

    def logits(self, raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32)
        z = (
            np.einsum("kc,bchw->bkhw", self.a, x)
            + self.b[None, :, None, None] * x.mean(axis=(1, 2, 3))[:, None, None, None] / 1000
        )
        if self.info.task == "classification":
            z = z.mean(axis=(2, 3))
        return z.astype(np.float32)

    def probabilities(self, raw: np.ndarray):
        self.calls.append(raw.shape)
        z = self.logits(raw)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
        if self.backend == "torch":
            import torch

            if self.classes_last:
                return torch.from_numpy(np.ascontiguousarray(p.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)
            return torch.from_numpy(p)
        return p


def reference(engine: WindowEngine, image: np.ndarray, tile: int, overlap: int):
    """Every window of the plan accumulated into whole-scene arrays, row by row, left to right."""
    h, w = image.shape[1:]
    plan = make_plan(h, w, tile, overlap)
    m, s, t = plan.margin, plan.stride, plan.tile
    ph = (plan.rows - 1) * s + t
    rows = np.abs(np.arange(ph) - m)
    rows = np.where(rows >= h, 2 * (h - 1) - rows, rows)
    cols = np.abs(np.arange(plan.padded_width) - m)
    cols = np.where(cols >= w, 2 * (w - 1) - cols, cols)
    padded = image[:, rows][:, :, cols]
    wts = blend_weights(t, overlap)
    acc = np.zeros((K, ph, plan.padded_width), np.float32)
    wsum = np.zeros((ph, plan.padded_width), np.float32)
    for i in range(plan.rows):
        for j in range(plan.cols):
            win = padded[:, i * s : i * s + t, j * s : j * s + t]
            if not win.any(axis=0).any():
                continue
            p = engine.probabilities(win[None])
            p = np.asarray(p)[0]
            p = p[:, None, None] if p.ndim == 1 else p
            acc[:, i * s : i * s + t, j * s : j * s + t] += p * wts
            wsum[i * s : i * s + t, j * s : j * s + t] += wts
    p = (acc / np.maximum(wsum, np.float32(1e-12)))[:, m : m + h, m : m + w]
    valid = image.any(axis=0)
    ids = np.where(valid, p.argmax(axis=0), 255).astype(np.uint8)
    conf = np.where(valid, np.clip(np.round(p.max(axis=0) * 255), 0, 255), 0).astype(np.uint8)
    prob = np.where(valid, np.clip(np.round(p * 255), 0, 255), 0).astype(np.uint8)
    return ids, conf, prob


def scene_with_holes(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(200, 3000, (len(BANDS), h, w)).astype(np.uint16)
    image[:, : h // 3, w // 2 :] = 0  # a no-data corner: whole windows are skipped
    image[:, h // 2, :] = 0  # a no-data line
    return image


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-cl"])
@pytest.mark.parametrize(("tile", "overlap", "batch"), [(32, 8, 1), (32, 8, 3), (64, 16, 8), (32, 0, 2), (64, 32, 5)])
def test_strip_equals_whole_scene_accumulation(tmp_path, backend, tile, overlap, batch) -> None:
    image = scene_with_holes(150, 233, seed=tile + overlap + batch)
    stack = write_stack(tmp_path / "image.tif", image)
    engine = WindowEngine(backend)
    predict_scene(
        engine,
        stack,
        tmp_path / "map.tif",
        tile=tile,
        overlap=overlap,
        batch_size=batch,
        probabilities=True,
        confidence=True,
        quicklook=False,
    )
    assert max(len(c) for c in [range(s[0]) for s in engine.calls]) <= batch
    ids, conf, prob = reference(WindowEngine(backend), image, tile, overlap)
    with rasterio.open(tmp_path / "map.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), ids)
    with rasterio.open(tmp_path / "map_confidence.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), conf)
    with rasterio.open(tmp_path / "map_probabilities.tif") as ds:
        np.testing.assert_array_equal(ds.read(), prob)


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-cl"])
def test_classification_tiles_through_the_strip(tmp_path, backend) -> None:
    image = scene_with_holes(70, 97, seed=3)
    stack = write_stack(tmp_path / "image.tif", image)
    engine = WindowEngine(backend, task="classification")
    predict_scene(engine, stack, tmp_path / "map.tif", batch_size=2, quicklook=False)
    ids, _, _ = reference(WindowEngine(backend, task="classification"), image, 32, 0)
    with rasterio.open(tmp_path / "map.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), ids)


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 130),
    half=st.sampled_from([8, 16]),
    ov=st.sampled_from([0, 4, 8, 16]),
    batch=st.integers(1, 6),
)
def test_every_pixel_finished_exactly_once(h, w, half, ov, batch) -> None:
    """The strip hands each scene pixel of each finished row to the sink once, whatever the geometry."""
    t = 2 * half
    ov = min(ov, t // 2)
    plan = make_plan(h, w, t, ov)
    strip = Strip(NumpyOps(), 2, plan, blend_weights(t, ov), batch)
    seen = np.zeros((h, w), np.int32)
    m, s = plan.margin, plan.stride
    for i in range(plan.rows):
        lo, hi = max(0, m - i * s), min(s, h - (i * s - m))

        def sink(a, b, out, i=i, lo=lo, hi=hi):
            assert out["map"].shape == (hi - lo, b - a)
            x0, x1 = max(a - m, 0), min(b - m, w)
            if x1 > x0:
                seen[i * s - m + lo : i * s - m + hi, x0:x1] += 1

        strip.start_row((lo, hi), sink)
        for j in range(plan.cols):
            strip.add(j, np.ones((2, t, t), np.float32))
        strip.end_row()
    np.testing.assert_array_equal(seen, 1)
    assert strip.carry.shape == (2, ov, plan.padded_width)  # only the overlap rows are carried
    assert strip.work.shape[2] <= max(t, batch * plan.stride + ov)
