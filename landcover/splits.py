"""Spatial splits that do not leak: tiles grouped into square blocks, blocks assigned to
train/val/test by a seeded hash of their position (the same whoever computes it, so shards agree),
and a buffer of tiles between blocks of different splits.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import pydantic
from rasterio.crs import CRS

from landcover.errors import ConfigError

SPLITS = ("train", "val", "test")


class SplitConfig(pydantic.BaseModel, extra="forbid", frozen=True):
    """How tiles are assigned to train/val/test (see the module docstring)."""

    block_size_m: float | None = None  # side of the square blocks (metres); None = AUTO_BLOCK_TILES tiles
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test: >= 0, sum 1
    seed: int = 0
    buffer_tiles: int = 1  # tiles this close to a block of another split are 'buffer' (>= 1)
    by_scene: bool = False  # True: whole scenes go to one split (hash of the scene id), no buffer
    min_valid_fraction: float = 0.5  # tiles with less cloud-free image are dropped

    @pydantic.model_validator(mode="after")
    def _check(self) -> SplitConfig:
        problems = []
        if self.block_size_m is not None and not (math.isfinite(self.block_size_m) and self.block_size_m > 0):
            problems.append(f"block_size_m must be a positive number of metres, got {self.block_size_m}")
        if any(not math.isfinite(f) or f < 0 for f in self.fractions) or not math.isclose(
            sum(self.fractions), 1.0, abs_tol=1e-6
        ):
            problems.append(
                f"fractions (train, val, test) must be >= 0 and sum to 1, got {list(self.fractions)} "
                "(for example 0.7, 0.15, 0.15)"
            )
        if self.buffer_tiles < 1:
            problems.append(f"buffer_tiles must be >= 1, got {self.buffer_tiles} (use by_scene "
                            "for splits without a buffer)")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            problems.append(f"min_valid_fraction must lie in [0, 1], got {self.min_valid_fraction}")
        if problems:
            raise ConfigError("invalid split settings: " + "; ".join(problems))
        return self

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SplitConfig:
        """Validate user settings, turning every problem into a :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'split'}: {e['msg']}"
                                for e in exc.errors())
            raise ConfigError(f"invalid split settings: {details}; known settings are "
                              f"{', '.join(cls.model_fields)}") from exc


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts`` (sha256; same on every machine)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _pick(u: float, fractions: Sequence[float]) -> str:
    cumulative = 0.0
    for name, share in zip(SPLITS, fractions, strict=True):
        cumulative += share
        if share > 0 and u < cumulative:
            return name
    return [name for name, share in zip(SPLITS, fractions, strict=True) if share > 0][-1]


@functools.lru_cache(maxsize=64)
def _crs_key(crs: str) -> str:
    """'epsg:32633', a CRS object's string, ... -> one canonical text ('EPSG:32633')."""
    try:
        return CRS.from_user_input(crs).to_string()
    except Exception as exc:
        raise ConfigError(f"cannot interpret CRS {crs!r}: {exc}; pass e.g. 'EPSG:32633'") from exc


def block_split(block_ix: int, block_iy: int, crs: str, cfg: SplitConfig) -> str:
    """Split of block (ix, iy) of the CRS: stable hash of (seed, CRS, ix, iy) mapped by fractions."""
    return _pick(_unit("block", cfg.seed, _crs_key(str(crs)), int(block_ix), int(block_iy)),
                 cfg.fractions)


def scene_split(scene_id: str, cfg: SplitConfig) -> str:
    """Split of a whole scene (``by_scene`` mode): stable hash of (seed, scene id)."""
    return _pick(_unit("scene", cfg.seed, scene_id), cfg.fractions)


AUTO_BLOCK_TILES = 8
"""Blocks are this many tiles wide unless block_size_m is set (about 20-30 % buffer tiles)."""


def block_size(cfg: SplitConfig, tile_size_m: float) -> float:
    """The block side in metres: ``block_size_m`` or :data:`AUTO_BLOCK_TILES` tiles."""
    return cfg.block_size_m if cfg.block_size_m is not None else AUTO_BLOCK_TILES * tile_size_m


def check_block_size(cfg: SplitConfig, tile_size_m: float) -> None:
    """Raise :class:`ConfigError` when no block could hold a tile that is not a buffer tile."""
    if not tile_size_m > 0:
        raise ConfigError(f"tile size must be positive, got {tile_size_m} m")
    smallest = (2 * cfg.buffer_tiles + 2) * tile_size_m
    if block_size(cfg, tile_size_m) < smallest:
        raise ConfigError(
            f"split block_size_m = {block_size(cfg, tile_size_m):g} m is too small for {tile_size_m:g} m tiles "
            f"with buffer_tiles = {cfg.buffer_tiles}: blocks under {smallest:g} m hold no tile outside "
            f"the buffer, so val/test would be (nearly) empty; set block_size_m to at least "
            f"{max(smallest, 10 * tile_size_m):g} (about 10 tiles or more keeps the buffer small), "
            "or use smaller tiles"
        )


def tile_split(bounds: tuple[float, float, float, float], crs: str, tile_size_m: float,
               cfg: SplitConfig, scene_id: str) -> tuple[str, bool]:
    """(split, is_buffer) of the tile with native ``bounds`` (xmin, ymin, xmax, ymax).

    The split is that of the block holding the tile centre. The tile is a buffer tile when any
    block touched by its bounds expanded by ``buffer_tiles * tile_size_m`` (every block boundary
    crossed, corners included) has another split. With ``by_scene`` the split comes from the
    scene id and there is no buffer.
    """
    if cfg.by_scene:
        return scene_split(scene_id, cfg), False
    check_block_size(cfg, tile_size_m)  # cheap; catches a block size that leaves val/test empty
    key = _crs_key(str(crs))
    xmin, ymin, xmax, ymax = bounds
    size = block_size(cfg, tile_size_m)
    split = block_split(math.floor((xmin + xmax) / 2 / size), math.floor((ymin + ymax) / 2 / size),
                        key, cfg)
    d = cfg.buffer_tiles * tile_size_m
    for ix in range(math.floor((xmin - d) / size), math.floor((xmax + d) / size) + 1):
        for iy in range(math.floor((ymin - d) / size), math.floor((ymax + d) / size) + 1):
            if block_split(ix, iy, key, cfg) != split:
                return split, True
    return split, False
