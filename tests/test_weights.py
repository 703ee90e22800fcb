"""Transfer learning with fake, seeded weight files (never downloads: sockets are blocked)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
from torchgeo.models import ResNet18_Weights, ResNet50_Weights

from landcover.errors import ConfigError, ModelError
from landcover.models.build import build_model
from landcover.models.config import ModelConfig
from landcover.models.encoders import encoder_of, parameter_groups, set_encoder_trainable
from landcover.models.input_transform import InputTransform, declared_input_transform
from landcover.models.pretrained import adapt_first_conv, strip_prefix
from landcover.models.weight_files import resolve_weights
from landcover.nomenclature import default_bands

MOCO = "ResNet18_Weights.SENTINEL2_ALL_MOCO"
MOCO_FILE = ResNet18_Weights.SENTINEL2_ALL_MOCO.url.rsplit("/", 1)[-1]
RGB_MOCO = "ResNet18_Weights.SENTINEL2_RGB_MOCO"
RGB_FILE = ResNet18_Weights.SENTINEL2_RGB_MOCO.url.rsplit("/", 1)[-1]
L1C = list(default_bands("L1C"))
L2A = list(default_bands("L2A"))


@pytest.fixture(autouse=True)
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: TORCH_HOME in tmp (never the user's cache)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch_home" / "hub"
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def l1c_state() -> dict[str, torch.Tensor]:
    """State dict of a seeded random 13-band timm ResNet-18 (as torchgeo's files hold)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, in_chans=13, num_classes=1000)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            state[key] = torch.rand_like(value) + 0.5  # not the defaults a fresh model has
    return state


def with_conv1(state: dict[str, torch.Tensor], channels: list[int]) -> dict[str, torch.Tensor]:
    """``state`` with a first convolution of fewer channels (a fake RGB/4-band file)."""
    return state | {"conv1.weight": state["conv1.weight"][:, channels].clone() * 1.5}


def save(state: dict, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return folder / name


def assert_encoder_equals(model: torch.nn.Module, state: dict[str, torch.Tensor], skip=("conv1.weight",)) -> None:
    loaded = encoder_of(model).state_dict()
    keys = [k for k in loaded if k not in skip]
    assert len(keys) >= 100
    for key in keys:
        assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_named_weights_from_weights_dir(tmp_path: Path, l1c_state, task: str) -> None:
    path = save(l1c_state, tmp_path / "weights", MOCO_FILE)
    cfg = ModelConfig(task=task, encoder_weights=MOCO, weights_dir=tmp_path / "weights", allow_download=False)
    model, prov = build_model(cfg, L1C, num_classes=10)
    assert_encoder_equals(model, l1c_state, skip=())  # 13 bands in ESA order: conv1 unchanged
    assert prov["file"] == path.name
    assert len(prov["sha256"]) == 64 and prov["hash_prefix_ok"] is False  # a fake, not the real file
    assert prov["tensors_loaded"] == prov["tensors_total"] == 100  # ResNet-18 without counters
    assert prov["weight_bands"] == L1C and prov["weight_bands_from"] == "torchgeo meta"
    assert prov["head_loaded"] is False  # 1000 classes in the file, 10 here: head dropped


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_named_weights_from_torch_hub_cache_l1c_to_l2a(hub_dir: Path, l1c_state, task: str) -> None:
    save(l1c_state, hub_dir, MOCO_FILE)
    cfg = ModelConfig(task=task, encoder_weights=MOCO, allow_download=False)
    model, prov = build_model(cfg, L2A, num_classes=5)
    assert_encoder_equals(model, l1c_state)
    keep = [L1C.index(b) for b in L2A]
    assert keep == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]
    assert torch.equal(encoder_of(model).conv1.weight, l1c_state["conv1.weight"][:, keep])
    assert prov["dropped_weight_bands"] == ["B10"] and prov["new_bands"] == []
    assert prov["channel_map"] == dict(zip(L2A, keep, strict=True))
    assert prov["first_conv_scale"] == 1.0


def test_band_reordering_picks_the_right_channels(tmp_path: Path, l1c_state) -> None:
    save(l1c_state, tmp_path, MOCO_FILE)
    cfg = ModelConfig(encoder_weights=MOCO, weights_dir=tmp_path, allow_download=False)
    model, prov = build_model(cfg, ["B04", "B03", "B02", "B08"], num_classes=3)
    assert torch.equal(encoder_of(model).conv1.weight, l1c_state["conv1.weight"][:, [3, 2, 1, 7]])
    assert prov["channel_map"] == {"B04": 3, "B03": 2, "B02": 1, "B08": 7}


def test_band_the_weights_lack_needs_adapt_channels(tmp_path: Path, l1c_state) -> None:
    rgb = with_conv1(l1c_state, [3, 2, 1])
    save(rgb, tmp_path, RGB_FILE)
    bands = ["B04", "B03", "B02", "B08"]
    cfg = ModelConfig(task="classification", encoder_weights=RGB_MOCO, weights_dir=tmp_path, allow_download=False)
    with pytest.raises(ModelError, match="B08") as err:
        build_model(cfg, bands, 3)
    assert "adapt_channels" in str(err.value)
    model, prov = build_model(cfg.model_copy(update={"adapt_channels": True}), bands, 3)
    conv = encoder_of(model).conv1.weight
    scale = 3 / 4  # 3 kernels in the file, 4 data channels
    assert torch.allclose(conv[:, :3], rgb["conv1.weight"] * scale)
    assert torch.allclose(conv[:, 3], rgb["conv1.weight"].mean(dim=1) * scale)
    assert prov["new_bands"] == ["B08"] and prov["channel_map"]["B08"] is None
    assert prov["first_conv_scale"] == scale
    assert_encoder_equals(model, rgb)


def test_composite_bands_repeat_the_single_date_kernels_scaled_per_period(tmp_path: Path, l1c_state) -> None:
    """Issue 18: 13-band L1C weights on a 2-period composite of 4 bands: each period's B04 gets the file's B04
    kernel, every kernel x 13/8 capped at 1 (8 data channels < 13 file kernels: kept as they are); on a 3-period
    composite of all 13 bands every kernel is x 1/3."""
    save(l1c_state, tmp_path, MOCO_FILE)
    cfg = ModelConfig(encoder_weights=MOCO, weights_dir=tmp_path, allow_download=False)
    bands = [f"{b}@{p}" for p in ("spring", "summer") for b in ("B04", "B03", "B02", "B08")]
    model, prov = build_model(cfg, bands, num_classes=3)
    file_conv = l1c_state["conv1.weight"]
    assert torch.equal(encoder_of(model).conv1.weight, file_conv[:, [3, 2, 1, 7, 3, 2, 1, 7]])
    assert prov["channel_map"]["B04@summer"] == 3 and prov["first_conv_scale"] == 1.0 and not prov["new_bands"]
    three = [f"{b}@{p}" for p in ("p1", "p2", "p3") for b in L1C]
    kernel, cmap, scale = adapt_first_conv(file_conv, L1C, three)
    assert scale == pytest.approx(1 / 3) and cmap["B10@p3"] == L1C.index("B10")
    assert torch.allclose(kernel[:, 13 * 2 + 4], file_conv[:, 4] / 3)
    assert torch.allclose(kernel.reshape(64, 3, 13, 7, 7).sum(dim=1), file_conv)  # periods sum to the file's kernel


def test_adapt_rule_keeps_kernels_when_data_has_fewer_channels() -> None:
    weight = torch.randn(8, 3, 7, 7)
    kernel, cmap, scale = adapt_first_conv(weight, ["B04", "B03", "B02"], ["B02", "NDVI"], adapt_channels=True)
    assert scale == 1.0 and cmap == {"B02": 2, "NDVI": None}
    assert torch.equal(kernel[:, 0], weight[:, 2])
    assert torch.allclose(kernel[:, 1], weight.mean(dim=1))


def test_keys_that_match_nothing(tmp_path: Path) -> None:
    path = save({"stem.weight": torch.randn(64, 13, 7, 7), "blocks.0.w": torch.randn(3)}, tmp_path, "x.pth")
    cfg = ModelConfig(task="classification", encoder_weights=str(path))
    with pytest.raises(ModelError, match="loaded nothing"):
        build_model(cfg, L1C, 3)


def test_weights_of_another_architecture_are_refused(tmp_path: Path, l1c_state) -> None:
    deeper = dict(l1c_state)  # like a ResNet-34: more blocks per layer; ResNet-18 keys a subset
    for key, value in l1c_state.items():
        for layer in ("layer1", "layer2"):
            for block in ("2", "3"):
                if key.startswith(f"{layer}.0."):
                    deeper[f"{layer}.{block}.{key.split('.', 2)[2]}"] = value
    path = save(deeper, tmp_path, "r34.pth")
    with pytest.raises(ModelError, match="another architecture"):
        build_model(ModelConfig(task="classification", encoder_weights=str(path)), L1C, 3)
    partial = {k: v for k, v in l1c_state.items() if not k.startswith("layer4.")}
    path = save(partial, tmp_path, "partial.pth")
    with pytest.raises(ModelError, match="loaded only"):
        build_model(ModelConfig(task="classification", encoder_weights=str(path)), L1C, 3)


def test_missing_file_without_download(tmp_path: Path, hub_dir: Path) -> None:
    cfg = ModelConfig(task="classification", encoder_weights=MOCO, weights_dir=tmp_path / "mine", allow_download=False)
    with pytest.raises(ModelError) as err:
        build_model(cfg, L2A, 3)
    message = str(err.value)
    assert MOCO_FILE in message and str(tmp_path / "mine") in message and str(hub_dir) in message
    assert ResNet18_Weights.SENTINEL2_ALL_MOCO.url in message


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_missing_file_download_fails_offline_with_model_error(hub_dir: Path, monkeypatch) -> None:
    monkeypatch.delenv("LANDCOVER_OFFLINE")  # try the download itself (test_offline.py covers the switch)
    cfg = ModelConfig(task="classification", encoder_weights=MOCO, allow_download=True)
    with pytest.raises(ModelError) as err:  # pytest-socket blocks the download
        build_model(cfg, L2A, 3)
    assert MOCO_FILE in str(err.value) and "download failed" in str(err.value)
    assert not (hub_dir / MOCO_FILE).exists()


def test_safetensors_with_band_metadata(tmp_path: Path, l1c_state) -> None:
    path = tmp_path / "enc.safetensors"
    safetensors.torch.save_file(
        {f"backbone.{k}": v for k, v in l1c_state.items()}, str(path), metadata={"bands": ",".join(L1C)}
    )
    cfg = ModelConfig(task="classification", encoder_weights=str(path))
    model, prov = build_model(cfg, ["B08", "B04"], 3)
    assert prov["key_prefix"] == "backbone." and prov["weight_bands_from"] == "stored in the file"
    assert torch.equal(encoder_of(model).conv1.weight, l1c_state["conv1.weight"][:, [7, 3]])
    assert_encoder_equals(model, l1c_state)


def test_lightning_checkpoint_of_a_unet(tmp_path: Path) -> None:
    torch.manual_seed(3)
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=13, classes=6)
    state = {f"model.{k}": v for k, v in unet.state_dict().items()}
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "state_dict": state,
        "hyper_parameters": {"data": {"bands": L1C}, "lr": 1e-3},
    }
    path = save(ckpt, tmp_path, "last.ckpt")
    model, prov = build_model(ModelConfig(task="classification", encoder_weights=str(path)), L2A, 4)
    assert prov["key_prefix"] == "model.encoder." and prov["weight_bands"] == L1C
    expected = unet.encoder.state_dict()
    assert_encoder_equals(model, expected)
    keep = [L1C.index(b) for b in L2A]
    assert torch.equal(model.conv1.weight, expected["conv1.weight"][:, keep])


