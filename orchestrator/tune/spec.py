"""A sweep's folder and its saved spec: sweep.yaml (the base config, the search space and, for a
random search, the planned configurations and their draws) and base.yaml. No Ray here: `cnnctl tune
report` and `--resume` read what `cnnctl tune run` wrote.
"""

from __future__ import annotations

import yaml
from pydantic import ValidationError

from cnnctl.orchestrator.config import ConfigError, RunConfig, to_yaml
from cnnctl.orchestrator.tune.plan import Plan
from cnnctl.orchestrator.tune.space import SearchSpace
from cnnctl.orchestrator.yaml_tree import yaml_problem
from cnnctl.shards import location as loc

SPEC = "sweep.yaml"


def sweep_dir(cfg: RunConfig) -> str:
    """The sweep's folder: a location in run.storage's store (a local folder or a URL)."""
    return loc.join(loc.absolute(cfg.run.storage), cfg.tune.name)


def save_spec(cfg: RunConfig, space: SearchSpace, trials: Plan | None = None) -> str:
    path = sweep_dir(cfg)
    spec = {"base": cfg.model_dump(mode="json"), "search": space.model_dump(mode="json", exclude_none=True)}
    if trials:  # the distinct configurations and how often each was drawn (the report names them)
        spec["plan"] = {"cells": trials.cells, "draws": trials.draws}
    loc.write_bytes(loc.join(path, SPEC), yaml.safe_dump(spec, sort_keys=False).encode())
    loc.write_bytes(loc.join(path, "base.yaml"), to_yaml(cfg).encode())
    return path


def _spec(path: str) -> tuple[dict, str]:
    """A sweep's sweep.yaml as a mapping; ConfigError naming the file, one line, otherwise."""
    file = loc.join(path, SPEC)
    try:
        spec = yaml.safe_load(loc.read_text(file))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError([f"{file}: not a sweep spec ({yaml_problem(exc)})"]) from None
    if not isinstance(spec, dict):
        raise ConfigError([f"{file}: not a sweep spec (a mapping with base and search)"])
    return spec, file


def load_spec(path: str) -> tuple[RunConfig, SearchSpace]:
    spec, file = _spec(path)
    try:
        return RunConfig.model_validate(spec.get("base")), SearchSpace.model_validate(spec.get("search"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        problem = f"{file}: {where or 'base/search'}: {err['msg']} ({exc.error_count()} problem(s))"
        raise ConfigError([problem]) from None


def load_draws(path: str) -> list[int] | None:
    """How many times a random search drew each configuration (None: optuna's, or an older sweep)."""
    spec, file = _spec(path)
    plan_ = spec.get("plan")
    if not plan_:
        return None
    draws = plan_.get("draws") if isinstance(plan_, dict) else None
    if not isinstance(draws, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in draws):
        raise ConfigError([f"{file}: plan.draws is not a list of counts"])
    return draws


def saved(name: str, storage: str, address: str | None) -> tuple[str, RunConfig, SearchSpace]:
    """The sweep ``name`` under ``storage``: its folder, and its saved config (placed where it is now,
    on ``address``) and space; ConfigError if there is none."""
    folder = loc.join(loc.absolute(storage), name)
    if not loc.exists(loc.join(folder, SPEC)):
        raise ConfigError([f"no sweep {name} at {folder} (no {SPEC}); give its run.storage with --set run.storage=..."])
    base, space = load_spec(folder)
    base.run.storage, base.tune.name = storage, name  # where it is now
    if address:
        base.parallel.address = address
    return folder, base, space

