"""The typed results of ingest, train, predict_scene and evaluate_maps: ``to_dict()`` keeps the keys (and their
order) of the dicts these functions returned before, which are the files on disk; ``to_json()`` round-trips."""

from __future__ import annotations

import json

from landcover.dataset.ingest import IngestResult
from landcover.inference.predict import PredictResult
from landcover.training.results import TrainResult

SCORES = {
    "split": "val",
    "val/loss": 0.5,
    "val/miou": 0.75,
    "confusion_matrix": [[3, 1], [0, 4]],
    "per_class_iou": {"a": 0.75, "b": 0.8},
}


def test_train_result_is_metrics_json_scores_then_facts():
    result = TrainResult(
        best_checkpoint="checkpoints/best.ckpt",
        best_epoch=3,
        stopped_epoch=5,
        early_stopped=True,
        parameters=1234,
        monitor="val/miou",
        train_seconds=12.5,
        world_size=1,
        train_samples_per_second=40.0,
        metrics=dict(SCORES),
    )
    assert list(result.to_dict()) == [
        *SCORES,
        "best_checkpoint",
        "best_epoch",
        "stopped_epoch",
        "early_stopped",
        "parameters",
        "monitor",
        "train_seconds",
        "world_size",
        "train_samples_per_second",
    ]
    assert json.loads(result.to_json()) == result.to_dict() and result.to_json().endswith("}\n")
    assert result.best_score == 0.75


def test_predict_result_keeps_the_summary_keys_and_a_skipped_scene_says_only_what_it_knows():
    done = PredictResult(
        input="s.tif",
        out={"map": "m.tif", "qml": "m.qml"},
        grid={"width": 2, "height": 3},
        product_id="P",
        tile=64,
        overlap=16,
        device="cpu",
        windows_run=4,
        windows_skipped=1,
        seconds=0.5,
        valid_fraction=0.9,
        processing_level={"checkpoint": "L2A", "scene": "L2A"},
        warnings=["w"],
    )
    assert list(done.to_dict()) == [
        "input",
        "out",
        "grid",
        "product_id",
        "tile",
        "overlap",
        "device",
        "engine",
        "precision",
        "windows_run",
        "windows_skipped",
        "seconds",
        "valid_fraction",
        "processing_level",
        "warnings",
        "skipped",
        "outside_aoi",
    ]
    assert json.loads(done.to_json()) == done.to_dict()
    skipped = PredictResult(input="s.tif", out={"map": "m.tif"}, skipped=True)
    assert json.loads(skipped.to_json()) == {
        "input": "s.tif",
        "out": {"map": "m.tif"},
        "skipped": True,
        "outside_aoi": False,
    }


def test_ingest_result_of_a_shard():
    shard = IngestResult(finalized=False, scenes=["A"], total_scenes=3, shard=(0, 2))
    assert json.loads(shard.to_json()) == {"shard": [0, 2], "scenes": ["A"], "total_scenes": 3, "finalized": False}
