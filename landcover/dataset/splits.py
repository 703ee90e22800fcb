"""Spatial splits that do not leak, whatever the scenes' CRSs.

Blocks are squares of ``block_size_m`` on **one grid shared by every scene**: the axes of
``grid_crs`` (default EPSG:3035, the ETRS89 Lambert azimuthal equal-area grid of the EEA reference
grid and of the CORINE raster product), origin (0, 0). Each block is assigned to train/val/test by
a seeded hash of (seed, grid CRS, column, row), so the assignment is the same whoever computes it
(scenes, shards, later re-splits). A tile takes the split of the block holding its footprint
centre; it is a *buffer* tile when its footprint, grown by ``buffer_tiles`` tiles in its own CRS,
touches a block of another split (tested geometrically in the grid CRS). Tiles of neighbouring
UTM zones, overlapping products and other dates of the same ground therefore never put the same
ground, or ground closer than the buffer, in two splits.

Spatial k-fold cross-validation (``folds: K``, ``fold: k``): the same hash puts every block (or scene) in
one of K equal groups; fold k tests on group k, validates on group k + 1 and trains on the rest, so over
k = 0..K-1 every block is tested exactly once. Re-splitting an ingested dataset for another fold re-reads
no imagery.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydantic
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError
from rasterio.crs import CRS

from landcover.errors import ConfigError, DatasetError

SCHEME_VERSION = "landcover-splits/2"
"""Version of the split scheme recorded in dataset.json (1: per-CRS blocks, which leaked)."""
DEFAULT_GRID_CRS = "EPSG:3035"
DENSIFY = 8
"""Points per edge of a grown tile footprint transformed into the grid CRS."""

SPLITS = ("train", "val", "test")


class SplitConfig(pydantic.BaseModel, extra="forbid", frozen=True):
    """How tiles are assigned to train/val/test (see the module docstring)."""

    block_size_m: float | None = None  # side of the square blocks (metres); None = AUTO_BLOCK_TILES tiles
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test: >= 0, sum 1
    seed: int = 0
    buffer_tiles: int = 1  # tiles this close to a block of another split are 'buffer' (>= 1)
    by_scene: bool = False  # True: whole scenes go to one split (hash of the scene id), no buffer
    min_valid_fraction: float = 0.5  # tiles with less cloud-free image are dropped
    grid_crs: str = DEFAULT_GRID_CRS  # the block grid shared by all scenes: a projected CRS in metres
    folds: int | None = None  # spatial k-fold: blocks (or scenes) fall in `folds` equal groups by their hash ...
    fold: int = 0  # ... group `fold` is test, group `fold + 1` val, the others train (fractions are not used)

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
            problems.append(
                f"buffer_tiles must be >= 1, got {self.buffer_tiles} (use by_scene for splits without a buffer)"
            )
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            problems.append(f"min_valid_fraction must lie in [0, 1], got {self.min_valid_fraction}")
        if self.folds is not None and (self.folds < 3 or not 0 <= self.fold < self.folds):
            problems.append(
                f"folds must be >= 3 (test, val and train groups) and fold in 0..folds-1, got folds={self.folds}, "
                f"fold={self.fold}"
            )
        grid_problem = _grid_crs_problem(self.grid_crs)
        if grid_problem:
            problems.append(grid_problem)
        if problems:
            raise ConfigError("invalid split settings: " + "; ".join(problems))
        return self

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SplitConfig:
        """Validate user settings, turning every problem into a :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except pydantic.ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'split'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"invalid split settings: {details}; known settings are {', '.join(cls.model_fields)}"
            ) from exc


def _grid_crs_problem(text: str) -> str | None:
    """Why ``text`` cannot be the block grid (None when it can: a projected CRS in metres)."""
    try:
        crs = ProjCRS.from_user_input(text)
    except CRSError:
        return f"grid_crs {text!r} is not a CRS; use e.g. 'EPSG:3035' (Europe) or 'EPSG:6933' (global)"
    units = {axis.unit_name for axis in crs.axis_info}
    if not crs.is_projected or units != {"metre"}:
        return (
            f"grid_crs {text!r} is not a projected CRS in metres; use an equal-area grid such as "
            "'EPSG:3035' (Europe) or 'EPSG:6933' (global)"
        )
    return None


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts`` (sha256; same on every machine)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _assign(u: float, cfg: SplitConfig) -> str:
    """The split of a block or scene with hash ``u``: by fractions, or by its fold group (k-fold)."""
    if cfg.folds is None:
        return _pick(u, cfg.fractions)
    group = int(u * cfg.folds)
    return "test" if group == cfg.fold else "val" if group == (cfg.fold + 1) % cfg.folds else "train"


