"""Raster plumbing every stage shares: the pixel grid, atomic outputs, the class-map style (palette, .qml, COG)."""
