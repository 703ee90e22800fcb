"""landcover: Sentinel-2 + CORINE Land Cover, from raw products to land-cover maps."""

__version__ = "0.1.0"
