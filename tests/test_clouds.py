"""Cloud masks where there is no SCL: the s2cloudless detector, window by window, in ingest and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError
from rasterio.windows import Window
from s2cloudless import S2PixelCloudDetector
from scipy import ndimage
from typer.testing import CliRunner

from landcover.cli import app
from landcover.config import load_config
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ConfigError, MissingBandError
from landcover.inference.feeder import ProductSource
from landcover.inference.model_info import ModelInfo
from landcover.nomenclature import IGNORE, nomenclature
from landcover.sources.clouds import DETECTOR_BANDS, CloudConfig, bands_to_read
from landcover.sources.reader import SceneReader, strips
from landcover.sources.sentinel2 import open_product
from tests.s2_fixtures import ESA_BANDS, NATIVE, band_shape, make_safe, shared_data, write_s2_raster
from tests.test_ingest import SMALL, clc  # noqa: F401  (the fixture)

SIZE = 128
CLOUDS = CloudConfig(detector="auto", write_probability=True)
# TOA reflectance x 10000 of vegetated land and of a thick cloud (cirrus band B10 near 0 over clear land)
LAND = dict(zip(ESA_BANDS, (1300, 1000, 800, 600, 900, 1800, 2200, 2600, 2700, 900, 20, 1700, 900), strict=True))
CLOUD = dict(zip(ESA_BANDS, (6000, 6200, 6000, 6100, 6200, 6300, 6300, 6400, 6400, 3000, 400, 4500, 3500), strict=True))


def cloudy_l1c(tmp_path, baseline="04.00"):
    """A synthetic L1C SAFE product (128 x 128 px at 10 m): dark land with a bright, cirrus-bright blob."""
    safe = make_safe(tmp_path, level="L1C", baseline=baseline, size=SIZE)
    product = open_product(safe)
    offset = 1000 if float(baseline) >= 4 else 0
    rng = np.random.default_rng(7)
    for band in ESA_BANDS:
        res = NATIVE[band]
        rows, cols = band_shape(res, SIZE)
        y, x = np.ogrid[:rows, :cols]
        cy, cx, r = rows * 0.35, cols * 0.6, rows * 0.22
        blob = (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        land = LAND[band] + rng.integers(-50, 50, (rows, cols))
        cloud = CLOUD[band] + rng.integers(-300, 300, (rows, cols))
        data = (np.where(blob, cloud, land) + offset).astype(np.uint16)
        write_s2_raster(Path(product.bands[band].path), data, res)
    return safe


def detector_reference(image13: np.ndarray, resolution: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """s2cloudless through its own API on all 13 bands (reflectance x 10000 -> / 10000), with the recommended
    post-processing for the resolution: (probability, mask)."""
    det = S2PixelCloudDetector(
        threshold=0.4, all_bands=True, average_over=round(220 / resolution), dilation_size=round(110 / resolution)
    )
    data = (np.moveaxis(image13, 0, -1) / 10000.0)[np.newaxis].astype(np.float32)
    probability = det.get_cloud_probability_maps(data)
    return probability[0], det.get_mask_from_prob(probability)[0].astype(bool)


def read_whole(product, bands, **kwargs):
    with SceneReader(product, bands, prefetch=False, **kwargs) as reader:
        g = reader.grid
        return reader.read(Window(0, 0, g.width, g.height))


def disk_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return ndimage.binary_dilation(mask, structure=x * x + y * y <= radius * radius)


# --- settings -------------------------------------------------------------------------------------------------


def test_config_validation():
    assert CloudConfig().detector == "none" and CloudConfig().threshold == 0.4 and CloudConfig().dilation_m == 0
    with pytest.raises(ValidationError, match="extra"):
        CloudConfig.model_validate({"detector": "auto", "buffer": 3})
    with pytest.raises(ValidationError):
        CloudConfig(detector="fmask")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CloudConfig(threshold=1.0)
    with pytest.raises(ValidationError):
        CloudConfig(dilation_m=-10)
    with pytest.raises(ValidationError, match="write_probability needs a detector"):
        CloudConfig(write_probability=True)
    cfg = IngestConfig.model_validate({"clouds": {"detector": "auto", "dilation_m": 30}})
    assert cfg.clouds == CloudConfig(detector="auto", dilation_m=30)
    with pytest.raises(ConfigError, match=r"clouds\.detector"):
        load_config(IngestConfig, overrides=["clouds.detector=sen2cor"])


def test_explicit_detector_on_l2a_names_the_missing_band(tmp_path):
    product = open_product(make_safe(tmp_path, level="L2A"))  # L2A: no B10
    with pytest.raises(MissingBandError, match=r"B10.*s2cloudless.*clouds\.detector"):
        bands_to_read(product, ["B02"], CloudConfig(detector="s2cloudless"))
    # auto: an L2A with an SCL keeps its SCL, reads no extra band
    assert bands_to_read(product, ["B02"], CloudConfig(detector="auto")) == ["B02"]
    win = read_whole(product.select(["B02"]), ["B02"], clouds=CloudConfig(detector="auto"))
    assert win.cloud_probability is None and win.cloud is not None


# --- window by window -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dilation_m", [0.0, 40.0])
def test_strips_equal_the_whole_window(tmp_path, dilation_m):
    product = open_product(cloudy_l1c(tmp_path))
    cfg = CloudConfig(detector="auto", dilation_m=dilation_m)
    bands = ["B02", "B03", "B04", "B08"]
    product = product.select(bands_to_read(product, bands, cfg))
    whole = read_whole(product, bands, clouds=cfg)
    assert whole.image.shape == (4, SIZE, SIZE) and whole.cloud is not None and whole.cloud_probability is not None
    assert 0.05 < whole.cloud.mean() < 0.95  # the blob is cloud, the land is not
    with SceneReader(product, bands, clouds=cfg) as reader:  # 16-row strips, read ahead in the background
        parts = [reader.read(w) for w in strips(reader.grid, 16, 16)]
        provenance = reader.provenance()
    assert np.array_equal(np.concatenate([p.cloud for p in parts]), whole.cloud)
    assert np.array_equal(np.concatenate([p.cloud_probability for p in parts]), whole.cloud_probability)
    assert np.array_equal(np.concatenate([p.image for p in parts], axis=1), whole.image)
    assert np.array_equal(np.concatenate([p.valid for p in parts]), whole.valid)
    # a window inside the scene (not full width): the same pixels again
    with SceneReader(product, bands, clouds=cfg, prefetch=False) as reader:
        part = reader.read(Window(37, 50, 41, 29))
    assert np.array_equal(part.cloud, whole.cloud[50:79, 37:78])
    clouds = provenance["clouds"]
    assert clouds["detector"] == "s2cloudless" and clouds["version"] == "1.7.3" and clouds["threshold"] == 0.4
    assert clouds["dilation_px"] == round(dilation_m / 10) and provenance["offsets_applied"].keys() == set(bands)


def test_mask_equals_the_detector_api_and_dilation_grows_it(tmp_path):
    product = open_product(cloudy_l1c(tmp_path))
    reference = read_whole(product, list(ESA_BANDS))  # harmonised, no clouds: what the detector is given
    probability, mask = detector_reference(reference.image)
    cfg = CloudConfig(detector="s2cloudless", dilation_m=30)
    ours = read_whole(product.select(bands_to_read(product, ["B04"], cfg)), ["B04"], clouds=cfg)
    assert np.array_equal(ours.cloud_probability, probability)
    assert np.array_equal(ours.cloud, disk_dilation(mask, 3))
    assert ours.cloud.sum() > mask.sum()


def loop_block_mean(image: np.ndarray, block: int) -> np.ndarray:
    """Block means written plainly (the reference of landcover.sources.clouds.block_mean): every block's pixels
    with data in all bands, averaged and rounded."""
    c, h, w = image.shape
    out = np.zeros((c, -(-h // block), -(-w // block)), np.uint16)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            cell = image[:, i * block : (i + 1) * block, j * block : (j + 1) * block].reshape(c, -1)
            cell = cell[:, cell.all(axis=0)]
            if cell.size:
                out[:, i, j] = np.rint(cell.astype(np.float64).mean(axis=1))
    return out


def test_detector_on_60m_blocks(tmp_path):
    """resolution_m=60: the detector runs on 6 x 6 block means with its 60 m parameters (4/2 px); strips equal
    the whole scene and the API run on the block means."""
    product = open_product(cloudy_l1c(tmp_path))
    cfg = CloudConfig(detector="auto", resolution_m=60, dilation_m=20)
    bands = ["B02", "B03", "B04", "B08"]
    selected = product.select(bands_to_read(product, bands, cfg))
    whole = read_whole(selected, bands, clouds=cfg)
    with SceneReader(selected, bands, clouds=cfg) as reader:
        parts = [reader.read(w) for w in strips(reader.grid, 16, 16)]
        assert reader.provenance()["clouds"]["average_over_px"] == 4 and reader.clouds.block == 6
    assert np.array_equal(np.concatenate([p.cloud for p in parts]), whole.cloud)
    assert np.array_equal(np.concatenate([p.cloud_probability for p in parts]), whole.cloud_probability)
    reference = read_whole(product, list(ESA_BANDS)).image
    blocks = loop_block_mean(reference[[ESA_BANDS.index(b) for b in DETECTOR_BANDS]], 6)
    det = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2)
    data = (np.moveaxis(blocks, 0, -1) / 10000.0)[np.newaxis].astype(np.float32)
    probability = det.get_cloud_probability_maps(data)
    mask = det.get_mask_from_prob(probability)[0].astype(bool)
    up = np.repeat(np.repeat(mask, 6, axis=0), 6, axis=1)[:SIZE, :SIZE]
    assert np.array_equal(whole.cloud, disk_dilation(up, 2)) and 0.05 < whole.cloud.mean() < 0.95
    assert np.array_equal(whole.cloud_probability[::6, ::6], probability[0])
    with pytest.raises(ConfigError, match=r"clouds\.resolution_m \(25\) must be a multiple"):
        SceneReader(selected, bands, clouds=CloudConfig(detector="auto", resolution_m=25))


def test_scl_mask_is_dilated_too(tmp_path):
    product = open_product(make_safe(tmp_path, level="L2A", size=96)).select(["B02"])
    plain = read_whole(product, ["B02"])
    grown = read_whole(product, ["B02"], clouds=CloudConfig(dilation_m=20))
    assert np.array_equal(grown.cloud, disk_dilation(plain.cloud, 2))
    none = read_whole(product, ["B02"], clouds=CloudConfig())
    assert np.array_equal(none.cloud, plain.cloud) and none.cloud_probability is None


# --- ingest ---------------------------------------------------------------------------------------------------


def test_ingest_puts_ignore_exactly_where_the_detector_says(tmp_path, clc):  # noqa: F811
    safe = cloudy_l1c(tmp_path)
    product = open_product(safe)
    reference = read_whole(product, list(ESA_BANDS))
    probability, mask = detector_reference(reference.image)
    cfg = SMALL.model_copy(update={"bands": ["B02", "B03", "B04", "B08"]})
    plain, masked = tmp_path / "plain", tmp_path / "masked"
    ingest([safe], plain, labels=clc, config=cfg)  # clouds.detector none: today's behaviour
    ingest([safe], masked, labels=clc, config=cfg.model_copy(update={"clouds": CLOUDS}))
    scene, scene0 = next((masked / "scenes").iterdir()), next((plain / "scenes").iterdir())
    with rasterio.open(scene / "labels.tif") as src, rasterio.open(scene0 / "labels.tif") as src0:
        labels, labels0 = src.read(1), src0.read(1)
    with rasterio.open(scene / "image.tif") as src:
        assert src.count == 4 and [*src.descriptions] == ["B02", "B03", "B04", "B08"]  # B10 read, not kept
    assert 0.05 < mask.mean() < 0.95 and np.count_nonzero(labels0 != IGNORE) > labels0.size // 4
    assert np.array_equal(labels == IGNORE, (labels0 == IGNORE) | mask)
    assert np.array_equal(labels[~mask], labels0[~mask])
    with rasterio.open(scene / "cloud_probability.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and (src.width, src.height) == (SIZE, SIZE)
        percent = src.read(1)
    assert np.array_equal(percent, np.where(reference.valid, np.rint(probability * 100), 255).astype(np.uint8))
    clouds = json.loads((scene / "scene.json").read_text())["provenance"]["clouds"]
    assert clouds["detector"] == "s2cloudless" and clouds["config"]["detector"] == "auto"
    assert not (scene0 / "cloud_probability.tif").exists()


def test_predict_reads_products_with_the_checkpoint_cloud_settings(tmp_path):
    """ProductSource (predict on a raw product) masks what ingest masked, from the checkpoint's dataset settings."""
    safe = cloudy_l1c(tmp_path)
    bands = ["B02", "B03", "B04", "B08"]
    meta_reader = {"clouds": CLOUDS.model_dump(mode="json")}
    lm = ModelInfo("segmentation", bands, nomenclature("level1"), 16, np.zeros(4), np.ones(4), reader=meta_reader)
    source = ProductSource(safe, lm, clouds=True)  # predict --mask-clouds
    try:
        image, _, cloud = source.rows(0, SIZE)
    finally:
        source.close()
    product = open_product(safe)
    expected = read_whole(product.select(bands_to_read(product, bands, CLOUDS)), bands, clouds=CLOUDS)
    assert image.shape == (4, SIZE, SIZE) and np.array_equal(image, expected.image)
    assert cloud is not None and np.array_equal(cloud, expected.cloud) and 0.05 < cloud.mean() < 0.95
    for masked, reader in ((False, meta_reader), (True, {})):  # clouds not masked / a checkpoint without settings
        lm.reader = reader
        source = ProductSource(safe, lm, clouds=masked)
        try:
            assert source.rows(0, SIZE)[2] is None and source.reader.clouds is None  # no detector run (as before)
        finally:
            source.close()