def test_checkpoint_with_same_classes_loads_the_head(tmp_path: Path, l1c_state) -> None:
    state = with_conv1(l1c_state, [1, 2, 3, 7])
    state["fc.weight"], state["fc.bias"] = torch.randn(5, 512), torch.randn(5)
    path = save({"model": state}, tmp_path, "cls.pt")
    bands = ["B02", "B03", "B04", "B08"]
    cfg = ModelConfig(task="classification", encoder_weights=str(path), weight_bands=bands)
    model, prov = build_model(cfg, bands, 5)
    assert prov["head_loaded"] is True and prov["weight_bands_from"] == "config"
    assert torch.equal(model.fc.weight, state["fc.weight"])
    model, prov = build_model(cfg, bands, 6)
    assert prov["head_loaded"] is False


def test_imagenet_file_name_and_rgb_order(tmp_path: Path, l1c_state) -> None:
    rgb = with_conv1(l1c_state, [3, 2, 1])
    source = resolve_weights("imagenet", "resnet18")
    assert source.file_name == "resnet18-f37072fd.pth" and source.bands == ("B04", "B03", "B02")
    save(rgb, tmp_path, source.file_name)
    cfg = ModelConfig(task="classification", encoder_weights="imagenet", weights_dir=tmp_path, allow_download=False)
    model, _ = build_model(cfg, ["B02", "B03", "B04"], 2)
    assert torch.equal(encoder_of(model).conv1.weight, rgb["conv1.weight"][:, [2, 1, 0]])


