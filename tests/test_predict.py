"""landcover predict: grids, no-data, seamless blending, COG outputs, resume, errors, inputs, CLI.

Most tests use tiny hand-made models (a 1x1 convolution, a constant, a position ramp) wrapped with
a valid ``landcover`` checkpoint section, so the expected map can be computed directly; one real
U-Net checkpoint (random weights, saved like ``landcover train`` saves it) covers loading and the CLI.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from torch import nn
from typer.testing import CliRunner

from landcover.cli import app
from landcover.errors import ConfigError, MissingBandError, ModelError, OutputExistsError
from landcover.inference.batch import predict_many
from landcover.inference.checkpoint import LoadedModel, load_checkpoint
from landcover.inference.predict import predict_scene, window_geometry
from landcover.inference.sliding import blend_weights, make_plan
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.nomenclature import nomenclature
from tests.s2_fixtures import make_safe

BANDS = ["B02", "B03", "B04", "B08"]
MEAN, STD = 1000.0, 500.0
K = 5  # level1


def meta(task="segmentation", tile=32, bands=BANDS, label_mode="single") -> dict:
    return {
        "format": "landcover-checkpoint/1",
        "task": task,
        "bands": list(bands),
        "tile_size": tile,
        "nomenclature": nomenclature("level1").to_dict(),
        "resolution": 10.0,
        "label_mode": label_mode,
        "normalization": {"mean": [MEAN] * len(bands), "std": [STD] * len(bands)},
        "model": ModelConfig(task=task).model_dump(mode="json"),
    }


class Conv1x1(nn.Module):
    """Per-pixel logits: translation-equivariant, so blending must reproduce it exactly."""

    def __init__(self, c=len(BANDS), k=K, raise_after=None):
        super().__init__()
        self.conv = nn.Conv2d(c, k, 1)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(k, c, 1, 1, generator=g) * 2)
            self.conv.bias.copy_(torch.randn(k, generator=g))
        self.calls, self.raise_after = 0, raise_after

    def forward(self, x):
        self.calls += 1
        if self.raise_after is not None and self.calls > self.raise_after:
            raise RuntimeError("model failed midway")
        return self.conv(x)


class Constant(nn.Module):
    def __init__(self, cls, k=K):
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x):
        out = torch.zeros(len(x), self.k, *x.shape[2:])
        out[:, self.cls] = 50.0  # softmax probability 1.0 for this class
        return out


class Ramp(nn.Module):
    """Logits that depend on the position inside the window, not on the data."""

    def forward(self, x):
        b, _, h, w = x.shape
        out = torch.full((b, K, h, w), -30.0)
        out[:, 0] = 4.0 * (torch.arange(w) / (w - 1) - 0.5)
        out[:, 1] = 0.0
        return out


def loaded(model, **kwargs) -> LoadedModel:
    return LoadedModel.from_meta(model, meta(**kwargs))


def write_stack(path, image, bands=BANDS, product_id="S2B_TEST_SCENE"):
    """An ingested-style stack (what `landcover ingest` writes as scenes/<id>/image.tif)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=image.shape[2],
        height=image.shape[1],
        count=image.shape[0],
        dtype="uint16",
        crs="EPSG:32633",
        nodata=0,
        transform=from_origin(500_000, 5_300_000, 10, 10),
    ) as dst:
        dst.write(image)
        for i, band in enumerate(bands, 1):
            dst.set_band_description(i, band)
        dst.update_tags(SCALE="reflectance x 10000", PRODUCT_ID=product_id, PROCESSING_BASELINE="05.10")
    return path


def scene(h, w, seed=0, c=len(BANDS)):
    rng = np.random.default_rng(seed)
    return rng.integers(200, 3000, (c, h, w)).astype(np.uint16)


def expected(model, image):
    """The per-pixel prediction of a 1x1 model on the whole scene at once."""
    x = (image.astype(np.float32) - MEAN) / STD
    x[:, ~image.any(axis=0)] = 0
    with torch.no_grad():
        p = torch.softmax(model.conv(torch.from_numpy(x)[None]), 1)[0].numpy()
    return p


