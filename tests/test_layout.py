"""The package layout as tests: the import graph of ``landcover/`` (modules and stages) has no cycle, no
private name crosses a module boundary, and each stage pulls in only the heavy libraries it owns."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "landcover"
STAGES = ("io", "sources", "dataset", "models", "training", "inference", "evaluation")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "sample_data" not in p.parts}


def imports_of(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every landcover import in the file, lazy and TYPE_CHECKING ones too."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "landcover"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "landcover":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (node.module, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in imports_of(path) if m != name} for name, path in MODULES.items()}


def stage_of(module: str) -> str:
    """A subpackage (a stage, or the cli) counts as one node; a top-level module as itself."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir() else module


def test_every_stage_is_a_subpackage():
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
        assert (PACKAGE / stage / "__init__.py").read_text().startswith('"""'), f"{stage}: say what it owns"


def test_module_import_graph_has_no_cycle():
    edges = graph()
    assert set().union(*edges.values()) <= set(MODULES), set().union(*edges.values()) - set(MODULES)
    tuple(graphlib.TopologicalSorter(edges).static_order())  # raises CycleError naming the cycle


def test_stage_import_graph_has_no_cycle():
    stages: dict[str, set[str]] = {}
    for module, deps in graph().items():
        stages.setdefault(stage_of(module), set()).update(stage_of(d) for d in deps if stage_of(d) != stage_of(module))
    tuple(graphlib.TopologicalSorter(stages).static_order())


def test_no_private_name_crosses_a_module_boundary():
    crossing = [
        f"{name} imports {mod}.{obj}"
        for name, path in MODULES.items()
        for mod, obj in imports_of(path)
        if obj and obj.startswith("_") and obj != "__version__"
    ]
    crossing += [
        f"{name} imports {mod}"
        for name, path in MODULES.items()
        for mod, _ in imports_of(path)
        if any(p.startswith("_") for p in mod.split(".")[1:])
    ]
    assert not crossing


def in_cli(module: str) -> bool:
    return module == "landcover.cli" or module.startswith("landcover.cli.")


def test_nothing_imports_the_cli():
    assert not [name for name, deps in graph().items() if not in_cli(name) and any(in_cli(d) for d in deps)]


def loaded_after_importing(modules: list[str]) -> list[str]:
    code = (
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in ('lightning', 'pytorch_lightning', 'typer', 'torch') if k in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", ["io", "sources", "dataset", "models", "inference", "evaluation"])
def test_only_training_imports_lightning_and_only_the_cli_imports_typer(stage):
    modules = sorted(m for m in MODULES if m == f"landcover.{stage}" or m.startswith(f"landcover.{stage}."))
    loaded = loaded_after_importing(modules)
    assert "lightning" not in loaded and "pytorch_lightning" not in loaded, (stage, loaded)
    assert "typer" not in loaded, (stage, loaded)


def test_top_level_modules_other_than_the_cli_need_neither_typer_nor_lightning():
    top = sorted(m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in (*STAGES, "cli", "demo"))
    assert "landcover.preflight" in top and "landcover.config" in top
    loaded = loaded_after_importing(top)
    assert "typer" not in loaded and "lightning" not in loaded, loaded


def test_public_api_resolves_lazily():
    code = (
        "import sys, json, inspect, landcover\nheavy = [m for m in ('torch', 'lightning') if m in sys.modules]\n"
        "def kind(x): return 'class' if inspect.isclass(x) else 'function' if callable(x) else type(x).__name__\n"
        "print(json.dumps([heavy, {n: kind(getattr(landcover, n)) for n in landcover.__all__}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    heavy, kinds = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == []  # `import landcover` stays light: the stages load on first use
    for name in ("ingest", "train", "predict_scene", "evaluate_maps", "get_nomenclature", "load_config"):
        assert kinds[name] == "function", name
    for name in ("Nomenclature", "TrainConfig", "IngestConfig", "LandcoverError", "IngestResult", "TrainResult"):
        assert kinds[name] == "class", name
    for name in ("PredictResult", "EvaluationResult"):
        assert kinds[name] == "class", name
