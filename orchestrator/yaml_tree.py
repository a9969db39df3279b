"""YAML trees and dotted paths: the helpers the config tree (config.py) and the sweep's search spaces
(tune/space.py) both build on. It knows no RunConfig: a function that walks the config's fields is
handed the root model.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """A config that cannot be resolved; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def yaml_problem(exc: BaseException) -> str:
    """A YAML (or decoding) error in one line: its problem and where (PyYAML's own text spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    lines = str(exc).strip().splitlines()
    what = getattr(exc, "problem", None) or (lines[0] if lines else type(exc).__name__)
    return f"{what}, line {mark.line + 1} column {mark.column + 1}" if mark is not None else what[:160]


def load_yaml(path: str | Path, what: str) -> dict:
    """A YAML mapping from a local path or a URL (`--config s3://.../config.yaml`)."""
    from cnnctl.shards import location as loc

    if line := loc.check_access(str(path), what):
        raise ConfigError([line])
    try:
        data = yaml.safe_load(loc.read_text(str(path)))
    except FileNotFoundError:
        raise ConfigError([f"{what} {path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{what} {path}: cannot read it ({type(exc).__name__}: {exc})"]) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError([f"{what} {path}: not valid YAML ({yaml_problem(exc)})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{what} {path}: expected a mapping at the top level"])
    return data


def scalar(raw: str) -> Any:
    """A --set value: int, float (``1e-4`` too, which YAML 1.1 leaves a string), or any YAML scalar/list."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return lines


def known_path(root: type[BaseModel], path: str) -> str | None:
    """None when ``path`` names a leaf field of the model ``root``, else why not."""
    model = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:i]) or "the config"
            return f"unknown path ({where} has no field {part!r}; known: {', '.join(model.model_fields)})"
        # a section that may be None (model.lrn: None is the model's own LRN) is still a section
        options = typing.get_args(field.annotation) or (field.annotation,)
        annotation = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), field.annotation)
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 1:
            return "is a section, not a field" if is_section else None
        if not is_section:
            return f"unknown path ({'.'.join(parts[:i + 1])} is a field with no sub-fields)"
        model = annotation
    return None


def parse_assignments(text: str, root: type[BaseModel], what: str) -> dict:
    """``path=value[,path=value...]`` (values read as --set reads them: false, 1e-4, cosine) -> {path: value};
    ConfigError, one line per item (named after the setting ``what``) that is not a leaf of ``root``."""
    out, problems = {}, []
    for item in text.split(","):
        path, eq, value = item.strip().partition("=")
        why = "expected path=value" if not eq or not path else known_path(root, path)
        if why:
            problems.append(f"{what} {item.strip()!r}: {why}")
        else:
            out[path] = scalar(value)
    if problems:
        raise ConfigError(problems)
    return out
