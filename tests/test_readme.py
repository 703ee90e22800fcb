"""The README's two set-up commands: CI runs the second verbatim; the first runs on the embedded sample."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from landcover.catalog import read_catalog
from landcover.cli import app

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)[:2]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_runs_on_the_embedded_sample(tmp_path, monkeypatch):
    main_job = readme_commands()[0]
    args = shlex.split(main_job.split("&& .venv/bin/landcover ", 1)[1])
    args[args.index("--out") + 1] = str(tmp_path / "sample")
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "sample" / "dataset.json").read_text())
    assert dataset["nomenclature"]["name"] == "level1" and len(dataset["bands"]) == 13
    assert dataset["normalization"]["count"] > 0
    assert set(read_catalog(tmp_path / "sample")["split"]) == {"train", "val", "test"}
