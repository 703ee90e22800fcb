"""Training of the per-pixel LightGBM baseline (``model.arch: lightgbm``), with the run layout of a CNN.

Training pixels are drawn from the train tiles (each labelled pixel of class c kept with probability
``pixels_per_class / pixels of c``, so at most about that many per class, seeded), weighted so every class
counts equally, and boosted with early stopping on pixels drawn the same way from the val tiles. Features
are computed on each tile grown by the recipe's halo (reflected at the scene's edges, as predict pads a
scene), so a training pixel sees the context a predicted pixel sees. The best round is scored on every
labelled pixel of the val and test tiles the CNN is scored on (the same centred windows), with the same
score function, and saved as ``checkpoints/best.ckpt``: a torch file with the CNN's ``landcover`` section
and the booster as text. No Lightning.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from landcover.evaluation.confusion import scores_from_confusion
from landcover.io.grid import GDAL_ENV, read_reflected
from landcover.io.outputs import atomic_output
from landcover.models.config import CHECKPOINT_FORMAT, LightGBMConfig
from landcover.models.pixel_baseline import baseline_from_checkpoint, lightgbm_params
from landcover.models.pixel_features import REFLECTANCE_SCALE, compute_features
from landcover.nomenclature import IGNORE
from landcover.training.tiles import TileDataset

if TYPE_CHECKING:
    import geopandas as gpd

    from landcover.training.config import TrainConfig
    from landcover.training.datamodule import LandcoverDataModule


def tile_pixels(
    data: LandcoverDataModule, tiles: gpd.GeoDataFrame, cfg: LightGBMConfig
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(tile id, (F, H, W) features, (H, W) labels with IGNORE where unlabelled or no data) of every tile,
    on the centred window the CNN is evaluated on."""
    windows = TileDataset(
        data.dataset_dir,
        tiles,
        mean=np.zeros(len(data.bands)),
        std=np.ones(len(data.bands)),
        crop_size=data.eval_size,
        num_classes=data.num_classes,
    )
    halo, handles = cfg.features.halo, {}  # scene id -> (image, labels, band indexes)
    try:
        with rasterio.Env(**GDAL_ENV):
            for i, t in enumerate(tiles.itertuples(index=False)):
                scene = data.dataset_dir / "scenes" / str(t.scene_id)
                if t.scene_id not in handles:  # each scene's files and band order, once
                    image = rasterio.open(scene / "image.tif")
                    names = [d or "" for d in image.descriptions]
                    indexes = [names.index(b) + 1 for b in data.bands]
                    handles[t.scene_id] = (image, rasterio.open(scene / "labels.tif"), indexes)
                image_ds, labels_ds, indexes = handles[t.scene_id]
                window = windows.window(i)
                raw = read_reflected(image_ds, window, halo, indexes)
                valid = np.asarray(raw.any(axis=0), dtype=bool)
                feats = compute_features(raw.astype(np.float32) / REFLECTANCE_SCALE, valid, data.bands, cfg.features)
                inner = (slice(halo, halo + int(window.height)), slice(halo, halo + int(window.width)))
                labels = labels_ds.read(1, window=window).astype(np.int64)
                labels[~valid[inner]] = IGNORE
                yield str(t.tile_id), feats[:, inner[0], inner[1]], labels
    finally:
        for image_ds, labels_ds, _ in handles.values():
            image_ds.close()
            labels_ds.close()


