"""The window-seam check: class changes across window edges vs elsewhere."""

from __future__ import annotations

import numpy as np
from rasterio.transform import from_origin

from landcover.evaluation.seams import edge_lines, seam_check
from tests.conftest import write_raster


def test_edge_lines_follow_predicts_window_plan():
    # windows of 8 px every 6 px from -2 (starts -2, 4, 10, 16; ends 6, 12, 18): lines 4, 6, 10, 12, 16, 18
    on = edge_lines(20, 8, 2)
    assert np.flatnonzero(on).tolist() == [line - 1 for line in (4, 6, 10, 12, 16, 18)]
    assert np.flatnonzero(edge_lines(20, 32, 8)).tolist() == [15]  # windows -8..24 and 16..48: the line 16


def _map(tmp_path, data):
    return write_raster(tmp_path / "m.tif", data.astype(np.uint8), "EPSG:32633", from_origin(500000, 5300000, 10, 10))


def test_a_lattice_at_the_window_edges_is_found(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 3, (12, 12)), np.ones((23, 23), np.uint8))[:256, :256]  # blobs off the grid
    check = seam_check(_map(tmp_path, smooth), 32, 8)
    assert 0.5 < check.ratio < 2.0 and check.pairs_on_edges > 0
    lattice = smooth.copy()
    lattice[:, edge_lines(256, 32, 8).nonzero()[0]] = 4  # a line of another class along every vertical edge
    assert seam_check(_map(tmp_path, lattice), 32, 8).ratio > 3


def test_no_data_pairs_are_not_counted_and_strips_do_not_matter(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3, (100, 90)).astype(np.uint8)
    data[:10] = 255
    path = _map(tmp_path, data)
    whole, strips = seam_check(path, 32, 8), seam_check(path, 32, 8, strip=7)
    assert whole == strips
    assert whole.pairs_on_edges + whole.pairs_elsewhere == 90 * 89 + 89 * 90  # none touches rows 0..9