def _pick(u: float, fractions: Sequence[float]) -> str:
    cumulative = 0.0
    for name, share in zip(SPLITS, fractions, strict=True):
        cumulative += share
        if share > 0 and u < cumulative:
            return name
    return [name for name, share in zip(SPLITS, fractions, strict=True) if share > 0][-1]


@functools.lru_cache(maxsize=64)
def crs_key(crs: str) -> str:
    """'epsg:32633', a CRS object's string, ... -> one canonical text ('EPSG:32633')."""
    try:
        return CRS.from_user_input(crs).to_string()
    except Exception as exc:
        raise ConfigError(f"cannot interpret CRS {crs!r}: {exc}; pass e.g. 'EPSG:32633'") from exc


@functools.lru_cache(maxsize=64)
def _to_grid(crs: str, grid_crs: str) -> Transformer:
    return Transformer.from_crs(ProjCRS.from_user_input(crs), ProjCRS.from_user_input(grid_crs), always_xy=True)


def block_split(block_ix: int, block_iy: int, cfg: SplitConfig) -> str:
    """Split of block (ix, iy) of the shared grid: stable hash of (seed, grid CRS, ix, iy)."""
    return _assign(_unit("block", cfg.seed, crs_key(cfg.grid_crs), int(block_ix), int(block_iy)), cfg)


_MGRS_TILE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?=_|$)")


def scene_group(scene_id: str) -> str:
    """What ``by_scene`` draws a split for: the MGRS tile of a Sentinel-2 scene id (so every date of
    a tile shares one split), else the scene id itself."""
    match = _MGRS_TILE.search(scene_id)
    return f"T{match.group(1)}" if match else scene_id


def scene_split(scene_id: str, cfg: SplitConfig) -> str:
    """Split of a whole scene (``by_scene`` mode): stable hash of (seed, its :func:`scene_group`)."""
    return _assign(_unit("scene", cfg.seed, scene_group(scene_id)), cfg)


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


def box_outline(bounds: tuple[float, float, float, float], segments: int = DENSIFY) -> tuple[np.ndarray, np.ndarray]:
    """(xs, ys) of the outline of a box, ``segments`` points per edge, counter-clockwise from
    (xmin, ymin): straight edges are curves in another CRS. Computed from the bounds alone, so
    neighbouring boxes share their vertices."""
    xmin, ymin, xmax, ymax = bounds
    t = np.arange(segments) / segments
    xs = np.concatenate(
        [xmin + (xmax - xmin) * t, np.full(segments, xmax), xmax - (xmax - xmin) * t, np.full(segments, xmin)]
    )
    ys = np.concatenate(
        [np.full(segments, ymin), ymin + (ymax - ymin) * t, np.full(segments, ymax), ymax - (ymax - ymin) * t]
    )
    return xs, ys


def tile_split(
    bounds: tuple[float, float, float, float], crs: str, tile_size_m: float, cfg: SplitConfig, scene_id: str
) -> tuple[str, bool]:
    """(split, is_buffer) of the tile with ``bounds`` (xmin, ymin, xmax, ymax) in ``crs``.

    The split is that of the grid block holding the footprint centre. The tile is a buffer tile
    when its footprint grown by ``buffer_tiles * tile_size_m`` (in its own CRS: ground metres)
    intersects a block of another split in the grid CRS. With ``by_scene`` the split comes from
    the scene (its MGRS tile) and there is no buffer. ``tile_size_m`` is the nominal tile side,
    so that smaller tiles at a scene edge get the same buffer.
    """
    if cfg.by_scene:
        return scene_split(scene_id, cfg), False
    check_block_size(cfg, tile_size_m)  # cheap; catches a block size that leaves val/test empty
    to_grid = _to_grid(crs_key(str(crs)), crs_key(cfg.grid_crs))
    size = block_size(cfg, tile_size_m)
    xmin, ymin, xmax, ymax = bounds
    split = block_split(*tile_block(bounds, crs, cfg.grid_crs, size), cfg)
    d = cfg.buffer_tiles * tile_size_m
    gx, gy = to_grid.transform(*box_outline((xmin - d, ymin - d, xmax + d, ymax + d)))
    others = [
        (ix, iy)
        for ix in range(math.floor(gx.min() / size), math.floor(gx.max() / size) + 1)
        for iy in range(math.floor(gy.min() / size), math.floor(gy.max() / size) + 1)
        if block_split(ix, iy, cfg) != split
    ]
    if not others:
        return split, False
    grown = shapely.Polygon(np.column_stack([gx, gy]))
    ix, iy = np.asarray(others, dtype=np.float64).T
    blocks = shapely.box(ix * size, iy * size, (ix + 1) * size, (iy + 1) * size)
    return split, bool(shapely.intersects(grown, blocks).any())


