"""landcover: Sentinel-2 + CORINE Land Cover, from raw products to land-cover maps.

The functions a notebook calls, one per stage (imported on first use, so ``import landcover`` stays light)::

    import landcover
    dataset = landcover.ingest(["S2B_MSIL2A_...SAFE.zip"], "datasets/a", labels="clc2018.gpkg")  # IngestResult
    cfg = landcover.load_config(landcover.TrainConfig, "configs/tiny.yaml", ["data.dataset=datasets/a"])
    run = landcover.train(cfg, "runs/a")  # TrainResult: run.best_checkpoint, run.metrics["val/miou"]...
    landcover.predict_scene("runs/a/" + run.best_checkpoint, "S2B_MSIL2A_...SAFE.zip", "maps/a.tif")  # PredictResult
    landcover.evaluate_maps("maps/a.tif", "clc2018.gpkg", "maps/a_report").miou  # EvaluationResult
    landcover.get_nomenclature("level2").encode(codes)   # a Nomenclature: CORINE codes -> class ids
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from landcover.offline import guard_network  # LANDCOVER_OFFLINE=1: no network (offline.py)
from landcover.version import __version__

guard_network()

_PUBLIC = {  # name -> (module, attribute)
    "ingest": ("landcover.dataset.ingest", "ingest"),
    "IngestResult": ("landcover.dataset.ingest", "IngestResult"),
    "IngestConfig": ("landcover.dataset.settings", "IngestConfig"),
    "load_config": ("landcover.config", "load_config"),
    "TrainConfig": ("landcover.training.train", "TrainConfig"),
    "train": ("landcover.training.train", "train"),
    "TrainResult": ("landcover.training.results", "TrainResult"),
    "predict_scene": ("landcover.inference.predict", "predict_scene"),
    "PredictResult": ("landcover.inference.predict", "PredictResult"),
    "evaluate_maps": ("landcover.evaluation.evaluate", "evaluate_maps"),
    "EvaluationResult": ("landcover.evaluation.evaluate", "EvaluationResult"),
    "Nomenclature": ("landcover.nomenclature", "Nomenclature"),
    "get_nomenclature": ("landcover.nomenclature", "nomenclature"),
    "LandcoverError": ("landcover.errors", "LandcoverError"),
}
__all__ = [
    "EvaluationResult",
    "IngestConfig",
    "IngestResult",
    "LandcoverError",
    "Nomenclature",
    "PredictResult",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "evaluate_maps",
    "get_nomenclature",
    "ingest",
    "load_config",
    "predict_scene",
    "train",
]

if TYPE_CHECKING:
    from landcover.config import load_config
    from landcover.dataset.ingest import IngestResult, ingest
    from landcover.dataset.settings import IngestConfig
    from landcover.errors import LandcoverError
    from landcover.evaluation.evaluate import EvaluationResult, evaluate_maps
    from landcover.inference.predict import PredictResult, predict_scene
    from landcover.nomenclature import Nomenclature
    from landcover.nomenclature import nomenclature as get_nomenclature
    from landcover.training.results import TrainResult
    from landcover.training.train import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'landcover' has no attribute {name!r}")