def sample_pixels(
    data: LandcoverDataModule, tiles: gpd.GeoDataFrame, cfg: LightGBMConfig, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features and (N,) labels of labelled pixels drawn from ``tiles``, about ``per_class`` per class."""
    k = data.num_classes
    counts = np.array([np.asarray(c, np.float64) for c in tiles["class_counts"]]).reshape(len(tiles), k).sum(0)
    keep = np.minimum(1.0, per_class / np.maximum(counts, 1.0))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _, feats, labels in tile_pixels(data, tiles, cfg):
        labelled = labels != IGNORE
        y = labels[labelled]
        chosen = rng.random(y.size) < keep[np.minimum(y, k - 1)]
        xs.append(feats[:, labelled][:, chosen].T)
        ys.append(y[chosen])
    if not xs or not sum(len(y) for y in ys):
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def balanced_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Sample weights giving every present class the same total weight (mean weight 1)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = y.size / (present.sum() * counts[present])
    return per_class[y]


def split_confusion(booster: Any, data: LandcoverDataModule, tiles: gpd.GeoDataFrame, cfg: LightGBMConfig) -> tuple:
    """The (K, K) confusion matrix of every labelled pixel of ``tiles`` and the per-tile (3, K) counts
    (true positives, reference, prediction), in tile order."""
    k = data.num_classes
    matrix = np.zeros(k * k, np.int64)
    ids, per_tile = [], []
    for tile_id, feats, labels in tile_pixels(data, tiles, cfg):
        labelled = labels != IGNORE
        ref = labels[labelled]
        pred = booster.predict(feats[:, labelled].T).argmax(axis=1) if ref.size else np.zeros(0, np.int64)
        matrix += np.bincount(ref * k + pred, minlength=k * k)
        ids.append(tile_id)
        per_tile.append(
            np.stack(
                [
                    np.bincount(ref[ref == pred], minlength=k),
                    np.bincount(ref, minlength=k),
                    np.bincount(pred, minlength=k),
                ]
            )
        )
    return matrix.reshape(k, k), ids, np.array(per_tile, np.int64).reshape(-1, 3, k)


def stage_scores(stage: str, matrix: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The metrics a CNN's task logs for a stage, from the same score function."""
    scores = scores_from_confusion(matrix, class_names=class_names)
    out: dict[str, Any] = {
        f"{stage}/miou": float(scores["miou"] or 0.0),
        f"{stage}/iou_micro": float(scores["iou_micro"] or 0.0),
        f"{stage}/accuracy": float(scores["overall_accuracy"] or 0.0),
    }
    out.update({f"{stage}/iou/{r['name']}": r["iou"] for r in scores["per_class"] if r["iou"] is not None})
    return out


def fit_baseline(cfg: TrainConfig, out: Path, data: LandcoverDataModule, meta: dict[str, Any]) -> dict[str, Any]:
    """Fit the baseline of ``cfg`` on ``data``; write ``out/checkpoints/best.ckpt``; return its metrics."""
    import lightgbm
    import torch

    lcfg, seed, k = cfg.model.lightgbm or LightGBMConfig(), cfg.trainer.seed, data.num_classes
    started = time.perf_counter()
    x, y = sample_pixels(data, data.split_tiles("train"), lcfg, lcfg.pixels_per_class, seed)
    xv, yv = sample_pixels(data, data.split_tiles("val"), lcfg, lcfg.validation_pixels_per_class, seed + 1)
    names = lcfg.features.feature_names(data.bands)
    train_set = lightgbm.Dataset(x, y, weight=balanced_weights(y, k), feature_name=names, free_raw_data=True)
    valid_set = lightgbm.Dataset(xv, yv, weight=balanced_weights(yv, k), reference=train_set)
    booster = lightgbm.train(
        lightgbm_params(lcfg, k, seed),
        train_set,
        num_boost_round=lcfg.n_estimators,
        valid_sets=[valid_set],
        callbacks=[lightgbm.early_stopping(lcfg.early_stopping_rounds, verbose=False)],
    )
    fit_seconds = time.perf_counter() - started
    text = booster.model_to_string(num_iteration=booster.best_iteration)
    booster = lightgbm.Booster(model_str=text)  # exactly what the checkpoint holds
    checkpoint = {
        "landcover": {
            "format": CHECKPOINT_FORMAT,
            "task": "segmentation",
            **meta,
            "bands": list(data.bands),
            "class_names": list(data.class_names),
            "model": cfg.model.model_dump(mode="json"),
            "weights": None,
            "monitor": "val/miou",
        },
        "state_dict": {},
        "lightgbm": text,
        "epoch": int(booster.current_iteration()),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_output(out / "checkpoints" / "best.ckpt", overwrite=True, needed=buffer.getbuffer().nbytes) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    metrics = evaluate_baseline(checkpoint, data, "val", counts_path=out / "val_counts.npz")
    metrics.update(
        {
            "best_checkpoint": "checkpoints/best.ckpt",
            "best_epoch": int(booster.current_iteration()),  # boosting rounds kept
            "stopped_epoch": int(booster.current_iteration()),
            "early_stopped": int(booster.current_iteration()) < lcfg.n_estimators,
            "parameters": int(sum(t["num_leaves"] for t in booster.dump_model()["tree_info"])),  # leaves
            "monitor": "val/miou",
            "train_seconds": round(fit_seconds, 2),
            "world_size": 1,
            "train_samples_per_second": round(len(y) / max(fit_seconds, 1e-9), 2),
            "train_pixels": len(y),
            "val_pixels_sampled": len(yv),
        }
    )
    return metrics


def evaluate_baseline(
    checkpoint: dict[str, Any], data: LandcoverDataModule, split: str, counts_path: str | Path | None = None
) -> dict[str, Any]:
    """A baseline checkpoint's scores on every labelled pixel of a split's tiles (the pixels a CNN is scored on),
    named like a CNN's (``val/miou``...), with the split's confusion matrix, per-class IoU and block-bootstrap
    intervals (per-tile counts saved to ``counts_path`` for paired comparisons with a CNN)."""
    from landcover.training.tile_counts import counts_intervals

    meta = checkpoint["landcover"]
    model = baseline_from_checkpoint(str(checkpoint["lightgbm"]), meta)
    lcfg = LightGBMConfig.model_validate((meta["model"] or {}).get("lightgbm") or {})
    tiles = data.split_tiles(split)  # an empty split is an error, as for a CNN
    matrix, ids, counts = split_confusion(model.booster, data, tiles, lcfg)
    scores = scores_from_confusion(matrix, class_names=data.class_names)
    scheme = data.info.get("split_scheme") or {}
    return {
        "split": split,
        **stage_scores(split, matrix, data.class_names),
        "confusion_matrix": matrix.tolist(),
        "per_class_iou": {r["name"]: r["iou"] for r in scores["per_class"]},
        f"{split}/miou_reference": scores["miou_reference"],
        f"{split}/intervals": counts_intervals(ids, counts, tiles, scheme, data.class_names, counts_path),
    }
