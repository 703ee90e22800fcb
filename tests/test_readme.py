"""The README's two set-up commands: CI runs the second verbatim; the first runs on the embedded sample."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import rasterio
from typer.testing import CliRunner

from landcover.cli import app
from landcover.dataset.catalog import read_catalog

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_first_command_is_the_demo():
    main_job = readme_commands()[0]
    assert main_job.startswith("python3 -m venv .venv && .venv/bin/pip install -q -e . && ")
    args = shlex.split(main_job.split("&& .venv/bin/landcover ", 1)[1])
    assert args[0] == "demo" and "--out" in args


@pytest.mark.slow
def test_readme_first_command_runs_the_demo_and_beats_the_baseline(tmp_path, monkeypatch):
    """The README's first command as a user runs it (about 4 minutes on 2 cores)."""
    args = shlex.split(readme_commands()[0].split("&& .venv/bin/landcover ", 1)[1])
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    seg = json.loads((tmp_path / "demo" / "demo.json").read_text())["segmentation"]
    for key in ("map", "quicklook", "report", "curves", "checkpoint"):
        assert Path(seg[key]).exists() and Path(seg[key]).name in result.output.replace("\n", "")
    # the printed comparison is demo.json's, which is the two evaluate reports' (the same test pixels)
    report = json.loads((Path(seg["report"]) / "metrics.json").read_text())
    base = json.loads((Path(seg["baseline_report"]) / "metrics.json").read_text())
    assert seg["miou"] == report["scores"]["miou"] and seg["baseline_miou"] == base["scores"]["miou"]
    assert report["pixels"]["evaluated"] == base["pixels"]["evaluated"] == seg["test_pixels"]
    assert report["scores"]["comparison"]["miou"]["estimate"] == pytest.approx(seg["miou"] - seg["baseline_miou"])
    flat = " ".join(result.output.split())
    for model in ("cnn", "baseline"):
        iv = seg["intervals"][model]["miou"]
        assert iv["low"] <= iv["estimate"] <= iv["high"]
        assert f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]" in flat
    # the map shows no structure at the window grid: class changes across window edges at most 10 % more often
    assert seg["window_seams"]["ratio"] <= 1.1, seg["window_seams"]
    jp2 = next((ROOT / "landcover" / "sample_data" / "T33UUU" / "IMG_DATA").glob("*_B02.jp2"))
    with rasterio.open(seg["map"]) as m, rasterio.open(jp2) as ref:
        assert (m.crs, m.transform, m.width, m.height) == (ref.crs, ref.transform, ref.width, ref.height)
        assert m.colormap(1)[0][:3] == (230, 0, 77)  # CORINE level 1 "Artificial surfaces" colour
        assert m.tags(1)["CLASS_0"] == "Artificial surfaces"
        assert json.loads(m.tags()["CLASS_NAMES"])[4] == "Water bodies"
        assert m.overviews(1)
    dataset = json.loads((Path(seg["dataset"]) / "dataset.json").read_text())
    assert dataset["nomenclature"]["name"] == "level1" and len(dataset["bands"]) == 13
    assert set(read_catalog(seg["dataset"])["split"]) == {"train", "val", "test"}


def test_readme_sample_ingest_command_runs(tmp_path, monkeypatch):
    """The sample ingest of the Configs section, as written (from the repository root)."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"`(landcover ingest landcover/sample_data/T33UUU/IMG_DATA [^`]+)`", readme).group(1)
    args = shlex.split(command)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "sample")
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "sample" / "dataset.json").read_text())
    assert dataset["nomenclature"]["name"] == "level1" and len(dataset["bands"]) == 13
    assert set(read_catalog(tmp_path / "sample")["split"]) == {"train", "val", "test"}
