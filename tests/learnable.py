"""A synthetic, *learnable* ingested dataset: distinct spectra and blob shapes per class.

:func:`make_learnable_dataset` writes a multi-band GeoTIFF scene (EPSG:32633) and a CORINE code raster
of the same regions, then runs the real ``landcover ingest`` on them, so training tests see exactly what
users' datasets look like. Classes are CORINE level 1 (codes 111, 211, 311, 411, 512 -> ids 0..4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from landcover.dataset.ingest import ingest
from landcover.dataset.settings import IngestConfig
from tests.conftest import write_raster

CODES = (111, 211, 311, 411, 512)
BANDS = ("B02", "B03", "B04", "B08")


def _blobs(size: int, n_classes: int, rng: np.random.Generator, cell: int = 8) -> np.ndarray:
    """Class regions: argmax of smooth random fields (blocky blobs of several pixels)."""
    coarse = rng.random((n_classes, size // cell + 2, size // cell + 2))
    fields = coarse.repeat(cell, axis=1).repeat(cell, axis=2)[:, :size, :size]
    # a cheap box blur makes the region boundaries irregular but keeps blobs contiguous
    kernel = cell // 2
    for axis in (1, 2):
        fields = sum(np.roll(fields, s, axis=axis) for s in range(-kernel, kernel + 1))
    return fields.argmax(axis=0)


def make_learnable_scene(
    folder: Path, size: int = 256, seed: int = 0, x0: float = 500_000.0, noise: float = 150.0
) -> tuple[Path, Path]:
    """(image.tif, labels.tif): 4 bands whose spectrum depends on the class, and CLC codes."""
    rng = np.random.default_rng(seed)
    classes = _blobs(size, len(CODES), rng)
    spectra = np.array(
        [  # B02 B03 B04 B08 reflectance x 10000, one row per class
            [1200, 1100, 1300, 2000],  # artificial
            [600, 900, 700, 3500],  # agriculture
            [300, 500, 300, 2800],  # forest
            [500, 700, 600, 1200],  # wetland
            [400, 300, 200, 100],  # water
        ],
        dtype=np.float64,
    )
    image = spectra[classes].transpose(2, 0, 1) + rng.normal(0, noise, (len(BANDS), size, size))
    image = np.clip(image, 1, 10000).astype(np.uint16)
    transform = from_origin(x0, 5_300_000, 10, 10)
    folder.mkdir(parents=True, exist_ok=True)
    img = write_raster(folder / f"scene_{seed}.tif", image, "EPSG:32633", transform)
    import rasterio

    with rasterio.open(img, "r+") as dst:
        for i, band in enumerate(BANDS, 1):
            dst.set_band_description(i, band)
    labels = write_raster(folder / f"clc_{seed}.tif", np.array(CODES, np.uint16)[classes], "EPSG:32633", transform)
    return img, labels


def make_learnable_dataset(
    root: Path, size: int = 768, tile_size: int = 32, seed: int = 0, split: dict | None = None
) -> Path:
    """Ingest one learnable scene into ``root/dataset`` (level 1, tiles of ``tile_size``) and return it;
    ``split`` replaces the split settings (blocks of 6 tiles, fractions 0.6/0.2/0.2)."""
    image, labels = make_learnable_scene(root / "raw", size=size, seed=seed)
    config = IngestConfig(
        nomenclature="level1",
        tile_size=tile_size,
        overviews=False,
        split=split or {"block_size_m": tile_size * 10 * 6, "seed": seed, "fractions": (0.6, 0.2, 0.2)},
    )
    ingest([image], root / "dataset", labels=labels, config=config)
    return root / "dataset"


def write_unet_checkpoint(
    path: Path, bands: list[str] | None = None, tile: int = 64, mean: float = 800.0, std: float = 700.0
) -> Path:
    """A U-Net/ResNet-18 with seeded random weights (CORINE level 1), saved as `landcover train` saves it."""
    import torch

    from landcover.models.build import build_model
    from landcover.models.config import ModelConfig
    from landcover.nomenclature import nomenclature

    bands = list(bands or BANDS)
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(), bands, 5, load_weights=False)
    meta = {
        "format": "landcover-checkpoint/1",
        "task": "segmentation",
        "bands": bands,
        "tile_size": tile,
        "nomenclature": nomenclature("level1").to_dict(),
        "resolution": 10.0,
        "label_mode": "single",
        "normalization": {"mean": [mean] * len(bands), "std": [std] * len(bands)},
        "model": ModelConfig().model_dump(mode="json"),
    }
    torch.save({"landcover": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path