def tile_block(
    bounds: tuple[float, float, float, float], crs: str, grid_crs: str, block_size_m: float
) -> tuple[int, int]:
    """(ix, iy) of the block of the shared grid that holds the centre of the footprint ``bounds`` in ``crs``."""
    cx, cy = _to_grid(crs_key(str(crs)), crs_key(grid_crs)).transform(
        (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    )
    return math.floor(cx / block_size_m), math.floor(cy / block_size_m)


def split_blocks(tiles: Any, scheme: dict[str, Any]) -> np.ndarray:
    """int64 block index of each row of ``tiles`` (catalog rows: bounds, crs, scene_id) under the
    dataset's ``split_scheme``: the grid block of the footprint centre (as the splitter assigns
    splits), or the scene group for by-scene splits; indices number the blocks in order of first
    appearance. Without a known scheme each tile is its own block."""
    method = (scheme or {}).get("method")
    if method == "blocks":
        keys: list[Any] = [
            tile_block((x0, y0, x1, y1), crs, scheme["grid_crs"], float(scheme["block_size_m"]))
            for x0, y0, x1, y1, crs in zip(
                tiles["xmin"], tiles["ymin"], tiles["xmax"], tiles["ymax"], tiles["crs"], strict=True
            )
        ]
    elif method == "scene":
        keys = [scene_group(str(scene)) for scene in tiles["scene_id"]]
    else:
        return np.arange(len(tiles), dtype=np.int64)
    index: dict[Any, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def split_scheme(cfg: SplitConfig, tile_size_m: float) -> dict[str, Any]:
    """What dataset.json records of how its splits were made (checked by :func:`check_split_scheme`)."""
    common = {
        "version": SCHEME_VERSION,
        "seed": cfg.seed,
        "fractions": list(cfg.fractions),
        "min_valid_fraction": cfg.min_valid_fraction,
    }
    if cfg.by_scene:
        return {**common, "method": "scene", "key": "MGRS tile of the scene id, else the scene id"}
    return {
        **common,
        "method": "blocks",
        "grid_crs": crs_key(cfg.grid_crs),
        "block_size_m": block_size(cfg, tile_size_m),
        "buffer_tiles": cfg.buffer_tiles,
        "buffer_m": cfg.buffer_tiles * tile_size_m,
        "assigned_by": "block of the tile's footprint centre",
    }


def grid_area_warning(lonlat_bounds: tuple[float, float, float, float], cfg: SplitConfig) -> str | None:
    """A warning when tiles lie outside the area of use of the grid CRS (blocks distort there)."""
    if cfg.by_scene:
        return None
    area = ProjCRS.from_user_input(cfg.grid_crs).area_of_use
    if area is None:
        return None
    west, south, east, north = lonlat_bounds
    if west >= area.west and east <= area.east and south >= area.south and north <= area.north:
        return None
    return (
        f"tiles ({west:.2f}, {south:.2f}, {east:.2f}, {north:.2f} lon/lat) reach outside the area of use of "
        f"the split grid {cfg.grid_crs} ({area.name}); splits stay leak-free but blocks are distorted there: "
        "set split.grid_crs to a grid for the region (e.g. EPSG:6933, global equal-area) and re-split with "
        "`landcover ingest --finalize --out DIR --set split.grid_crs=...`"
    )


def check_split_scheme(info: dict[str, Any], dataset_dir: object) -> None:
    """Refuse a dataset whose dataset.json records another (or no) split scheme version."""
    found = (info.get("split_scheme") or {}).get("version", "landcover-splits/1 (per-CRS blocks)")
    if found != SCHEME_VERSION:
        raise DatasetError(
            f"{dataset_dir} was split with {found}, which can put the same ground in train and test across "
            f"UTM zones; re-split it with `landcover ingest --finalize --out {dataset_dir}` (recomputes "
            "splits and statistics from the catalog, without re-reading imagery)"
        )