def test_torchgeo_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="SENTINEL2_ALL_MOCO"):
        resolve_weights("ResNet18_Weights.SENTINEL2_ALL_MOCOX", "resnet18")
    with pytest.raises(ConfigError, match="resnet18"):
        resolve_weights("ResNet50_Weights.SENTINEL2_ALL_DINO", "resnet18")
    with pytest.raises(ConfigError, match="no weights for resnet34"):
        resolve_weights("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet34")
    with pytest.raises(ConfigError, match="non-Sentinel-2"):
        resolve_weights("ResNet18_Weights.LANDSAT_TM_TOA_MOCO", "resnet18")
    dino = resolve_weights("ResNet50_Weights.SENTINEL2_ALL_DINO", "resnet50")
    assert dino.bands == tuple(L1C) and dino.file_name.endswith(".pth")
    with pytest.raises(ConfigError):
        build_model(ModelConfig(task="classification", encoder_weights="ResNet18_Weights.NOPE"), L2A, 3)
    assert resolve_weights("runs/ResNet18_Weights.mine.pth", "resnet18").kind == "file"


def test_unreadable_files_are_model_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "root": Path("/x")}, tmp_path / "obj.ckpt")
    for name in ("junk.pth", "obj.ckpt", "absent.pth"):
        cfg = ModelConfig(task="classification", encoder_weights=str(tmp_path / name))
        with pytest.raises(ModelError, match=name):
            build_model(cfg, L2A, 3)


