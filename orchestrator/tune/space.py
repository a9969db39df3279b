"""Search spaces for `cnnctl tune`: YAML over dotted RunConfig paths, checked before anything starts.

A search file looks like::

    space:
      model.lrn.n: {choice: [3, 5, 7, 9]}
      model.lrn.alpha: {loguniform: [1.0e-5, 1.0e-2]}   # the paper's alpha, not divided by n
      optim.lr: {grid: [0.01, 0.05]}

Each dimension has exactly one of ``choice``, ``uniform``, ``loguniform``, ``randint`` (both ends
included) or ``grid``. Every value a dimension can produce is resolved into a full RunConfig with the
base config, so a value the config tree refuses (an even LRN n, alpha <= 0) is an error up front,
not a failed trial an hour in.

A dimension may apply only under a condition, ``when: {other.path: value}`` (or a list of values,
any of which will do)::

    model.lrn.enabled: {choice: [true, false]}
    model.lrn.alpha: {loguniform: [1.0e-5, 1.0e-2], when: {model.lrn.enabled: true}}

A dimension whose condition does not hold is not sampled at all: the trial keeps the base config's
value, so LRN-off trials never differ by knobs LRN-off ignores (and are one configuration, trained once).
A condition reads the value the trial drew for that path, or the base config's where the space does
not search it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnnctl.orchestrator import yaml_tree
from cnnctl.orchestrator.config import CONFIGS_DIR, ConfigError, RunConfig, check, yaml_names
from cnnctl.orchestrator.yaml_tree import deep_merge, format_errors, load_yaml, nest

SEARCH_DIR = CONFIGS_DIR / "search"
KINDS = ("choice", "uniform", "loguniform", "randint", "grid")
# Paths a sweep owns itself: a trial's name, folder and seed (--seeds, tune.trial_seeds), and the sweep settings.
RESERVED = ("run.name", "run.storage", "run.seed", "tune.")
RANDINT_EXHAUSTIVE = 64  # randint ranges up to this size are checked value by value


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choice: list[Any] | None = Field(None, min_length=1, description="Pick one of these values at random.")
    uniform: tuple[float, float] | None = Field(None, description="A float drawn uniformly from [low, high].")
    loguniform: tuple[float, float] | None = Field(
        None, description="A float drawn log-uniformly from [low, high]; low > 0.")
    randint: tuple[int, int] | None = Field(
        None, description="An integer drawn uniformly from [low, high], both included.")
    grid: list[Any] | None = Field(
        None, min_length=1, description="Every value, once per sample (a grid over several paths is their product).")
    when: dict[str, Any] | None = Field(
        None, min_length=1, description="Sample this dimension only when every named path has this value (a list: any "
                                        "of these values); otherwise the trial keeps the base config's value.")

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError(f"bounds must satisfy low < high (got {list(low_high)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.loguniform[0]})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def probes(self) -> list[Any]:
        """The values whose validity stands for the whole dimension: every listed value, the ends of
        a range (and every integer of a small randint range)."""
        if self.choice is not None or self.grid is not None:
            return list(self.choice if self.choice is not None else self.grid)
        if self.randint is not None:
            low, high = self.randint
            return list(range(low, high + 1)) if high - low < RANDINT_EXHAUSTIVE else [low, high]
        return list(self.uniform or self.loguniform)

    def holds(self, values: dict, base: dict) -> bool:
        """Whether the condition holds for a trial that drew ``values`` (dotted paths) on ``base``."""
        for path, want in (self.when or {}).items():
            have = values[path] if path in values else lookup(base, path)
            if have not in (want if isinstance(want, list) else [want]):
                return False
        return True

    def draw(self, rng: random.Random) -> Any:
        if self.choice is not None:
            return rng.choice(self.choice)
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        if self.loguniform is not None:
            low, high = self.loguniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randint(*self.randint)

    def suggest(self, trial, path: str) -> Any:
        """The value an Optuna trial suggests (a grid is a categorical: TPE samples, it does not enumerate)."""
        if self.choice is not None or self.grid is not None:
            return trial.suggest_categorical(path, self.choice if self.choice is not None else self.grid)
        if self.randint is not None:
            return trial.suggest_int(path, *self.randint)
        return trial.suggest_float(path, *(self.uniform or self.loguniform), log=self.loguniform is not None)

    def to_tune(self):
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(self.randint[0], self.randint[1] + 1)  # Tune's upper end is excluded


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="What the sweep asks.")
    space: dict[str, Dimension] = Field(min_length=1, description="Dotted RunConfig path -> dimension.")

    def to_tune(self) -> dict:
        return {path: dim.to_tune() for path, dim in self.space.items()}

    def order(self) -> list[str]:
        """The paths, each after the dimensions its condition reads (ValueError on a cycle)."""
        done: list[str] = []
        todo = list(self.space)
        while todo:
            ready = [p for p in todo if all(c in done or c not in self.space for c in self.space[p].when or {})]
            if not ready:
                raise ValueError(f"conditions form a cycle among {', '.join(todo)}")
            done += ready
            todo = [p for p in todo if p not in ready]
        return done

    def draws(self, rng: random.Random, base: dict) -> list[dict]:
        """One sample of the space: every grid combination (a conditional grid only where its
        condition holds), each with its random dimensions drawn; only dimensions that apply appear."""
        partial = [{}]
        for path in self.order():
            dim, grown = self.space[path], []
            for values in partial:
                if not dim.holds(values, base):
                    grown.append(values)
                elif dim.grid is not None:
                    grown += [{**values, path: v} for v in dim.grid]
                else:
                    grown.append({**values, path: dim.draw(rng)})
            partial = grown
        return partial

    def grid_size(self) -> int:
        """Configurations one sample of the space gives (the conditional grid's leaves)."""
        return len(self.draws(random.Random(0), {}))

    def define_by_run(self, trial, base: dict) -> None:
        """Optuna's define-by-run form of the space: a dimension is suggested only where it applies."""
        values: dict = {}
        for path in self.order():
            if self.space[path].holds(values, base):
                values[path] = self.space[path].suggest(trial, path)


def known_path(path: str) -> str | None:
    """None when ``path`` names a leaf field of RunConfig, else why not."""
    return yaml_tree.known_path(RunConfig, path)


def lookup(tree: dict, path: str) -> Any:
    """The value at a dotted path of a config dict (None where a section is unset)."""
    for part in path.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def effective_key(base: dict, params: dict) -> str:
    """What makes two trials the same: their whole resolved config (so a drawn value equal to the
    base's, or a dimension whose condition failed, changes nothing)."""
    return json.dumps(apply(base, params).model_dump(mode="json"), sort_keys=True)


def _value_problems(base: dict, path: str, value: Any) -> list[str]:
    merged = deep_merge(base, nest(path, value))
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as exc:
        return format_errors(exc)
    return check(cfg)


def validate(space: SearchSpace, base: RunConfig) -> list[str]:
    """One line per problem: unknown or reserved paths, and values the config tree refuses."""
    problems = []
    base_dict = base.model_dump(mode="json")
    try:
        space.order()
    except ValueError as exc:
        problems.append(f"search when: {exc}")
    for path, dim in space.space.items():
        if any(path == r or (r.endswith(".") and path.startswith(r)) for r in RESERVED):
            problems.append(f"search {path}: set by the sweep itself, not searchable")
            continue
        why = known_path(path)
        if why:
            problems.append(f"search {path}: {why}")
            continue
        # a conditional dimension's values are checked where they apply: with its condition met
        probe_base, bad_when = base_dict, False
        for cond, want in (dim.when or {}).items():
            why = "is the dimension itself" if cond == path else known_path(cond)
            if why:
                problems.append(f"search {path}: when {cond}: {why}")
                bad_when = True
                continue
            for v in want if isinstance(want, list) else [want]:
                lines = _value_problems(base_dict, cond, v)
                if not lines and (held := lookup(apply(base_dict, {cond: v}).model_dump(mode="json"), cond)) != v:
                    lines = [f"the config holds it as {held!r}, which never equals {v!r}: write {held!r}"]
                problems += [f"search {path}: when {cond}={v!r}: {line}" for line in lines]
            probe_base = deep_merge(probe_base, nest(cond, want[0] if isinstance(want, list) else want))
        if bad_when:
            continue
        for value in dim.probes():
            for line in _value_problems(probe_base, path, value):
                problems.append(f"search {path}={value!r} ({dim.kind}): {line}")
    return problems


def load(name_or_file: str) -> SearchSpace:
    """A preset from configs/search/ or a YAML file; ConfigError with one line per problem."""
    path = Path(name_or_file)
    if not path.suffix:
        path = SEARCH_DIR / f"{name_or_file}.yaml"
        if not path.is_file():
            known = ", ".join(yaml_names(SEARCH_DIR))
            raise ConfigError([f"search preset {name_or_file!r}: not found in configs/search/ (known: {known})"])
        path = Path(str(path))
    data = load_yaml(path, "search file")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if p != "space")
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"search {loc or path}: {'unknown key' if err['type'] == 'extra_forbidden' else msg}")
        raise ConfigError(lines) from None


def apply(base: dict, params: dict) -> RunConfig:
    """The RunConfig of one trial: the base config with the trial's dotted values (keys without a
    dot, such as the sweep's own ``_cell``/``_seed``, are not config paths)."""
    merged = base
    for path, value in params.items():
        if "." not in path:
            continue
        merged = deep_merge(merged, nest(path, value))
    return RunConfig.model_validate(merged)
