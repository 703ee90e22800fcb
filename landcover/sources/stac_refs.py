"""References to STAC documents and to one item in them (``items.json#<item id>``), without reading them,
and the ``--sign`` hook for their http(s) hrefs.

Light on purpose (no pystac, no rasterio): the command line's argument checks use it before anything heavy
is imported. Reading the documents is :mod:`landcover.sources.stac`'s part.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from landcover.errors import ConfigError

STAC_SUFFIXES = (".json", ".geojson", ".parquet")
"""A STAC Item, ItemCollection/FeatureCollection, Catalog or Collection (JSON), or STAC-GeoParquet."""


def split_reference(ref: str | Path) -> tuple[Path, str | None]:
    """``items.json#S2B_...`` -> ``(Path('items.json'), 'S2B_...')``; any other path -> ``(path, None)``."""
    text = str(ref)
    doc, sep, item = text.rpartition("#")
    if sep and item and Path(doc).suffix.lower() in STAC_SUFFIXES:
        return Path(doc).expanduser(), item
    return Path(text).expanduser(), None


def is_stac_input(ref: str | Path) -> bool:
    """Whether ``ref`` names a STAC document (or an item in one) by its suffix."""
    return split_reference(ref)[0].suffix.lower() in STAC_SUFFIXES


def reference(doc: str | Path, item_id: str) -> str:
    """The reference to item ``item_id`` of the document ``doc``."""
    return f"{doc}#{item_id}"


def sign_hook(spec: str | None) -> Callable[[str], str] | None:
    """The href signing hook that ``--sign`` names: ``planetary-computer`` (the ``planetary_computer`` package's
    ``sign``, when installed) or ``module:function`` (a function taking and returning an href); None for None."""
    if spec is None:
        return None
    if spec == "planetary-computer":
        try:
            module = importlib.import_module("planetary_computer")
        except ImportError as exc:
            raise ConfigError(
                "--sign planetary-computer needs the planetary-computer package: pip install planetary-computer"
            ) from exc
        return module.sign
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"--sign {spec!r}: pass planetary-computer or module:function (a function href -> href)")
    try:
        hook = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"--sign {spec}: cannot import {name} from {module_name} ({exc}); check the module path"
        ) from exc
    if not callable(hook):
        raise ConfigError(f"--sign {spec}: {name} is not a function; name a function taking and returning an href")
    return hook