# --- the real L1C clip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution_m", [pytest.param(None, marks=pytest.mark.slow), 60.0])
def test_real_l1c_clip_mask_equals_s2cloudless_api(resolution_m):
    """The mask of the real L1C clip read in 256-row strips equals s2cloudless's own API run on the whole clip:
    on its 10 m pixels (slow: ~25 s, ``-m slow``) and on 60 m block means (default run)."""
    clip = shared_data("s2-l1c-T33UUU-jp2", "IMG_DATA")
    product = open_product(clip)
    reference = read_whole(product, list(ESA_BANDS))
    block = 1 if resolution_m is None else 6
    pixels = reference.image if block == 1 else loop_block_mean(reference.image, block)
    probability, mask = detector_reference(pixels, 10.0 * block)
    rows, cols = reference.valid.shape
    probability, mask = (np.repeat(np.repeat(a, block, 0), block, 1)[:rows, :cols] for a in (probability, mask))
    cfg = CloudConfig(detector="auto", resolution_m=resolution_m)
    bands = ["B02", "B03", "B04", "B08"]
    with SceneReader(product.select(bands_to_read(product, bands, cfg)), bands, clouds=cfg) as reader:
        parts = [reader.read(w) for w in strips(reader.grid, 256, 256)]  # 3 strips of 256 rows
    cloud = np.concatenate([p.cloud for p in parts])
    assert np.array_equal(np.concatenate([p.cloud_probability for p in parts]), probability)
    assert np.array_equal(cloud, mask)
    share = float(cloud[reference.valid].mean())
    print(f"\nreal L1C clip (T33UUU 2017-02-16, 1536x768 px): s2cloudless ({block * 10} m) masks {share:.1%}")
    assert 0.10 < share < 0.40  # a hazy winter scene: measured 21.3 % (10 m), 22.4 % (60 m blocks)


