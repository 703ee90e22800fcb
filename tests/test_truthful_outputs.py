"""Issue 13 (parts): a YAML syntax error is one line naming file, line and column; output tags
hold no literal ``None``."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from landcover.config import load_config
from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from landcover.errors import ConfigError
from landcover.training.train import TrainConfig
from tests.s2_fixtures import pixels, write_s2_raster


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  task: segmentation\n  encoder: [resnet18\ntrainer:\n  max_epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, bad)
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message and "line 4" in message and "column" in message


def test_sweep_yaml_syntax_error_is_one_line(tmp_path):
    from landcover.training.sweep import load_sweep

    bad = tmp_path / "sweep.yaml"
    bad.write_text("grid:\n  optim.lr: [0.1, 0.01\n")
    with pytest.raises(ConfigError) as info:
        load_sweep(bad)
    assert "\n" not in str(info.value) and "line" in str(info.value)


def test_stack_tags_hold_no_literal_none(tmp_path):
    data = np.stack([pixels((64, 64), i) for i in range(4)])
    image = write_s2_raster(tmp_path / "in" / "stack.tif", data, descriptions=["B02", "B03", "B04", "B08"])
    dataset = ingest(
        [image], tmp_path / "ds", config=IngestConfig(tile_size=32, overviews=False, split={"by_scene": True})
    )
    with rasterio.open(tmp_path / "ds" / dataset.dataset["scenes"][0]["image"]) as src:
        tags = src.tags()
    assert tags["PROCESSING_BASELINE"] == "unknown"
    assert "None" not in tags.values()


def test_a_bad_set_value_is_blamed_on_set_not_on_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  max_epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, good, ["trainer.max_epochs=-1"])
    message = str(info.value)
    assert "--set trainer.max_epochs" in message and f"in {good}" not in message
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: -1\n")
    with pytest.raises(ConfigError, match=f"in {bad}"):
        load_config(TrainConfig, bad, ["trainer.patience=3"])