def test_strip_prefix_prefers_the_longest_match() -> None:
    targets = {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight"}
    state = {f"model.encoder.{k}": torch.zeros(1) for k in targets} | {"model.decoder.x": torch.zeros(1)}
    prefix, stripped = strip_prefix(state, targets)
    assert prefix == "model.encoder." and set(stripped) == targets


def test_set_encoder_trainable() -> None:
    model, _ = build_model(ModelConfig(), L2A, 3)
    set_encoder_trainable(model, False)
    groups = parameter_groups(model)
    assert not any(p.requires_grad for p in groups["encoder"])
    assert all(p.requires_grad for p in groups["head"])
    set_encoder_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    from tests.learnable import make_learnable_dataset

    # bands B02 B03 B04 B08; small blocks, so that this small scene has train, val and test tiles
    return make_learnable_dataset(
        tmp_path_factory.mktemp("learnable"),
        size=256,
        split={"block_size_m": 1280, "seed": 4, "fractions": (0.6, 0.2, 0.2)},
    )


@pytest.fixture(scope="module")
def transform_run(learnable: Path, tmp_path_factory) -> SimpleNamespace:
    """A tiny run from a weight file that declares its input transform (its encoder frozen throughout)."""
    import landcover.training.train
    from landcover.config import load_config
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("transform_run")
    wbands = ["B08", "B04", "B03", "B02"]  # the file's own band order, its statistics in that order
    mean, std = [2500.0, 600.0, 700.0, 650.0], [900.0, 400.0, 350.0, 300.0]
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False, in_chans=4, num_classes=1000).state_dict()
    for key, value in state.items():  # batch-norm statistics of a pretrained (not a fresh) network
        if key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
    weights = save(
        {"state_dict": state, "bands": wbands, "input_transform": {"mean": mean, "std": std}}, tmp, "enc.pth"
    )
    cfg = load_config(
        TrainConfig,
        Path(__file__).parents[1] / "configs" / "tiny.yaml",
        [
            f"data.dataset={learnable}",
            f"model.encoder_weights={weights}",
            "model.freeze_encoder_epochs=1",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
        ],
    )
    made: list[LandcoverDataModule] = []

    class Spy(LandcoverDataModule):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(landcover.training.train, "LandcoverDataModule", Spy)
        train(cfg, tmp / "run")
    return SimpleNamespace(
        best=tmp / "run" / "checkpoints" / "best.ckpt",
        cfg=cfg,
        data=made[0],
        state=state,
        wbands=wbands,
        mean=mean,
        std=std,
    )