def assert_cog(path, overviews=True):
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff" and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.block_shapes[0] == (512, 512)
        assert bool(ds.overviews(1)) == overviews
    head = path.read_bytes()[:500]  # GDAL's COG ghost header, untouched since creation
    assert b"LAYOUT=IFDS_BEFORE_DATA" in head and b"KNOWN_INCOMPATIBLE_EDITION=NO" in head


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 600 x 700 stack with no-data areas, predicted once with every output."""
    root = tmp_path_factory.mktemp("big")
    image = scene(600, 700)
    image[:, :60, :30] = 0  # no-data corner
    image[:, 480:, 560:] = 0  # a no-data block larger than a window: windows are skipped
    image[:, 300, 300] = 0
    stack = write_stack(root / "scenes" / "S2B_TEST_SCENE" / "image.tif", image)
    model = Conv1x1()
    lm = loaded(model, tile=64)
    summary = predict_scene(lm, stack, root / "out" / "map.tif", probabilities=True, confidence=True, tile=64)
    return stack, image, model, summary, root / "out"


def test_default_windows_are_larger_than_small_training_tiles():
    """A U-Net is fully convolutional: windows of at least 256 px, a quarter of it overlapping; a checkpoint
    with larger tiles keeps its tile size; classification predicts its tiles."""
    model = Conv1x1()
    assert window_geometry(loaded(model, tile=64), None, None, 8) == (256, 64)
    assert window_geometry(loaded(model, tile=512), None, None, 8) == (512, 128)
    assert window_geometry(loaded(model, tile=64), 96, None, 8) == (96, 24)
    assert window_geometry(loaded(model, task="classification", tile=40), None, None, 8) == (40, 0)


def test_grid_equals_input_and_nodata_is_exactly_255(big):
    stack, image, _, summary, out = big
    with rasterio.open(stack) as src, rasterio.open(out / "map.tif") as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == (src.crs, src.transform, src.width, src.height)
        ids = dst.read(1)
    nodata = ~image.any(axis=0)
    assert (ids[nodata] == 255).all() and (ids[~nodata] < K).all()
    assert summary.windows_skipped > 0 and summary.windows_run > 0
    assert summary.overlap == 16 and summary.tile == 64


def test_blending_reproduces_a_pixelwise_model_exactly(big):
    """No seams or shifted windows: each pixel gets what the model says for it."""
    _, image, model, _, out = big
    p = expected(model, image)
    valid = image.any(axis=0)
    with rasterio.open(out / "map.tif") as ds:
        ids = ds.read(1)
    top2 = np.sort(p, axis=0)[-2:]
    clear = valid & (top2[1] - top2[0] > 1e-4)
    assert (ids[clear] == p.argmax(0)[clear]).all()
    with rasterio.open(out / "map_probabilities.tif") as ds:
        probs = ds.read().astype(int)
    assert np.abs(probs[:, valid] - np.round(p[:, valid] * 255)).max() <= 1
    with rasterio.open(out / "map_confidence.tif") as ds:
        conf = ds.read(1).astype(int)
        assert not ds.read_masks(1)[~valid].any() and ds.read_masks(1)[valid].all()
    assert np.abs(conf[valid] - np.round(p.max(0)[valid] * 255)).max() <= 1


def test_outputs_are_styled_cogs_with_provenance(big):
    stack, _, _, summary, out = big
    assert_cog(out / "map.tif")
    with rasterio.open(out / "map.tif") as ds:
        nom = nomenclature("level1")
        cmap = ds.colormap(1)
        assert [cmap[i][:3] for i in range(K)] == list(nom.colors) and cmap[255][3] == 0
        tags = ds.tags()
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        assert tags["NOMENCLATURE"] == "level1" and "Water bodies" in tags["CLASS_NAMES"]
        assert ds.tags(1)["CLASS_4"] == "Water bodies"
        assert tags["PRODUCT_ID"] == "S2B_TEST_SCENE" and tags["PROCESSING_BASELINE"] == "05.10"
        assert tags["BANDS"] == '["B02", "B03", "B04", "B08"]' and tags["TILE_SIZE"] == "64"
        assert tags["OVERLAP"] == "16" and tags["SOFTWARE"].startswith("landcover ")
        assert tags["INPUT"] == stack.name and tags["CHECKPOINT_SHA256"] == "none"
    assert_cog(out / "map_probabilities.tif")
    with rasterio.open(out / "map_probabilities.tif") as ds:
        assert ds.count == K and ds.descriptions[4].endswith("Water bodies")
        total = ds.read().astype(int).sum(axis=0)
        valid = ds.read_masks(1) > 0
    assert (np.abs(total[valid] - 255) <= K).all()
    assert (out / "map.qml").read_text().count("paletteEntry") == K
    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "map.png",
        "map.qml",
        "map.stac.json",
        "map.tif",
        "map_confidence.tif",
        "map_probabilities.tif",
    ]
    assert summary.out["map"] == str(out / "map.tif")


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 150), w=st.integers(1, 150), tile=st.sampled_from([32, 64, 96]), frac=st.floats(0, 0.5))
def test_blend_weights_sum_to_one_over_every_pixel(h, w, tile, frac):
    """No pixel is predicted twice or missed: the window weights sum to 1 on the whole scene."""
    plan = make_plan(h, w, tile, int(tile * frac))
    weights, s = blend_weights(tile, plan.overlap), plan.stride
    acc = np.zeros(((plan.rows - 1) * s + tile, plan.padded_width))
    for i in range(plan.rows):
        for j in range(plan.cols):
            acc[i * s : i * s + tile, j * s : j * s + tile] += weights
    m = plan.margin
    assert np.allclose(acc[m : m + h, m : m + w], 1.0, atol=1e-5)


def test_constant_model_gives_constant_map_and_probability_one(tmp_path):
    image = scene(90, 130)
    image[:, 10:20, 10:20] = 0
    stack = write_stack(tmp_path / "s.tif", image)
    predict_scene(loaded(Constant(3)), stack, tmp_path / "c.tif", probabilities=True, confidence=True, quicklook=False)
    valid = image.any(axis=0)
    with rasterio.open(tmp_path / "c.tif") as ds:
        ids = ds.read(1)
    assert (ids[valid] == 3).all() and (ids[~valid] == 255).all()
    with rasterio.open(tmp_path / "c_probabilities.tif") as ds:
        probs = ds.read()
    assert (probs[3][valid] == 255).all() and (np.delete(probs, 3, axis=0)[:, valid] == 0).all()
    with rasterio.open(tmp_path / "c_confidence.tif") as ds:
        assert (ds.read(1)[valid] == 255).all()


def test_position_dependent_model_has_no_seams(tmp_path):
    stack = write_stack(tmp_path / "s.tif", scene(40, 200))

    def prob0(overlap):
        out = tmp_path / f"o{overlap}.tif"
        predict_scene(loaded(Ramp()), stack, out, overlap=overlap, tile=32, probabilities=True, quicklook=False)
        with rasterio.open(out.with_name(f"o{overlap}_probabilities.tif")) as ds:
            return ds.read(1).astype(int)

    hard, soft = prob0(0), prob0(8)
    assert np.abs(np.diff(hard, axis=1)).max() > 150  # unblended: a jump at every window border
    assert np.abs(np.diff(soft, axis=1)).max() <= 40  # blended: no jump larger than the cosine ramp's
    assert (soft == soft[:1]).all()  # rows are identical (the ramp is horizontal)
    # where only one window covers a pixel (inside its flat part), the blend is that window's value
    local = (np.arange(200) + 8) % 24  # column inside the window starting at k * stride - margin
    p = 1 / (1 + np.exp(-4 * (local / 31 - 0.5)))
    single = local >= 8
    assert np.abs(soft[0, single] - np.round(255 * p[single])).max() <= 1


def test_classification_checkpoint_predicts_one_class_per_tile(tmp_path):
    class TileMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.pixel = Conv1x1()

        def forward(self, x):
            return self.pixel(x).mean(dim=(2, 3))

    image = scene(70, 90, seed=3)
    image[:, :32, :32] = 0  # an all no-data tile
    stack = write_stack(tmp_path / "s.tif", image)
    model = TileMean()
    lm = loaded(model, task="classification", tile=32)
    summary = predict_scene(lm, stack, tmp_path / "c.tif", quicklook=False)
    with rasterio.open(tmp_path / "c.tif") as ds:
        ids = ds.read(1)
    assert summary.windows_skipped == 1 and summary.windows_run == 8
    padded = np.pad(image, ((0, 0), (0, 96 - 70), (0, 96 - 90)), mode="reflect")
    x = (padded.astype(np.float32) - MEAN) / STD
    x[:, ~padded.any(axis=0)] = 0
    valid = image.any(axis=0)
    for r in range(0, 70, 32):
        for c in range(0, 90, 32):
            tile_ids = ids[r : r + 32, c : c + 32][valid[r : r + 32, c : c + 32]]
            if tile_ids.size:
                with torch.no_grad():
                    want = int(model(torch.from_numpy(x[None, :, r : r + 32, c : c + 32])).argmax())
                assert (tile_ids == want).all()
    assert (ids[~valid] == 255).all()


def test_resume_skips_finished_scenes(tmp_path):
    stacks = [
        write_stack(tmp_path / "in" / f"{n}.tif", scene(50, 60, seed=i), product_id=n) for i, n in enumerate(["A", "B"])
    ]
    model = Conv1x1()
    first = predict_many(loaded(model), stacks, tmp_path / "out", quicklook=False)
    assert model.calls > 0 and [s.skipped for s in first] == [False, False]
    model.calls = 0
    (tmp_path / "out" / "B.tif").unlink()  # as if the run had stopped before B finished
    again = predict_many(loaded(model), stacks, tmp_path / "out", quicklook=False)
    assert [s.skipped for s in again] == [True, False] and model.calls > 0
    model.calls = 0
    third = predict_many(loaded(model), stacks, tmp_path / "out", quicklook=False)
    assert all(s.skipped for s in third) and model.calls == 0
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict_scene(loaded(model), stacks[0], tmp_path / "out" / "A.tif")


def test_interrupted_run_leaves_no_file(tmp_path):
    stack = write_stack(tmp_path / "in" / "s.tif", scene(120, 150))
    with pytest.raises(RuntimeError, match="midway"):
        predict_scene(
            loaded(Conv1x1(raise_after=3)),
            stack,
            tmp_path / "out" / "map.tif",
            probabilities=True,
            confidence=True,
            batch_size=2,
            tile=32,
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_safe_product_and_its_ingested_stack_give_the_same_map(tmp_path):
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig

    bands = [*BANDS, "B11"]  # B11 is a 20 m band: resampled like ingest does
    safe = make_safe(tmp_path / "raw", size=64, with_scl=False)
    ingest([safe], tmp_path / "ds", config=IngestConfig(bands=bands, tile_size=32, overviews=False))
    (stack,) = (tmp_path / "ds" / "scenes").glob("*/image.tif")
    model = Conv1x1(c=len(bands))
    a = predict_scene(loaded(model, bands=bands), safe, tmp_path / "safe.tif", quicklook=False)
    b = predict_scene(loaded(model, bands=bands), stack, tmp_path / "stack.tif", quicklook=False)
    assert a.grid == b.grid and a.product_id == b.product_id
    with rasterio.open(tmp_path / "safe.tif") as x, rasterio.open(tmp_path / "stack.tif") as y:
        assert (x.read(1) == y.read(1)).all() and x.tags()["PROCESSING_BASELINE"] == "04.00"


def test_clouds_are_masked_only_when_asked(tmp_path):
    from rasterio.windows import Window

    from landcover.sources.reader import SceneReader
    from landcover.sources.sentinel2 import open_product

    safe = make_safe(tmp_path, size=48, bands=BANDS)  # random SCL classes, SCL 0 = no data
    with SceneReader(open_product(safe).select(BANDS), BANDS) as reader:
        win = reader.read(Window(0, 0, reader.grid.width, reader.grid.height))
    assert win.cloud is not None and win.cloud.any() and not win.valid.all()
    for mask in (False, True):
        out = tmp_path / f"m{mask}.tif"
        predict_scene(loaded(Conv1x1()), safe, out, mask_clouds=mask, quicklook=False)
        with rasterio.open(out) as ds:
            empty = ds.read(1) == 255
        assert (empty == (~win.valid | (win.cloud & mask))).all()


def test_missing_bands_are_named(tmp_path):
    lm = loaded(Conv1x1(c=5), bands=[*BANDS, "B05"])
    safe = make_safe(tmp_path, size=32, bands=BANDS, with_scl=False)
    with pytest.raises(MissingBandError, match="B05"):
        predict_scene(lm, safe, tmp_path / "a.tif")
    stack = write_stack(tmp_path / "s.tif", scene(40, 40))
    with pytest.raises(MissingBandError, match="B05"):
        predict_scene(lm, stack, tmp_path / "b.tif")
    with pytest.raises(ConfigError, match="overlap"):
        predict_scene(loaded(Conv1x1()), stack, tmp_path / "c.tif", tile=32, overlap=20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A U-Net with random weights saved as `landcover train` saves checkpoints."""
    model, _ = build_model(ModelConfig(), BANDS, K, load_weights=False)
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    torch.save(
        {"landcover": meta(), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path
    )
    return path


def test_checkpoint_loads_without_lightning_and_bad_ones_fail_clearly(checkpoint, tmp_path):
    lm = load_checkpoint(checkpoint)
    assert lm.bands == BANDS and lm.tile_size == 32 and len(lm.sha256) == 64 and not lm.model.training
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ModelError, match="not a landcover checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(checkpoint.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="truncated"):
        load_checkpoint(tmp_path / "cut.ckpt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"].pop("model.encoder.conv1.weight")
    torch.save(ckpt, tmp_path / "edited.ckpt")
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(tmp_path / "edited.ckpt")


def test_cli_single_file_folder_from_list_and_errors(checkpoint, tmp_path):
    runner = CliRunner()
    stacks = [
        write_stack(tmp_path / "in" / f"{n}.tif", scene(32, 40, seed=i), product_id=n) for i, n in enumerate(["A", "B"])
    ]
    args = ["predict", str(checkpoint), str(stacks[0]), "--out", str(tmp_path / "one" / "map.tif")]
    result = runner.invoke(app, [*args, "--probabilities", "--no-quicklook", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one" / "map.tif").exists() and (tmp_path / "one" / "map_probabilities.tif").exists()
    assert not (tmp_path / "one" / "map.png").exists()
    with rasterio.open(tmp_path / "one" / "map.tif") as ds:
        assert ds.tags()["CHECKPOINT_SHA256"] == load_checkpoint(checkpoint).sha256
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "exists" in result.output and "--overwrite" in result.output
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# scenes\n{stacks[1]}\n")
    folder = ["predict", str(checkpoint), str(stacks[0]), "--from-list", str(listing), "--out", str(tmp_path / "many")]
    result = runner.invoke(app, folder)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "many").glob("*.tif")) == ["A.tif", "B.tif"]
    assert (tmp_path / "many" / "A.png").exists()
    result = runner.invoke(app, folder)
    assert result.exit_code == 0 and result.output.count("skipped") == 2
    result = runner.invoke(app, ["predict", str(checkpoint), "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no input" in result.output
    shutil.copy(checkpoint, tmp_path / "x.ckpt")
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["predict", str(tmp_path / "x.ckpt"), str(stacks[0]), "--out", str(tmp_path / "x.tif")])
    assert result.exit_code == 2 and "checkpoint" in result.output and "Traceback" not in result.output
