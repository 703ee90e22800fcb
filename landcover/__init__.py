"""landcover: Sentinel-2 + CORINE Land Cover, from raw products to land-cover maps.

The functions a notebook calls, one per stage (imported on first use, so ``import landcover`` stays light)::

    import landcover
    landcover.ingest(["S2B_MSIL2A_...SAFE.zip"], "datasets/a", labels="clc2018.gpkg")
    cfg = landcover.load_config(landcover.TrainConfig, "configs/tiny.yaml", ["data.dataset=datasets/a"])
    landcover.train(cfg, "runs/a")
    landcover.predict_scene("runs/a/checkpoints/best.ckpt", "S2B_MSIL2A_...SAFE.zip", "maps/a.tif")
    landcover.evaluate_maps("maps/a.tif", "clc2018.gpkg", "maps/a_report")
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
    "IngestConfig": ("landcover.dataset.settings", "IngestConfig"),
    "load_config": ("landcover.config", "load_config"),
    "TrainConfig": ("landcover.training.train", "TrainConfig"),
    "train": ("landcover.training.train", "train"),
    "predict_scene": ("landcover.inference.predict", "predict_scene"),
    "evaluate_maps": ("landcover.evaluation.evaluate", "evaluate_maps"),
    "Nomenclature": ("landcover.nomenclature", "Nomenclature"),
    "get_nomenclature": ("landcover.nomenclature", "nomenclature"),
    "LandcoverError": ("landcover.errors", "LandcoverError"),
}
__all__ = [
    "IngestConfig",
    "LandcoverError",
    "Nomenclature",
    "TrainConfig",
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
    from landcover.dataset.ingest import ingest
    from landcover.dataset.settings import IngestConfig
    from landcover.errors import LandcoverError
    from landcover.evaluation.evaluate import evaluate_maps
    from landcover.inference.predict import predict_scene
    from landcover.nomenclature import Nomenclature
    from landcover.nomenclature import nomenclature as get_nomenclature
    from landcover.training.train import TrainConfig, train


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'landcover' has no attribute {name!r}")
