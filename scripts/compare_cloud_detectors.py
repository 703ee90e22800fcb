"""Compare the two candidate cloud detectors (s2cloudless, ukis-csmask) on the real L1C clip of ../shared/data.

Run once to choose the supported detector (docs/clouds.md records the figures); needs both packages installed:
    pip install s2cloudless==1.7.3 ukis-csmask==1.0.0
    python scripts/compare_cloud_detectors.py [../shared/data]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from landcover.sources.reader import SceneReader
from landcover.sources.sentinel2 import open_product

L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2CL = ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"]
UKIS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B11": "swir16", "B12": "swir22"}


def read(path: Path, bands: list[str], resolution: float) -> np.ndarray:
    product = open_product(path).select(bands)
    with SceneReader(product, bands, resolution=resolution, prefetch=False) as reader:
        g = reader.grid
        return reader.read(Window(0, 0, g.width, g.height)).image


def s2cloudless_mask(img: np.ndarray, average_over: int, dilation: int) -> tuple[np.ndarray, np.ndarray, float]:
    from s2cloudless import S2PixelCloudDetector

    det = S2PixelCloudDetector(threshold=0.4, average_over=average_over, dilation_size=dilation, all_bands=False)
    data = (np.moveaxis(img, 0, -1) / 10000.0)[None].astype(np.float32)
    t = time.perf_counter()
    prob = det.get_cloud_probability_maps(data)
    mask = det.get_mask_from_prob(prob)
    return prob[0], mask[0].astype(bool), time.perf_counter() - t


def ukis_mask(img: np.ndarray, level: str) -> tuple[np.ndarray, float]:
    from ukis_csmask.mask import CSmask

    data = (np.moveaxis(img, 0, -1) / 10000.0).astype(np.float32)
    t = time.perf_counter()
    csm = CSmask(data, band_order=list(UKIS.values()), product_level=level, nodata_value=0, intra_op_num_threads=2)
    return csm.csm[..., 0], time.perf_counter() - t


def up(a: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.repeat(np.repeat(a, f, 0), f, 1)[: shape[0], : shape[1]]


def agreement(a: np.ndarray, b: np.ndarray) -> str:
    both, either = np.count_nonzero(a & b), np.count_nonzero(a | b)
    return f"agree {np.mean(a == b):.3f}, IoU {both / max(either, 1):.3f}"


def main(data: Path) -> None:
    clip = data / "s2-l1c-T33UUU-jp2" / "IMG_DATA"
    img10 = read(clip, S2CL, 10.0)
    mpx10 = img10.shape[1] * img10.shape[2] / 1e6
    p10, m10, t10 = s2cloudless_mask(img10, 22, 11)
    print(
        f"s2cloudless 10 m (22/11): cloud {m10.mean():.3f}, prob>=0.4 {np.mean(p10 >= 0.4):.3f}, "
        f"{t10:.2f} s, {t10 / mpx10:.2f} s/Mpx, tile {t10 / mpx10 * 120.56 / 60:.1f} min"
    )
    img60 = read(clip, S2CL, 60.0)
    _, m60, t60 = s2cloudless_mask(img60, 4, 2)
    m60u = up(m60, 6, m10.shape)
    print(f"s2cloudless 60 m (4/2): cloud {m60.mean():.3f}, {t60:.2f} s; vs 10 m: {agreement(m60u, m10)}")
    img30 = read(clip, list(UKIS), 30.0)
    csm30, tu = ukis_mask(img30, "l1c")
    mpx30 = csm30.size / 1e6
    cloud30, shadow30 = csm30 == 1, csm30 == 2
    u10 = up(csm30 > 0, 3, m10.shape)
    print(
        f"ukis-csmask 30 m l1c: cloud {cloud30.mean():.3f}, shadow {shadow30.mean():.3f}, {tu:.2f} s, "
        f"{tu / mpx30:.2f} s/Mpx at 30 m, tile (3660^2) {tu / mpx30 * 13.4 / 60:.1f} min"
    )
    print(f"  ukis cloud|shadow vs s2cloudless 10 m: {agreement(u10, m10)}")
    print(f"  ukis cloud only  vs s2cloudless 10 m: {agreement(up(cloud30, 3, m10.shape), m10)}")
    img10u = read(clip, list(UKIS), 10.0)
    csm10, tu10 = ukis_mask(img10u, "l1c")
    print(
        f"ukis-csmask 10 m l1c: cloud {np.mean(csm10 == 1):.3f}, shadow {np.mean(csm10 == 2):.3f}, {tu10:.2f} s, "
        f"{tu10 / mpx10:.2f} s/Mpx; vs 30 m run: {agreement(csm10 > 0, u10)}"
    )
    # strip-wise (two halves, 64-row halo) vs whole: does each detector give the same mask?
    h = img30.shape[1] // 2
    top, _ = ukis_mask(img30[:, : h + 64], "l1c")
    print(f"ukis strips vs whole (30 m, top half): identical {np.mean(top[:h] == csm30[:h]):.4f}")
    mt = data / "major-tom" / "S2L2A"
    for cell in sorted(mt.glob("*/*/*")):
        ref = read_cloud_mask(cell)
        img = read(cell, list(UKIS), 10.0)
        csm, t = ukis_mask(img, "l2a")
        print(
            f"major-tom {cell.name[:26]}: cloud_mask {ref.mean():.3f}, ukis l2a 10 m {np.mean(csm > 0):.3f}; "
            f"{agreement(csm > 0, ref)} ({t:.1f} s)"
        )


def read_cloud_mask(cell: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(next(cell.glob("cloud_mask*"))) as src:
        return src.read(1) > 0


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data"))
