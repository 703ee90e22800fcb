"""landcover: Sentinel-2 + CORINE Land Cover, from raw products to land-cover maps."""

__version__ = "0.1.0"

from landcover.offline import guard_network  # LANDCOVER_OFFLINE=1: no network (offline.py)

guard_network()
