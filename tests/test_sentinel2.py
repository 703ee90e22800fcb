"""Sentinel-2 input discovery: SAFE (folder, zip), band folders, GeoTIFFs, BigEarthNet; real data."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landcover.errors import (
    CorruptFileError,
    DatasetError,
    InputFormatError,
    LandcoverError,
    MissingBandError,
    ProductMismatchError,
)
from landcover.nomenclature import corine_classes, default_bands, nomenclature
from landcover.sources.bigearthnet import (
    bigearthnet_labels,
    bigearthnet_patch_labels,
    bigearthnet_reference_map,
    find_bigearthnet_patches,
)
from landcover.sources.sentinel2 import is_bigearthnet_patch, open_product, product_grid_band
from tests.s2_fixtures import (
    ESA_BANDS,
    L2A_BANDS,
    NATIVE,
    make_band_folder,
    make_bigearthnet_metadata,
    make_bigearthnet_patch,
    make_multiband,
    make_safe,
    mtd_xml,
    product_name,
    shared_data,
    truncate,
    write_s2_raster,
)


def name_of(band_file) -> str:
    return Path(band_file.path).name


# --- SAFE ------------------------------------------------------------------------------------------


def test_l2a_safe_takes_each_band_from_its_native_resolution_folder(tmp_path):
    p = open_product(make_safe(tmp_path))
    assert (p.kind, p.level, p.tile) == ("safe", "L2A", "33UUP")
    assert p.product_id == product_name("L2A") and p.metadata_source == "MTD_MSIL2A.xml"
    assert list(p.bands) == list(L2A_BANDS)  # ESA order, no B10, no TCI/AOT/QI masks
    for band, bf in p.bands.items():
        assert bf.resolution == NATIVE[band] and f"/R{NATIVE[band]}m/" in bf.path, band
    assert p.scl is not None and name_of(p.scl).endswith("_SCL_20m.jp2") and p.scl.resolution == 20
    assert p.cloud_mask is None and p.warnings == []
    assert p.sensing_time.startswith("2023-01-15T10:10:21") and p.processing_baseline == "04.00"
    assert product_grid_band(p).band == "B02" and product_grid_band(p).resolution == 10
    b02 = p.bands["B02"]
    assert (b02.width, b02.height, b02.crs, b02.dtype) == (64, 64, "EPSG:32633", "uint16")


def test_l1c_safe_has_13_flat_bands_and_radio_offsets(tmp_path):
    p = open_product(make_safe(tmp_path, level="L1C", baseline="05.09"))
    assert (p.kind, p.level) == ("safe", "L1C")
    assert list(p.bands) == list(ESA_BANDS) and p.bands["B10"].resolution == 60
    assert all("/IMG_DATA/T33UUP_" in bf.path for bf in p.bands.values())
    assert p.scl is None and p.metadata_source == "MTD_MSIL1C.xml"
    assert p.offsets == dict.fromkeys(ESA_BANDS, -1000.0)


@pytest.mark.parametrize(
    ("level", "baseline", "expected"),
    [("L2A", "04.00", -1000.0), ("L2A", "05.10", -1000.0), ("L2A", "02.05", None), ("L1C", "02.04", None)],
)
def test_offsets_follow_the_processing_baseline(tmp_path, level, baseline, expected):
    p = open_product(make_safe(tmp_path, level=level, baseline=baseline, all_resolutions=False))
    assert p.processing_baseline == baseline and p.warnings == []
    assert p.offsets == ({} if expected is None else dict.fromkeys(p.bands, expected))


def test_offsets_are_mapped_from_band_id_to_band_name(tmp_path):
    safe = make_safe(tmp_path, level="L1C", all_resolutions=False)
    values = [-(i + 1) * 10.0 for i in range(13)]  # band_id i -> -10 (i + 1)
    xml = mtd_xml("L1C", f"{safe.stem}.SAFE", "2023-01-15T10:10:21.024Z", "04.00", values, quantification=4096)
    (safe / "MTD_MSIL1C.xml").write_text(xml)
    p = open_product(safe)
    assert p.offsets["B01"] == -10 and p.offsets["B08"] == -80 and p.offsets["B8A"] == -90
    assert p.offsets["B09"] == -100 and p.offsets["B10"] == -110 and p.offsets["B12"] == -130
    assert p.quantification == 4096


def test_explicit_zero_offsets_are_not_replaced_by_the_assumed_one(tmp_path):
    safe = make_safe(tmp_path, baseline="04.00", offset=0.0, all_resolutions=False)
    p = open_product(safe)
    assert p.processing_baseline == "04.00" and p.offsets == {} and p.warnings == []


def test_zipped_safe_is_read_through_vsizip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    folder = open_product(make_safe(tmp_path / "a", seed=7))
    archive = make_safe(tmp_path / "b", zipped=True, seed=7)
    assert archive.suffix == ".zip" and not (tmp_path / "b" / f"{product_name()}.SAFE").exists()
    p = open_product(archive)
    assert (p.kind, p.level, p.product_id, p.offsets) == ("safe", "L2A", folder.product_id, folder.offsets)
    assert p.bands["B05"].path.startswith(f"/vsizip/{archive.resolve()}/") and "/R20m/" in p.bands["B05"].path
    assert p.scl is not None and p.scl.path.startswith("/vsizip/")
    with rasterio.open(p.bands["B8A"].path) as a, rasterio.open(folder.bands["B8A"].path) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_safe_without_mtd_takes_the_baseline_from_its_name_and_assumes_the_offset(tmp_path):
    p = open_product(make_safe(tmp_path, with_mtd=False, all_resolutions=False))
    assert p.metadata_source == "product name" and p.processing_baseline == "04.00"
    assert p.offsets == dict.fromkeys(L2A_BANDS, -1000.0)
    assert len(p.warnings) == 1 and "-1000" in p.warnings[0]


def test_safe_without_any_metadata_warns_and_applies_no_offset(tmp_path):
    safe = make_safe(tmp_path, with_mtd=False, all_resolutions=False, safe_name="SENTINEL.SAFE")
    p = open_product(safe)
    assert p.warnings == ["no metadata: no radiometric offset applied"] and p.offsets == {}
    assert (p.level, p.tile, p.processing_baseline) == ("L2A", "33UUP", None)  # granule and file names
    (safe / "original_folder_name.txt").write_text(product_name(baseline="05.00") + ".SAFE\n")
    p = open_product(safe)
    assert p.product_id == product_name(baseline="05.00") and p.processing_baseline == "05.00"


def test_safe_can_be_given_by_granule_mtd_file_or_parent_folder(tmp_path):
    safe = make_safe(tmp_path / "download", all_resolutions=False)
    granule = next((safe / "GRANULE").iterdir())
    for path in (granule, safe / "MTD_MSIL2A.xml", tmp_path / "download", tmp_path):
        p = open_product(path)
        assert (p.kind, p.metadata_source, p.offsets["B02"]) == ("safe", "MTD_MSIL2A.xml", -1000.0), path
        assert p.path == str(path)


def test_n9999_products_get_no_offset(tmp_path):
    name = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_20170613T120000"
    p = open_product(make_band_folder(tmp_path / name, naming="plain"))
    assert (p.processing_baseline, p.offsets, p.warnings, p.tile) == (None, {}, [], "33UUP")


# --- band folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("naming", ["esa", "esa_res", "plain", "lower", "jp2tif"])
def test_band_folder_naming_variants(tmp_path, naming):
    p = open_product(make_band_folder(tmp_path / "scene", naming=naming))
    assert p.kind == "folder" and list(p.bands) == list(L2A_BANDS)
    assert {b: bf.resolution for b, bf in p.bands.items()} == {b: NATIVE[b] for b in L2A_BANDS}
    if naming != "plain":
        assert (p.tile, p.sensing_time, p.product_id) == ("33UUP", "2023-01-15T10:10:21", "T33UUP_20230115T101021")
    assert p.warnings == ["no metadata: no radiometric offset applied"]


def test_band_at_several_resolutions_keeps_the_native_file(tmp_path):
    folder = make_band_folder(tmp_path / "f", naming="esa_res", extra_resolutions=(20, 60), with_scl=True)
    write_s2_raster(folder / "T33UUP_20230115T101021_B01_20m.jp2", np.ones((32, 32), np.uint16), 20)
    p = open_product(folder)
    assert name_of(p.bands["B02"]).endswith("_B02_10m.jp2") and p.bands["B02"].resolution == 10
    assert name_of(p.bands["B05"]).endswith("_B05_20m.jp2")
    assert name_of(p.bands["B01"]).endswith("_B01_60m.jp2")  # native 60 m, not the resampled 20 m copy
    assert p.level == "L2A" and name_of(p.scl).endswith("_SCL_20m.jp2")


def test_band_at_a_finer_resolution_than_native_is_used_when_native_is_missing(tmp_path):
    folder = make_band_folder(tmp_path / "f", bands=("B02", "B03"), naming="esa_res")
    write_s2_raster(folder / "T33UUP_20230115T101021_B01_20m.jp2", np.ones((32, 32), np.uint16), 20)
    write_s2_raster(folder / "T33UUP_20230115T101021_B01_60m.jp2", np.ones((11, 11), np.uint16), 60)
    (folder / "T33UUP_20230115T101021_B01_60m.jp2").unlink()
    assert open_product(folder).bands["B01"].resolution == 20


def test_major_tom_cloud_mask_is_not_scl(tmp_path):
    p = open_product(make_band_folder(tmp_path / "cell", naming="plain", with_cloud_mask=True))
    assert p.scl is None and name_of(p.cloud_mask) == "cloud_mask.tif" and p.cloud_mask.band == "CLOUD"
    assert "CLOUD" not in p.bands


def test_other_files_in_a_band_folder_are_ignored(tmp_path):
    folder = make_band_folder(tmp_path / "f", bands=("B02", "B03", "B04"), naming="esa_res")
    for name in ("MSK_DETFOO_B02.jp2.TIF", "T33UUP_20230115T101021_TCI_10m.jp2", "B00.tif"):
        write_s2_raster(folder / name, np.ones((64, 64), np.uint8), 10)
    (folder / "notes.txt").write_text("x")
    (folder / "B04.tif.aux.xml").write_text("<PAMDataset/>")
    assert list(open_product(folder).bands) == ["B02", "B03", "B04"]


@pytest.mark.parametrize(("kwargs", "what"), [({"tile": "T33UUQ"}, "tiles"), ({"sensing": "20230120T101021"}, "dates")])
def test_files_of_different_products_are_rejected(tmp_path, kwargs, what):
    folder = make_band_folder(tmp_path / "mix", bands=("B02", "B03", "B04"))
    make_band_folder(folder, bands=("B08",), **kwargs)
    with pytest.raises(ProductMismatchError, match=what) as err:
        open_product(folder)
    assert "_B08.jp2" in str(err.value) and "_B02.jp2" in str(err.value)


def test_files_in_different_crs_or_area_are_rejected(tmp_path):
    folder = make_band_folder(tmp_path / "crs", bands=("B02", "B03"), naming="plain")
    make_band_folder(folder, bands=("B04",), naming="plain", crs="EPSG:32634")
    with pytest.raises(ProductMismatchError, match="CRS") as err:
        open_product(folder)
    assert "B04.tif" in str(err.value)
    folder = make_band_folder(tmp_path / "area", bands=("B02", "B03"), naming="plain")
    make_band_folder(folder, bands=("B04",), naming="plain", origin=(310000.0, 5400000.0))
    with pytest.raises(ProductMismatchError, match="areas"):
        open_product(folder)


def test_a_folder_of_several_products_is_rejected(tmp_path):
    make_band_folder(tmp_path / "root" / "a", naming="plain", bands=("B02", "B03"))
    make_band_folder(tmp_path / "root" / "b", naming="plain", bands=("B02", "B03"))
    with pytest.raises(ProductMismatchError, match="B02 twice"):
        open_product(tmp_path / "root")


# --- select, errors --------------------------------------------------------------------------------


def test_select_names_missing_and_found_bands(tmp_path):
    folder = make_band_folder(tmp_path / "rgb", bands=("B02", "B03", "B04"), with_scl=True)
    p = open_product(folder)
    with pytest.raises(MissingBandError) as err:
        p.select(None)  # L2A (has SCL): needs 12 bands
    message = str(err.value)
    assert "B01" in message and "B12" in message and "B02,B03,B04" in message and str(folder) in message
    assert "\n" not in message
    with pytest.raises(MissingBandError, match="B08"):
        open_product(folder, bands=["B04", "B08"])


def test_select_keeps_the_requested_order_and_restricts_offsets(tmp_path):
    p = open_product(make_safe(tmp_path, all_resolutions=False))
    q = p.select(["b8", "B4", "b02", "B04"])
    assert list(q.bands) == ["B08", "B04", "B02"] and set(q.offsets) == {"B08", "B04", "B02"}
    assert list(p.bands) == list(L2A_BANDS) and q.scl == p.scl
    assert list(p.select(None).bands) == list(default_bands("L2A"))


def test_level_unknown_selects_every_band_found(tmp_path):
    p = open_product(make_band_folder(tmp_path / "x", bands=("B04", "B03"), naming="plain"))
    assert p.level == "unknown" and list(p.select(None).bands) == ["B03", "B04"]


def test_missing_path_and_empty_folders_say_what_to_do(tmp_path):
    with pytest.raises(InputFormatError, match="does not exist"):
        open_product(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    (tmp_path / "junk" / "photo.tif").write_bytes(b"x")
    with pytest.raises(InputFormatError, match=r"no Sentinel-2 band files \(found: photo.tif, readme.txt\)"):
        open_product(tmp_path / "junk")
    with pytest.raises(InputFormatError, match="not a Sentinel-2 input"):
        open_product(tmp_path / "junk" / "readme.txt")


@pytest.mark.parametrize("suffix", [".jp2", ".tif"])
def test_truncated_band_files_raise_corrupt_file_error(tmp_path, suffix):
    folder = make_band_folder(tmp_path / "f", bands=("B02", "B03"), naming="esa" if suffix == ".jp2" else "plain")
    bad = next(folder.glob(f"*B03{suffix}"))
    truncate(bad, 0.6)
    with pytest.raises(CorruptFileError, match="re-download") as err:
        open_product(folder)
    assert bad.name in str(err.value) and isinstance(err.value, LandcoverError)


def test_not_a_raster_and_broken_zip_raise_corrupt_file_error(tmp_path):
    folder = make_band_folder(tmp_path / "f", bands=("B02",), naming="plain")
    (folder / "B03.tif").write_text("<html>404</html>")
    with pytest.raises(CorruptFileError, match=r"B03\.tif"):
        open_product(folder)
    (tmp_path / "S2B_MSIL2A.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(CorruptFileError, match="re-download"):
        open_product(tmp_path / "S2B_MSIL2A.zip")


def test_zip_of_band_files_without_safe_tree(tmp_path):
    folder = make_band_folder(tmp_path / "scene", bands=("B02", "B03", "B04"), naming="plain")
    with zipfile.ZipFile(tmp_path / "scene.zip", "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"scene/{f.name}")
    p = open_product(tmp_path / "scene.zip")
    assert p.kind == "folder" and list(p.bands) == ["B02", "B03", "B04"]


# --- multi-band GeoTIFF ----------------------------------------------------------------------------


def test_multiband_names_come_from_band_descriptions(tmp_path):
    path = make_multiband(
        tmp_path / "m.tif", ("B08", "B04", "B8A", "B02"), ["NIR (B8)", "B4", "b8a - narrow NIR", "B02 (Blue)"]
    )
    p = open_product(path)
    assert p.kind == "multiband" and list(p.bands) == ["B02", "B04", "B08", "B8A"]
    assert {b: bf.index for b, bf in p.bands.items()} == {"B08": 1, "B04": 2, "B8A": 3, "B02": 4}
    assert all(bf.path == str(path) for bf in p.bands.values())
    assert list(open_product(path, bands=["B04"]).bands) == ["B04"]  # with names, bands selects


def test_multiband_without_descriptions_needs_bands_in_file_order(tmp_path):
    path = make_multiband(tmp_path / "m.tif", ("B04", "B03", "B02"), descriptions=False)
    with pytest.raises(InputFormatError, match="--bands"):
        open_product(path)
    with pytest.raises(InputFormatError, match="3 bands"):
        open_product(path, bands=["B04", "B03"])
    p = open_product(path, bands=["B4", "B3", "B2"])
    assert list(p.bands) == ["B02", "B03", "B04"] and p.bands["B04"].index == 1 and p.bands["B02"].index == 3


# --- BigEarthNet (synthetic) -------------------------------------------------------------------------


def test_bigearthnet_patches_labels_and_reference_maps(tmp_path):
    v2 = make_bigearthnet_patch(tmp_path / "v2", with_reference_map=True)
    other = make_bigearthnet_patch(tmp_path / "v2", row=28, suffix=".tiff")
    v1 = make_bigearthnet_patch(tmp_path / "v1", version=1, labels=["Pastures", "Coniferous forest"])
    assert is_bigearthnet_patch(v2) and not is_bigearthnet_patch(v2.parent)
    assert find_bigearthnet_patches(tmp_path) == sorted([v2, other, v1])
    p = open_product(v2)
    assert (p.kind, p.level, p.product_id, p.tile, p.offsets, p.warnings) == (
        "bigearthnet",
        "L2A",
        v2.name,
        "33UUP",
        {},
        [],
    )
    assert p.bands["B02"].resolution == 10 and p.bands["B09"].width == 20 and len(p.bands) == 12
    q = open_product(v1)
    assert (q.tile, q.processing_baseline, q.metadata_source) == ("33UUP", "02.05", "product name")
    assert bigearthnet_patch_labels(v1) == ["Pastures", "Coniferous forest"]
    assert (
        bigearthnet_reference_map(v2)
        == tmp_path / "v2" / "Reference_Maps" / v2.parent.name / v2.name / f"{v2.name}_reference_map.tif"
    )
    assert bigearthnet_reference_map(other) is None and bigearthnet_reference_map(v1) is None
    with pytest.raises(DatasetError, match=r"metadata\.parquet"):
        bigearthnet_patch_labels(v2)
    parquet = make_bigearthnet_metadata(
        tmp_path / "v2" / "metadata.parquet", {v2.name: ["Pastures"], "x": ["Arable land"]}
    )
    assert bigearthnet_patch_labels(v2) == ["Pastures"]  # found above the patch
    assert bigearthnet_labels(parquet, [v2.name, "x", "y"]) == {v2.name: ["Pastures"], "x": ["Arable land"]}
    with pytest.raises(DatasetError, match="not in"):
        bigearthnet_patch_labels(other, parquet)


# --- real data (../shared/data; skipped when absent) --------------------------------------------------


def test_real_l1c_jp2_clip():
    folder = shared_data("s2-l1c-T33UUU-jp2")
    p = open_product(folder / "IMG_DATA")
    assert (p.kind, p.level, p.tile, p.sensing_time) == ("folder", "L1C", "33UUU", "2017-02-16T10:21:01")
    assert list(p.bands) == list(ESA_BANDS) and p.offsets == {}
    assert p.warnings == ["no metadata: no radiometric offset applied"]
    grid = product_grid_band(p)
    assert (grid.resolution, grid.width, grid.height, grid.crs) == (10, 1536, 768, "EPSG:32633")
    assert p.bands["B10"].resolution == 60 and p.bands["B8A"].resolution == 20
    assert list(open_product(folder).bands) == list(ESA_BANDS)  # the folder above IMG_DATA


def test_real_safe_r60m_tree():
    safe = shared_data("s2-l2a-T31TCJ-safe-r60m", "SENTINEL.SAFE")
    p = open_product(safe)
    assert (p.kind, p.level, p.tile, p.processing_baseline) == ("safe", "L2A", "31TCJ", "04.00")
    assert p.product_id == "S2A_MSIL2A_20221116T105321_N0400_R051_T31TCJ_20221116T170958"  # original_folder_name.txt
    assert list(p.bands) == ["B02", "B03", "B04", "B8A"] and p.scl is None
    assert all(bf.resolution == 60 and bf.width == 1830 for bf in p.bands.values())
    assert p.offsets == dict.fromkeys(p.bands, -1000.0) and len(p.warnings) == 1
    with pytest.raises(MissingBandError, match="B05"):
        p.select(None)


def test_real_major_tom_cells():
    n0400 = shared_data("major-tom", "S2L2A", "0U", "0U_199R")
    p = open_product(n0400)  # the cell folder holds one product folder
    assert p.product_id.startswith("S2A_MSIL2A_20220706T085611_N0400") and p.tile == "33NZA"
    assert (p.level, p.processing_baseline, p.scl) == ("L2A", "04.00", None)
    assert list(p.bands) == list(L2A_BANDS) and p.offsets == dict.fromkeys(L2A_BANDS, -1000.0)
    assert name_of(p.cloud_mask) == "cloud_mask.tif" and product_grid_band(p).width == 1068
    q = open_product(shared_data("major-tom", "S2L2A", "199U", "199U_1099R"))
    assert (q.tile, q.processing_baseline, q.offsets, q.warnings) == ("48QUE", None, {}, [])  # N9999
    with pytest.raises(ProductMismatchError):
        open_product(shared_data("major-tom", "S2L2A"))


def test_real_aggregated_jp2_tif_folders():
    root = shared_data("corine-lanjaron", "s2-l2a-T30SVF-T30SVG-aggregated")
    for sub, tile in (("f", "30SVF"), ("g", "30SVG")):
        p = open_product(root / sub)
        assert (p.level, p.tile, p.sensing_time) == ("L2A", tile, "2023-09-05T10:56:21")
        assert list(p.bands) == list(L2A_BANDS)  # MSK_*_B??, TCI, AOT, WVP, PVI are not bands
        assert name_of(p.bands["B02"]).endswith("_B02_10m.jp2.TIF") and name_of(p.bands["B01"]).endswith(
            "_B01_60m.jp2.TIF"
        )
        assert name_of(p.scl).endswith("_SCL_20m.jp2.TIF")
        assert p.bands["B02"].resolution == 1000  # aggregated: the name says 10m, the grid is 1 km
    with pytest.raises(ProductMismatchError, match="30SVF, 30SVG"):
        open_product(root)


def test_real_bigearthnet_v1_patches_and_labels():
    root = shared_data("bigearthnet-v1")
    patches = find_bigearthnet_patches(root)
    assert len(patches) == 6
    known = {c.ben43_name for c in corine_classes()}
    for patch in patches:
        p = open_product(patch)
        assert p.kind == "bigearthnet" and list(p.bands) == list(L2A_BANDS) and p.offsets == {}
        assert p.bands["B02"].width == 120 and p.bands["B01"].width == 20
        meta = json.loads((patch / f"{patch.name}_labels_metadata.json").read_text())
        assert p.tile == meta["tile_source"].split("_")[5][1:]
        labels = bigearthnet_patch_labels(patch)
        assert labels == meta["labels"] and set(labels) <= known


def test_real_bigearthnet_v2_patches_and_parquet_labels():
    root = shared_data("bigearthnet-v2")
    expected = {p["patch_id"]: p["labels_19class"] for p in json.loads((root / "patches.json").read_text())}
    patches = find_bigearthnet_patches(root / "BigEarthNet-S2")
    assert len(patches) == 23 and set(expected) < {p.name for p in patches}  # patches.json lacks T34WFU
    labels = bigearthnet_labels(root / "metadata.parquet", [p.name for p in patches])
    absent = {p.name for p in patches} - set(labels)  # 3 mock patches the official parquet lacks
    assert len(labels) == 20 and all(sorted(labels[k]) == sorted(v) for k, v in expected.items() if k in labels)
    with pytest.raises(DatasetError, match="not in"):
        bigearthnet_patch_labels(next(p for p in patches if p.name in absent))  # parquet found above
    assert set().union(*labels.values()) <= set(nomenclature("ben19").class_names)
    finnish = next(p for p in patches if "T34WFU" in p.name)
    p = open_product(finnish)  # .tiff suffix
    assert (p.tile, p.level, p.offsets, len(p.bands)) == ("34WFU", "L2A", {}, 12)
    assert bigearthnet_reference_map(finnish) is None


def test_real_eurosat_multiband_needs_band_order():
    tif = shared_data("eurosat-ms", "Pasture", "Pasture_300.tif")
    with pytest.raises(InputFormatError, match="13 bands"):
        open_product(tif)
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    p = open_product(tif, bands=order)
    assert p.level == "L1C" and list(p.bands) == list(ESA_BANDS) and p.bands["B8A"].index == 13


def test_error_messages_are_one_line(tmp_path):
    folder = make_band_folder(tmp_path / "a", bands=("B02",), naming="plain")
    shutil.copy(folder / "B02.tif", folder / "B02.jp2.tif")
    with pytest.raises(LandcoverError) as err:
        open_product(folder)
    assert "\n" not in str(err.value)