def test_cli_ingest_with_the_detector_and_bad_settings(tmp_path, clc):  # noqa: F811
    safe = cloudy_l1c(tmp_path, baseline="02.14")
    out = tmp_path / "ds"
    base = ["ingest", str(safe), "--labels", str(clc), "--out", str(out), "--bands", "B02,B03,B04,B08"]
    base += ["--tile-size", "16", "--set", "overviews=false", "--set", "split.min_valid_fraction=0"]
    bad = CliRunner().invoke(app, [*base, "--set", "clouds.detector=fmask"])
    assert bad.exit_code == 2 and "clouds.detector" in bad.output and not out.exists()
    bad = CliRunner().invoke(app, [*base, "--set", "clouds.detector=auto", "--set", "clouds.resolution_m=25"])
    assert bad.exit_code == 2 and "clouds.resolution_m (25) must be a multiple" in bad.output
    assert not list((out / "scenes").glob("*/scene.json"))  # nothing half-written
    good = CliRunner().invoke(
        app, [*base, "--overwrite", "--set", "clouds.detector=auto", "--set", "clouds.dilation_m=20"]
    )
    assert good.exit_code == 0, good.output
    scene = json.loads(next((out / "scenes").glob("*/scene.json")).read_text())
    assert scene["provenance"]["clouds"]["dilation_px"] == 2 and scene["provenance"]["level"] == "L1C"
