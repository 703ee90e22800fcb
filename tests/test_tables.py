import json

import numpy as np
import pytest

from landcover.errors import ConfigError, UnknownCodeError
from landcover.nomenclature import (
    IGNORE,
    NOMENCLATURES,
    corine_classes,
    default_bands,
    default_scl_invalid,
    index_to_code_lut,
    nomenclature,
    normalize_band_name,
    read_table,
    sentinel2_bands,
)
from tests.conftest import shared_data

CODES = [c.code for c in corine_classes()]
BEN19_DROPPED = {122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423}


def test_legend_has_the_44_official_classes():
    assert len(CODES) == 44 and sorted(CODES) == CODES
    assert CODES[0] == 111 and CODES[-1] == 523
    assert [c.index for c in corine_classes()] == list(range(1, 45))
    for c in corine_classes():
        assert c.level2 == c.code // 10 and c.level1 == c.code // 100
        assert all(0 <= v <= 255 for v in c.rgb)
    colors = {c.code: c.rgb for c in corine_classes()}
    assert colors[111] == (230, 0, 77) and colors[211] == (255, 255, 168) and colors[523] == (230, 242, 255)


@pytest.mark.parametrize("name", NOMENCLATURES)
def test_every_code_is_mapped_in_every_nomenclature(name):
    nom = nomenclature(name)
    ids = nom.encode(np.array(CODES))
    expected = {"level3": 44, "level2": 15, "level1": 5, "ben19": 19}[name]
    assert nom.num_classes == expected == len(nom.colors) == len(nom.codes)
    for code, cid in zip(CODES, ids.tolist(), strict=True):
        if name == "level3":
            assert nom.codes[cid] == str(code)
        elif name == "level2":
            assert nom.codes[cid] == str(code // 10)
        elif name == "level1":
            assert nom.codes[cid] == str(code // 100)
        elif code in BEN19_DROPPED:
            assert cid == IGNORE
        else:
            assert cid < 19
    # every class of the nomenclature is reachable from some code
    assert set(ids.tolist()) - {IGNORE} == set(range(expected))


def test_ben19_mapping_matches_the_published_groups():
    nom = nomenclature("ben19")
    groups = {
        "Urban fabric": [111, 112],
        "Arable land": [211, 212, 213],
        "Permanent crops": [221, 222, 223, 241],
        "Natural grassland and sparsely vegetated areas": [321, 333],
        "Moors, heathland and sclerophyllous vegetation": [322, 323],
        "Inland wetlands": [411, 412],
        "Coastal wetlands": [421, 422],
        "Inland waters": [511, 512],
        "Marine waters": [521, 522, 523],
    }
    for name, codes in groups.items():
        assert {nom.class_names[i] for i in nom.encode(np.array(codes)).tolist()} == {name}
    dropped = [c for c in CODES if nom.encode(np.array([c]))[0] == IGNORE]
    assert set(dropped) == BEN19_DROPPED


@pytest.mark.parametrize("name", NOMENCLATURES)
def test_no_label_and_clc_special_codes_are_ignored(name):
    ids = nomenclature(name).encode(np.array([0, 990, 995, 999]))
    assert (ids == IGNORE).all()


@pytest.mark.parametrize("bad", [115, 1, 48, 600, 999 + 1])
def test_unknown_codes_fail_loudly(bad):
    with pytest.raises(UnknownCodeError, match=str(bad)):
        nomenclature("level2").encode(np.array([111, bad, 211]))


def test_unknown_nomenclature_is_a_config_error():
    with pytest.raises(ConfigError, match="level3"):
        nomenclature("level4")


def test_raster_index_lut():
    lut = index_to_code_lut()
    assert lut[1] == 111 and lut[44] == 523 and lut[12] == 211
    assert lut[48] == lut[49] == lut[50] == lut[128] == lut[255] == 0  # no-data / unclassified
    assert lut[45] > 1000  # not a CLC raster value


def test_sentinel2_band_table():
    bands = sentinel2_bands()
    assert list(bands) == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    assert {b for b, v in bands.items() if v.resolution == 10} == {"B02", "B03", "B04", "B08"}
    assert {b for b, v in bands.items() if v.resolution == 60} == {"B01", "B09", "B10"}
    assert len(default_bands("L1C")) == 13 and "B10" not in default_bands("L2A") and len(default_bands("L2A")) == 12
    assert normalize_band_name("b8a") == "B8A" and normalize_band_name("B4") == "B04"
    with pytest.raises(ConfigError):
        normalize_band_name("B13")


def test_scl_table_default_invalid_set():
    assert default_scl_invalid() == (0, 1, 3, 8, 9, 10)
    assert len(read_table("scl_classes.csv")) == 12


def test_every_table_names_its_source_and_licence():
    from landcover.nomenclature import catalog_dir

    for path in catalog_dir().glob("*.csv"):
        head = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
        assert "Source" in head and "icence" in head, path.name


def test_real_bigearthnet_label_names_are_in_the_tables():
    names43 = {c.ben43_name for c in corine_classes() if c.ben43_name}
    for meta in shared_data("bigearthnet-v1").glob("*/*_labels_metadata.json"):
        assert set(json.loads(meta.read_text())["labels"]) <= names43, meta
    ben19 = set(nomenclature("ben19").class_names)
    for patch in json.loads(shared_data("bigearthnet-v2", "patches.json").read_text()):
        assert set(patch["labels_19class"]) <= ben19
