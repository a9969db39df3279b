"""What a sweep trains: the space's draws reduced to distinct configurations, each times its seeds.

Two draws are one configuration when their resolved RunConfigs are equal (`space.effective_key`):
a dimension whose `when:` failed was never drawn, and a value equal to the base's changes nothing.
A configuration drawn again is not trained again: under ``tune.trial_seeds=same`` it is dropped (it
would repeat a run exactly), under ``distinct`` it becomes ``tune.seeds`` more seeds of that
configuration. No Ray here: the plan is computed, printed and saved before Ray starts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from cnnctl.orchestrator.config import ConfigError, RunConfig
from cnnctl.orchestrator.tune.space import SearchSpace, effective_key, lookup
from cnnctl.orchestrator.yaml_tree import parse_assignments

CELL, SEED = "_cell", "_seed"  # a trial's configuration number and training seed, beside its dotted paths
TRIAL = "_trial"  # random search: the planned trial, one value of a Tune grid


def flat(config: dict) -> dict:
    """A Tune trial's config as {CELL, SEED, dotted path: value}: a random search's planned trial
    (under TRIAL) with any top-level paths (those PBT mutates) over it; optuna's is flat already."""
    return {**config.get(TRIAL, {}), **{k: v for k, v in config.items() if k != TRIAL}}


def trial_seed(run_seed: int, trial_seeds: str, seed_index: int, trial_number: int) -> int:
    """same: seed j of every configuration is run.seed + j (paired across configurations);
    distinct: trial i of the sweep trains with run.seed + i."""
    return run_seed + (trial_number if trial_seeds == "distinct" else seed_index)


@dataclass
class Plan:
    cells: list[dict] = field(default_factory=list)  # each configuration's drawn dotted values
    draws: list[int] = field(default_factory=list)  # how many times each configuration was drawn
    trials: list[dict] = field(default_factory=list)  # {CELL, SEED, **values}, in the order they start

    @property
    def repeats(self) -> int:
        return sum(self.draws) - len(self.cells)

    def summary(self, cfg: RunConfig) -> str:
        """One line: draws, distinct configurations, what became of the repeats, trials."""
        draws, distinct = sum(self.draws), len(self.cells)
        fate = ("trained as more seeds of their configuration" if cfg.tune.trial_seeds == "distinct"
                else "not trained again")
        repeats = f"; {self.repeats} repeat(s) {fate}" if self.repeats else ""
        return (f"{draws} draw(s) of the space: {distinct} distinct configuration(s){repeats}; "
                f"{len(self.trials)} trial(s) ({cfg.tune.seeds} seed(s) each)")


def make(cfg: RunConfig, space: SearchSpace, start: dict | None = None) -> Plan:
    """``tune.num_samples`` samples of the space (each a conditional grid), merged into distinct
    configurations, then their trials: seed 0 of every configuration first, so an early stop or a
    killed sweep has seen every configuration once. ``start`` gives paths every trial must carry
    (PBT mutates only keys a trial has) their starting value where the space does not draw them."""
    base = cfg.model_dump(mode="json")
    rng = random.Random(cfg.run.seed)  # the sweep's draws are reproducible
    plan, known = Plan(), {}
    for _ in range(cfg.tune.num_samples):
        for values in space.draws(rng, base):
            values = {**(start or {}), **values}
            key = effective_key(base, values)
            if key in known:
                plan.draws[known[key]] += 1
            else:
                known[key] = len(plan.cells)
                plan.cells.append(values)
                plan.draws.append(1)
    per_cell = [cfg.tune.seeds * (n if cfg.tune.trial_seeds == "distinct" else 1) for n in plan.draws]
    for j in range(max(per_cell)):
        for cell, values in enumerate(plan.cells):
            if j < per_cell[cell]:
                seed = trial_seed(cfg.run.seed, cfg.tune.trial_seeds, j, len(plan.trials))
                plan.trials.append({CELL: cell, SEED: seed, **values})
    return plan


def parse_baseline(text: str) -> dict:
    """``path=value[,path=value...]`` (values read as --set reads them: false, 1e-4, cosine) -> {path: value}."""
    return parse_assignments(text, RunConfig, "tune.baseline")


def _same(a, b) -> bool:
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)]
    if all(numbers):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def baseline_cell(text: str, cells: list[dict], base: dict, labels: list[str] | None = None) -> int:
    """The one configuration the baseline names (its paths read from the drawn values, or the base
    config's where a configuration did not draw them); ConfigError when it names none or several."""
    want = parse_baseline(text)
    hits = [i for i, values in enumerate(cells)
            if all(_same(values[p] if p in values else lookup(base, p), v) for p, v in want.items())]
    if len(hits) != 1:
        labels = labels or [f"c{i}" for i in range(len(cells))]
        which = "none" if not hits else f"{len(hits)} ({', '.join(labels[i] for i in hits)}); name more paths"
        raise ConfigError([f"tune.baseline {text}: matches {which} of the sweep's {len(cells)} configuration(s)"])
    return hits[0]
