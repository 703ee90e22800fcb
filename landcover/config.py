"""YAML configs validated by pydantic models, with ``--set a.b=value`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from landcover.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def config_dir() -> Path:
    """The configs/ folder: beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "configs"):
        if (candidate / "tiny.yaml").is_file():
            return candidate
    raise ConfigError("configs/ was not found beside or inside the landcover package; reinstall landcover")


def apply_override(data: dict, assignment: str) -> None:
    """``'trainer.max_epochs=3'`` -> ``data['trainer']['max_epochs'] = 3`` (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. split.seed=3), got {assignment!r}")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(
            f"--set {assignment}: the value is not valid YAML ({problem}); quote it or correct it"
        ) from exc


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The YAML document of ``path``; an unreadable or malformed file is one :class:`ConfigError` line
    naming the file and, for a syntax error, the line and column."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not a text file (YAML); pass the YAML settings file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["syntax error"])[0]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}; correct the file") from exc


def config_data(path: str | Path | None = None, overrides: list[str] | None = None, **values: object) -> dict:
    """The settings of ``path`` (YAML) with ``values`` (non-None CLI options) and ``overrides`` applied, not yet
    validated (cheap: no model class needed, e.g. to check arguments before the heavy imports)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a YAML mapping of settings")
    for key, value in values.items():
        if value is not None:
            apply_override(data, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def load_config(
    model: type[M], path: str | Path | None = None, overrides: list[str] | None = None, **values: object
) -> M:
    """Read ``path`` (YAML), apply ``values`` (non-None CLI options) and ``overrides``, validate."""
    data = config_data(path, overrides, **values)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # a key set on the command line is blamed on its option, the others on the file
        given = {a.partition("=")[0].strip() for a in overrides or []}
        options = {k for k, v in values.items() if v is not None}

        def source(key: str) -> str:
            parents = [".".join(key.split(".")[:i]) for i in range(len(key.split(".")), 0, -1)]
            hit = next((p for p in parents if p in given), None)
            if hit is not None:
                return f"--set {hit}"
            if any(p in options for p in parents):
                return "the command-line option"
            return f"in {path}" if path else "the defaults"

        errors = [(".".join(map(str, e["loc"])) or "config", e["msg"]) for e in exc.errors()]
        sources = [source(key) for key, _ in errors]
        if path and set(sources) == {f"in {path}"}:
            problems = "; ".join(f"{key}: {msg}" for key, msg in errors)
            raise ConfigError(f"invalid settings in {path}: {problems}") from exc
        problems = "; ".join(f"{key} ({where}): {msg}" for (key, msg), where in zip(errors, sources, strict=True))
        raise ConfigError(f"invalid settings: {problems}") from exc
