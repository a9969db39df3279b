"""The one typed config tree of cnnctl, and the one function that resolves it.

Sections (orchestrator/config_sections.py and config_tune.py, imported from here): data, model, optim,
schedule, parallel, run, tune and eval (how `cnnctl eval` tests the run), under ``RunConfig``. The
layout's rules are models/layout.py's.

Precedence (lowest first): field defaults < preset YAML in ``configs/`` < ``--config FILE``
< ``--set a.b=c`` overrides < explicit CLI flags. ``resolve`` is the only place that applies it.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from cnnctl.models.layout import Layout, Net
from cnnctl.orchestrator.config_sections import (DataConfig, LRNConfig, ModelConfig, OptimConfig, ParallelConfig,
                                                 RunSection, ScheduleConfig, Section)
from cnnctl.orchestrator.config_tune import EvalConfig, TuneConfig
from cnnctl.orchestrator.yaml_tree import (ConfigError, deep_merge, format_errors, load_yaml, nest, parse_assignments,
                                           scalar)

__all__ = ["CONFIGS_DIR", "ConfigError", "DataConfig", "EvalConfig", "LRNConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "RunConfig", "RunSection", "ScheduleConfig", "TuneConfig", "check", "model_problems",
           "net", "parse_set", "preset_path", "resolve", "to_yaml", "yaml_names"]


class RunConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Shards and input pipeline.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Network.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="SGD optimiser.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Epochs and learning-rate schedule.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Workers, nodes and the dp x mp mesh.")
    run: RunSection = Field(default_factory=RunSection, description="Run name, storage, seed and fault tolerance.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Ray Tune sweep settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description=(
        "The paper's evaluation of this run, the default of `cnnctl eval`."))


def _configs_dir() -> Traversable:
    """The presets folder: configs/ of the source checkout these modules run from (PYTHONPATH, an
    editable install), else the package data ``cnnctl.orchestrator.configs`` that a wheel installs
    (pyproject.toml maps configs/ there), through importlib.resources."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    return resources.files("cnnctl.orchestrator.configs")


CONFIGS_DIR = _configs_dir()


def yaml_names(folder: Traversable) -> list[str]:
    """The names (without .yaml) of the YAML files in a presets folder, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.is_file() and p.name.endswith(".yaml"))


def parse_set(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars (``1e-4``, ``true``, ``[1,2]``)."""
    merged: dict = {}
    errors = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            errors.append(f"--set {item!r}: expected a.b=value")
            continue
        merged = deep_merge(merged, nest(key, scalar(raw)))
    if errors:
        raise ConfigError(errors)
    return merged


def preset_path(name: str) -> Path:
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(yaml_names(CONFIGS_DIR))
        raise ConfigError([f"preset {name!r}: not found in configs/ (known: {known})"])
    return Path(str(path))


def resolve(
    preset: str | None = None,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    tree: type[BaseModel] = RunConfig,
) -> RunConfig:
    """Apply defaults < preset < --config < --set < flags, validate once, and return the tree.

    ``flags`` maps dotted paths to explicit CLI values; None values mean "not given". ``tree``: the
    model validated (`cnnctl shard`'s ShardConfig, orchestrator/shard_config.py, comes here too).
    """
    merged: dict = {}
    if preset:
        merged = deep_merge(merged, load_yaml(preset_path(preset), "preset"))
    if config_file:
        merged = deep_merge(merged, load_yaml(config_file, "--config"))
    merged = deep_merge(merged, parse_set(sets or []))
    for dotted, value in (flags or {}).items():
        if value is not None:
            merged = deep_merge(merged, nest(dotted, value))
    try:
        cfg = tree.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    problems = check(cfg) if tree is RunConfig else []
    if problems:
        raise ConfigError(problems)
    return cfg


def check(cfg: RunConfig) -> list[str]:
    """Cross-field rules that single fields cannot express (the layout's are models/layout.py's)."""
    bad_model = model_problems(cfg.model)
    problems = cfg.parallel.layout.problems(cfg.data.batch_size, None if bad_model else net(cfg.model))
    problems += elastic_problems(cfg.parallel, cfg.data.global_batch or cfg.data.batch_size)
    if (whole := cfg.data.global_batch) and whole % cfg.data.batch_size:
        problems.append(f"data.global_batch: {whole} is not a whole number of batches of data.batch_size "
                        f"{cfg.data.batch_size}")
    if cfg.model.lrn is not None and cfg.model.lrn.n % 2 == 0:
        problems.append(f"model.lrn.n: must be odd (the window is centred), got {cfg.model.lrn.n}")
    problems += bad_model
    e = cfg.eval
    if e.scales and e.tta != "dense":
        problems.append(f"eval.scales: apply to eval.tta dense only, not {e.tta}")
    if e.scales and min(e.scales) < cfg.data.image_size:
        problems.append(f"eval.scales: every Q must be at least the crop size data.image_size={cfg.data.image_size}, "
                        f"got {e.scales}")
    t = cfg.tune
    if t.scheduler == "pbt" and t.pbt_lrn and not bad_model:
        from cnnctl.models import catalog

        if "lrn" not in catalog.ACCEPTS[catalog.resolve(cfg.model.name)]:
            problems.append(f"tune.pbt_lrn: {catalog.resolve(cfg.model.name)} has no LRN for PBT to mutate")
    if t.search_alg == "optuna" and t.scheduler == "pbt":
        problems.append("tune.search_alg: optuna chooses configurations from finished trials; pbt changes them while "
                        "they run (use --search-alg random with pbt)")
    if t.baseline:
        try:
            parse_assignments(t.baseline, RunConfig, "tune.baseline")
        except ConfigError as exc:
            problems += exc.lines
    return problems


def net(m: ModelConfig) -> Net:
    """What the layout's rules need of the model, from models.catalog (without torch)."""
    from cnnctl.models import catalog

    name = catalog.resolve(m.name)
    alexnet = catalog.family(name) == "alexnet"
    return Net(name, alexnet, catalog.towers(name, m.towers), catalog.fc_width(name, m.width) if alexnet else None)


def elastic_problems(p: ParallelConfig, total: int) -> list[str]:
    """An elastic run's rules: one line per node count from parallel.min_nodes up that its layout or
    its global batch ``total`` cannot train at."""
    if p.min_nodes is None:
        return []
    if p.min_nodes > p.nodes:
        return [f"parallel.min_nodes: {p.min_nodes} is more than parallel.nodes {p.nodes} (--nodes MIN-MAX)"]
    lines = []
    for n in range(p.min_nodes, p.nodes):
        layout = Layout(n, p.workers_per_node, p.mp, p.layout.fc_split)
        why = layout.problems() or ([f"the global batch {total} does not split over dp={layout.dp}"]
                                    if total % layout.dp else [])
        if why:
            lines.append(f"parallel.min_nodes: the run cannot train on {n} node(s) (world {layout.world}): {why[0]}")
    return lines


def model_problems(m: ModelConfig) -> list[str]:
    """One line per model field that the named model does not take (checked without torch)."""
    from cnnctl.models import catalog

    try:
        name = catalog.resolve(m.name)
    except ValueError as exc:
        return [f"model.name: {exc}"]
    return [f"model.{line}" for line in catalog.check_overrides(name, m.overrides())]


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
