"""Cloud masks where a product has no scene classification (L1C), computed window by window.

The supported detector is ``s2cloudless`` (Sentinel Hub's pixel-based LightGBM cloud detector; the model ships in
its wheel, it runs offline; docs/clouds.md tells why it was chosen and what it costs). It is called exactly as its
documentation says: the 10 bands B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12 of an L1C product as top-of-
atmosphere reflectance ``value / 10000`` (harmonised: the baseline 04.00 offset applied), all on one grid (ours:
the reader's grid, coarser bands resampled by the reader), giving a per-pixel cloud probability; its mask is that
probability averaged over a disk (``average_over``), compared with the threshold (``>``) and dilated by a disk
(``dilation_size``). The disk sizes follow the package's recommendations (22/11 pixels at 10 m, 4/2 at 60 m): 220 m
and 110 m on the reader's grid. With ``resolution_m`` (e.g. 60) the detector runs on block means of the grid's
pixels (its 60 m parameters: about 18x faster on a 10 m grid) and each pixel takes its block's values.

A mask strip depends on the probabilities of the rows around it, so a window is read grown by a halo of
``average_over + dilation_size + dilation`` pixels (out to whole blocks; clipped to the grid, where the detector
then sees the same border as on the whole scene) and cropped: masks computed strip by strip equal the mask of
the whole scene.
``dilation_m`` grows every cloud mask (SCL classes, a product's cloud mask, the detector's) by a disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rasterio.windows import Window

from landcover.errors import ConfigError, MissingBandError
from landcover.io.grid import Grid
from landcover.sources.product import Product

DETECTOR = "s2cloudless"
DETECTOR_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
PROBABILITY_ROWS = 128  # rows of a window given to the detector at once (its float64 copy of 10 bands: ~100 MB)


class CloudConfig(BaseModel):
    """How clouds are masked (``clouds:`` of the ingest settings; predict uses the checkpoint's)."""

    model_config = ConfigDict(extra="forbid")
    detector: Literal["none", "auto", "s2cloudless"] = Field(
        "none",
        description="none: only a product's SCL/cloud mask; auto: run s2cloudless on products without an SCL or "
        "cloud mask that have its bands (L1C); s2cloudless: run it on every product (they must be L1C)",
    )
    threshold: float = Field(
        0.4, gt=0, lt=1, description="Cloud where the averaged probability is above this (s2cloudless default 0.4)"
    )
    dilation_m: float = Field(0.0, ge=0, description="Grow every cloud mask (SCL too) by a disk of this radius (m)")
    resolution_m: float | None = Field(
        None,
        gt=0,
        description="Run the detector on blocks of this size (a multiple of the grid's resolution; e.g. 60: "
        "36x fewer pixels at 10 m, the package's recommended 60 m parameters); null: on the grid's pixels",
    )
    write_probability: bool = Field(
        False, description="Ingest writes scenes/<id>/cloud_probability.tif (uint8 percent) where the detector runs"
    )

    @model_validator(mode="after")
    def _probability_needs_detector(self) -> CloudConfig:
        if self.write_probability and self.detector == "none":
            raise ValueError("write_probability needs a detector: set clouds.detector to auto or s2cloudless")
        return self


class S2CloudlessDetector:
    """s2cloudless on windows of harmonised reflectance x 10000 (uint16) of :data:`DETECTOR_BANDS`."""

    name = DETECTOR
    bands = DETECTOR_BANDS

    def __init__(self, threshold: float, resolution: float, block: int = 1):
        from s2cloudless import S2PixelCloudDetector

        self.threshold = threshold
        self.block = block  # grid pixels per side of the detector's pixels
        self.average_over = max(1, round(220.0 / (resolution * block)))
        self.dilation_size = max(1, round(110.0 / (resolution * block)))
        self.version = version("s2cloudless")
        self._detector = S2PixelCloudDetector(
            threshold=threshold, all_bands=False, average_over=self.average_over, dilation_size=self.dilation_size
        )

    @property
    def halo(self) -> int:
        """Grid pixels on each side that a mask pixel depends on (whole blocks)."""
        return (self.average_over + self.dilation_size) * self.block

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability, mask) of ``image`` (10, H, W) on its grid pixels. With blocks, the window must start on
        a block corner (of the grid's block lattice): blocks are averaged (:func:`block_mean`), the detector
        runs on them, and every pixel of a block gets the block's values."""
        if self.block == 1:
            probability = self.probability(image)
            return probability, self.mask(probability)
        probability = self.probability(block_mean(image, self.block))
        mask = self.mask(probability)
        rows, cols = image.shape[1:]
        return expand(probability, self.block, rows, cols), expand(mask, self.block, rows, cols)

    def probability(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float32 cloud probability in 0..1 of ``image`` (10, H, W): pixel by pixel, in row chunks."""
        out = np.empty(image.shape[1:], np.float32)
        for r in range(0, image.shape[1], PROBABILITY_ROWS):
            rows = image[:, r : r + PROBABILITY_ROWS]
            data = (np.moveaxis(rows, 0, -1) / 10000.0)[np.newaxis].astype(np.float32)
            out[r : r + rows.shape[1]] = self._detector.get_cloud_probability_maps(data)[0]
        return out

    def mask(self, probability: np.ndarray) -> np.ndarray:
        """(H, W) bool: the detector's own post-processing (disk average, threshold, disk dilation)."""
        return np.asarray(self._detector.get_mask_from_prob(probability[np.newaxis])[0], dtype=bool)

    def provenance(self) -> dict[str, object]:
        return {
            "detector": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "average_over_px": self.average_over,
            "dilation_size_px": self.dilation_size,
            "block_px": self.block,
        }


def detector_applies(product: Product, config: CloudConfig) -> bool:
    """Whether the detector runs on ``product``: always with ``s2cloudless`` (its bands must be there; a
    :class:`MissingBandError` says so), with ``auto`` on products without an SCL or cloud mask that have its bands."""
    if config.detector == "none":
        return False
    missing = [b for b in DETECTOR_BANDS if b not in product.bands]
    if config.detector == "auto":
        return product.scl is None and product.cloud_mask is None and not missing
    if missing:
        raise MissingBandError(
            f"{product.path} lacks band(s) {','.join(missing)} that the s2cloudless cloud detector needs (it runs "
            "on L1C products, whose 13 bands include B10); set clouds.detector to auto (only products without an "
            "SCL) or none"
        )
    return True


def bands_to_read(product: Product, bands: list[str], config: CloudConfig | None) -> list[str]:
    """``bands`` plus the detector's bands they lack, when the detector runs on ``product``."""
    if config is None or not detector_applies(product, config):
        return list(bands)
    return [*bands, *(b for b in DETECTOR_BANDS if b not in bands)]


@dataclass
class CloudWindow:
    """The clouds of a window: the mask (None without any) and the detector's probability (None without it)."""

    cloud: np.ndarray | None
    probability: np.ndarray | None


class CloudMasker:
    """A reader's cloud masking: which extra bands it reads, the halo of rows, and the mask of a grown window."""

    def __init__(self, product: Product, bands: list[str], config: CloudConfig, resolution: float):
        self.config = config
        runs = detector_applies(product, config)
        self.block = detector_block(config, resolution) if runs else 1
        self.detector = S2CloudlessDetector(config.threshold, resolution, self.block) if runs else None
        self.extra_bands = [b for b in DETECTOR_BANDS if b not in bands] if runs else []
        everything = [*bands, *self.extra_bands]
        self.band_index = [everything.index(b) for b in DETECTOR_BANDS] if runs else []
        self.dilation_px = round(config.dilation_m / resolution)
        self.halo = self.dilation_px + (self.detector.halo if self.detector else 0)
        self.skipped = config.detector == "auto" and not runs

    @property
    def active(self) -> bool:
        return self.halo > 0

    def grow(self, window: Window, grid: Grid) -> Window:
        """``window`` grown by the halo on every side, out to the detector's block corners, clipped to ``grid``."""
        b = self.block
        c0 = max(0, (int(window.col_off) - self.halo) // b * b)
        r0 = max(0, (int(window.row_off) - self.halo) // b * b)
        c1 = min(grid.width, -(-(int(window.col_off) + int(window.width) + self.halo) // b) * b)
        r1 = min(grid.height, -(-(int(window.row_off) + int(window.height) + self.halo) // b) * b)
        return Window(c0, r0, c1 - c0, r1 - r0)

    def compute(self, image: np.ndarray, cloud: np.ndarray | None) -> CloudWindow:
        """The clouds of a grown window: ``image`` holds every band read (dataset's, then the extra ones),
        ``cloud`` the product's own mask (SCL classes) or None."""
        probability = None
        if self.detector is not None:
            probability, detected = self.detector.run(image[self.band_index])
            cloud = detected if cloud is None else cloud | detected
        if cloud is not None and self.dilation_px:
            cloud = dilate(cloud, self.dilation_px)
        return CloudWindow(cloud, probability)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config.model_dump(mode="json"), "dilation_px": self.dilation_px}
        if self.detector is not None:
            out.update(self.detector.provenance())
        elif self.skipped:
            out["detector"] = None
            out["note"] = "auto: the product has an SCL/cloud mask or lacks the detector's bands; detector not run"
        return out


def detector_block(config: CloudConfig, resolution: float) -> int:
    """Grid pixels per side of the detector's pixels (``resolution_m`` / the grid's resolution)."""
    if config.resolution_m is None:
        return 1
    block = round(config.resolution_m / resolution)
    if block < 1 or abs(block * resolution - config.resolution_m) > 1e-6:
        raise ConfigError(
            f"clouds.resolution_m ({config.resolution_m:g}) must be a multiple of the grid's resolution "
            f"({resolution:g} m), e.g. {6 * resolution:g}; or null to run the detector on the grid's pixels"
        )
    return block


def block_mean(image: np.ndarray, block: int) -> np.ndarray:
    """(C, ceil(H / block), ceil(W / block)) uint16: the rounded mean of each block's pixels that have data in
    every band (0 where none has); blocks cut by the window's bottom/right edge average the pixels they have."""
    c, h, w = image.shape
    hb, wb = -(-h // block), -(-w // block)
    padded = np.zeros((c, hb * block, wb * block), image.dtype)
    padded[:, :h, :w] = image
    valid = padded.all(axis=0)
    sums = (padded * valid).reshape(c, hb, block, wb, block).sum(axis=(2, 4), dtype=np.float64)
    counts = valid.reshape(hb, block, wb, block).sum(axis=(1, 3))
    return np.where(counts > 0, np.rint(sums / np.maximum(counts, 1)), 0).astype(np.uint16)


def expand(blocks: np.ndarray, block: int, rows: int, cols: int) -> np.ndarray:
    """Every block's value on its ``block`` x ``block`` pixels, cut to ``rows`` x ``cols``."""
    return np.ascontiguousarray(np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:rows, :cols])


def disk(radius: int) -> np.ndarray:
    """A disk of ``radius`` pixels as a uint8 structuring element."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius, dtype=np.uint8)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by a disk of ``radius`` pixels (pixels beyond the array count as clear)."""
    import cv2

    return np.asarray(cv2.dilate(mask.astype(np.uint8), disk(radius)), dtype=bool)


def crop(array: np.ndarray, grown: Window, window: Window) -> np.ndarray:
    """The part of ``array`` (the last two axes over ``grown``) over ``window``, as its own contiguous array."""
    r, c = int(window.row_off) - int(grown.row_off), int(window.col_off) - int(grown.col_off)
    return np.ascontiguousarray(array[..., r : r + int(window.height), c : c + int(window.width)])