def test_declared_input_transform_feeds_the_encoder_in_training_and_predict(transform_run, learnable: Path) -> None:
    """Weights that declare their input transform get it: training batches and predict's windows
    reach the (frozen) pretrained encoder as the reference transform computes them by hand."""
    import rasterio
    from rasterio.windows import Window

    from landcover.inference.checkpoint import load_checkpoint
    from landcover.inference.feeder import Feeder, open_source
    from landcover.inference.sliding import make_plan
    from landcover.inference.torch_engine import TorchEngine

    run, dataset = transform_run, learnable
    state, wbands, mean, std = run.state, run.wbands, run.mean, run.std
    lm = load_checkpoint(run.best)
    norm = torch.load(run.best, weights_only=True)["landcover"]["normalization"]
    assert norm["mode"] == "weights" and "enc.pth" in norm["from"] and norm["bands"] == lm.bands
    encoder = encoder_of(lm.model)
    assert_encoder_equals(lm.model, state)  # frozen for the whole run: still the file's encoder

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            stages = encoder(x if x.ndim == 4 else x[None])[1:]  # every stage of the U-Net encoder
        return torch.cat([f[0].flatten() for f in stages])

    data = run.data  # the DataModule train used
    data.setup("validate")
    tiles = data.datasets["val"]
    _, scene, row, col, height, width = tiles.tiles[0]
    stack = dataset / "scenes" / scene / "image.tif"
    with rasterio.open(stack) as src:  # the reference: the declared transform, by hand
        raw = src.read(window=Window(col, row, width, height)).astype(np.float64)
        bands = list(src.descriptions)
    m = np.array([mean[wbands.index(b)] for b in bands])[:, None, None]
    s = np.array([std[wbands.index(b)] for b in bands])[:, None, None]
    reference = torch.from_numpy(((raw - m) / s * raw.any(axis=0)).astype(np.float32))
    expected = features(reference)
    torch.testing.assert_close(features(tiles[0]["image"]), expected, rtol=0, atol=1e-5)  # training
    t = lm.tile_size
    with contextlib.closing(open_source(stack, lm)) as source:  # predict's reader and normalisation
        feeder = Feeder(source, make_plan(source.grid.height, source.grid.width, t, 0), 64, False)
        engine = TorchEngine(lm, torch.device("cpu"), "fp32")  # predict's normalisation is the engine's
        batches = feeder.batches(feeder(row // t))
        window = {j: engine.tensor(x)[n] for cols, x in batches for n, j in enumerate(cols)}[col // t]
    torch.testing.assert_close(features(window), expected, rtol=0, atol=1e-5)  # predict (and explain)


def test_evaluating_a_checkpoint_uses_the_normalization_it_was_trained_with(transform_run) -> None:
    """A DataModule built from the config alone (as sweep's test scoring and the demo build theirs)
    scores a checkpoint on the inputs it was trained on."""
    from landcover.training.datamodule import LandcoverDataModule
    from landcover.training.train import evaluate_checkpoint

    plain = LandcoverDataModule(transform_run.cfg.data, task="segmentation")  # knows no weights: z-score
    scores = evaluate_checkpoint(transform_run.best, plain)
    trained = transform_run.data.normalization
    assert plain.normalization["mean"] == trained["mean"] and plain.normalization["std"] == trained["std"]
    again = evaluate_checkpoint(transform_run.best, transform_run.data)
    assert scores["val/loss"] == pytest.approx(again["val/loss"], abs=1e-6)


def test_torchgeo_transforms_become_mean_and_std_in_stored_units() -> None:
    """No file is needed to know the transform; the result equals torchgeo's own transform."""
    moco = declared_input_transform(ModelConfig(encoder_weights=MOCO, allow_download=False))
    assert moco is not None and moco.for_bands(L2A)["mean"] == [0.0] * 12
    assert moco.for_bands(L2A)["std"] == [10000.0] * 12
    spec = "ResNet50_Weights.SENTINEL2_ALL_SOFTCON"  # per-band statistics, in the 13 L1C bands' order
    softcon = declared_input_transform(ModelConfig(encoder="resnet50", encoder_weights=spec))
    assert softcon is not None
    mapped = softcon.for_bands(["B08", "B04", "NDVI"])
    assert mapped["mean"] == [2318.7, 1373.1, None] and mapped["std"] == [1249.5, 1144.9, None]
    x = torch.rand(2, 13, 256, 256) * 5000  # torchgeo: Resize(256) (a no-op here), CenterCrop(224), Normalize
    full = softcon.for_bands(L1C)
    mean, std = (torch.tensor(full[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    expected = ((x - mean) / std)[..., 16:240, 16:240]
    torch.testing.assert_close(ResNet50_Weights.SENTINEL2_ALL_SOFTCON.transforms(x.clone()), expected)
    # 8-bit true-colour inputs (SeCo) are not the stacks' units; ImageNet: the dataset z-score (module doc)
    assert declared_input_transform(ModelConfig(encoder_weights="ResNet18_Weights.SENTINEL2_RGB_SECO")) is None
    assert declared_input_transform(ModelConfig(encoder_weights="imagenet")) is None
    assert declared_input_transform(ModelConfig()) is None


def test_input_transform_of_local_files(tmp_path: Path, l1c_state) -> None:
    path = tmp_path / "enc.safetensors"
    safetensors.torch.save_file(
        l1c_state, str(path), metadata={"bands": ",".join(L1C), "input_transform": '{"mean": 1000, "std": 2000}'}
    )
    declared = declared_input_transform(ModelConfig(encoder_weights=str(path)))
    assert declared is not None and declared.for_bands(["B02"])["mean"] == [1000.0]
    plain = save(l1c_state, tmp_path, "plain.pth")  # declares nothing
    assert declared_input_transform(ModelConfig(encoder_weights=str(plain))) is None
    for bad, match in (
        ({"mean": [1, 2], "std": [1, 2, 3]}, "2 means, 3 stds"),
        ({"std": 5}, "lacks mean"),
        ({"mean": 0, "std": 0}, "positive stds"),
        ("{oops", "not JSON"),
    ):
        bad_file = save({"state_dict": l1c_state, "input_transform": bad}, tmp_path, "bad.pth")
        with pytest.raises(ModelError, match=match):
            declared_input_transform(ModelConfig(encoder_weights=str(bad_file)))
    unnamed = InputTransform((1.0, 2.0), (3.0, 4.0), None, "x")
    with pytest.raises(ModelError, match="no band names"):
        unnamed.for_bands(L2A)


def test_normalization_modes_of_the_datamodule(learnable: Path) -> None:
    from landcover.training.datamodule import DataConfig, LandcoverDataModule

    info = json.loads((learnable / "dataset.json").read_text())["normalization"]
    declared = InputTransform((500.0, 600.0), (50.0, 60.0), ("B03", "B02"), "weight file w.pth")
    auto = LandcoverDataModule(DataConfig(dataset=learnable), input_transform=declared)
    # B02 B03 from the weights, B04 B08 (no statistics in the weights) from the dataset
    assert auto.normalization["mean"] == pytest.approx([600.0, 500.0, *info["mean"][2:]])
    assert auto.normalization["std"] == pytest.approx([60.0, 50.0, *info["std"][2:]])
    assert auto.normalization["mode"] == "weights" and "w.pth" in auto.normalization["from"]
    dataset = LandcoverDataModule(DataConfig(dataset=learnable, normalization="dataset"), input_transform=declared)
    assert dataset.normalization["mean"] == pytest.approx(info["mean"]) and dataset.normalization["mode"] == "dataset"
    plain = LandcoverDataModule(DataConfig(dataset=learnable))  # auto without declared transform: dataset
    assert plain.normalization["mean"] == pytest.approx(info["mean"]) and plain.normalization["mode"] == "dataset"
    raw = LandcoverDataModule(DataConfig(dataset=learnable, normalization="none"), input_transform=declared)
    assert raw.normalization["std"] == [10000.0] * 4 and raw.normalization["mode"] == "none"
    with pytest.raises(ConfigError, match="declares no input transform"):
        LandcoverDataModule(DataConfig(dataset=learnable, normalization="weights"))
