"""Products + labels -> a tile dataset: ingest, the tile catalog, the spatial train/val/test split."""
