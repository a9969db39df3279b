"""A sweep's results, read from its folder alone (no Ray): per configuration (its seeds pooled) a
table and results.csv with the mean, standard deviation, 95 % confidence interval and every seed's
value, each configuration compared with a baseline by Welch's t-test; per trial trials.csv; the best
configuration as a `cnnctl train --config` YAML; and PNG plots with error bars.

Tune writes each trial's results as JSON lines in ``<sweep>/trial_<id>/result.json``; every line
carries the trial's config at that time (PBT changes it), so a sweep killed mid-way reports too.
A trial's value is its best epoch's metric (an ASHA-stopped seed counts with what it reached).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from cnnctl.orchestrator.config import to_yaml
from cnnctl.orchestrator.tune import stats as tune_stats
from cnnctl.orchestrator.tune.plan import CELL, SEED, baseline_cell, flat
from cnnctl.orchestrator.tune.plots import plot
from cnnctl.orchestrator.tune.space import apply
from cnnctl.orchestrator.tune.spec import load_draws, load_spec
from cnnctl.shards import location as loc


@dataclass
class Trial:
    trial_id: str
    status: str
    rows: list[dict]
    best: dict = field(default_factory=dict)  # the row with the best metric
    start: dict = field(default_factory=dict)  # the config the trial started with

    @property
    def params(self) -> dict:
        return flat(self.best["config"]) if "config" in self.best else self.start

    @property
    def cell(self) -> int | None:
        return self.start.get(CELL)

    @property
    def seed(self) -> int | None:
        return self.start.get(SEED)

    @property
    def exploited_from(self) -> str:
        donors = {r["resumed_from_trial"] for r in self.rows
                  if r.get("resumed_from_trial", self.trial_id) != self.trial_id}
        return ",".join(sorted(donors))


@dataclass
class Configuration:
    """One distinct configuration and its trials (one per seed)."""

    cell: int
    params: dict  # its drawn dotted values
    trials: list[Trial]
    metric: str
    draws: int | None = None

    @property
    def label(self) -> str:
        return f"c{self.cell}"

    @property
    def stats(self) -> tune_stats.Summary:
        return tune_stats.Summary([t.best[self.metric] for t in self.trials if t.best])


def _rows(trial_dir: str) -> list[dict]:
    f = loc.join(trial_dir, "result.json")
    if not loc.exists(f):
        return []
    return [json.loads(line) for line in loc.read_text(f).splitlines() if line.strip()]


def _start(trial_dir: str, rows: list[dict]) -> dict:
    if rows:
        return flat(rows[0].get("config", {}))
    f = loc.join(trial_dir, "params.json")
    return flat(json.loads(loc.read_text(f))) if loc.exists(f) else {}


def collect(sweep: str) -> tuple[list[Trial], object, object]:
    """Trials sorted best first, the base RunConfig and the search space."""
    base, space = load_spec(sweep)
    metric, sign = base.tune.metric, (1 if base.tune.mode == "max" else -1)
    trials = []
    for d in [p for p in loc.listdir(sweep) if loc.name(p).startswith("trial_")]:
        rows = [r for r in _rows(d) if metric in r]
        finite = [r for r in rows if math.isfinite(r[metric])]  # a diverged epoch (nan loss) ranks nowhere
        last_epoch = max((r.get("epoch", -1) for r in rows), default=-1)
        if any(loc.name(f).startswith("error.") for f in loc.listdir(d)):
            status = "error"
        elif rows and not finite:
            status = f"diverged ({metric} not finite)"
        elif last_epoch >= base.schedule.epochs - 1:
            status = "done"
        else:
            status = f"stopped at epoch {last_epoch}" if rows else "no result"
        best = max(finite, key=lambda r: sign * r[metric]) if finite else {}
        trials.append(Trial(loc.name(d).removeprefix("trial_"), status, rows, best, _start(d, rows)))
    # A driver killed just after starting a trial, before Tune saved its state, leaves that trial's
    # empty folder; the resumed searcher hands the same configuration and seed to a new trial.
    started = {(t.cell, t.seed) for t in trials if t.rows}
    trials = [t for t in trials if t.rows or (t.cell, t.seed) not in started or t.cell is None]
    trials.sort(key=lambda t: -sign * t.best[metric] if t.best else math.inf)
    return trials, base, space


def configurations(trials: list[Trial], metric: str, sign: int, draws: list[int] | None = None) -> list[Configuration]:
    """The trials grouped by configuration, best mean first (those without a result last)."""
    groups: dict[int, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.cell if t.cell is not None else -1 - len(groups), []).append(t)
    out = []
    for cell, members in groups.items():
        members.sort(key=lambda t: (t.seed is None, t.seed))
        params = {k: v for k, v in members[0].start.items() if "." in k}
        drawn = draws[cell] if draws and 0 <= cell < len(draws) else None
        out.append(Configuration(cell, params, members, metric, drawn))
    out.sort(key=lambda c: -sign * c.stats.mean if c.stats.n else math.inf)
    return out


def compare(configs: list[Configuration], base_dict: dict, baseline: str | None,
            metric: str) -> tuple[Configuration | None, list[str]]:
    """The baseline (named, or else the best) and one sentence per other configuration."""
    scored = [c for c in configs if c.stats.n]
    if len(scored) < 2:
        return None, []
    if baseline:
        cell = baseline_cell(baseline, [c.params for c in scored], base_dict, [c.label for c in scored])
        ref, name = scored[cell], f"the baseline ({baseline})"
    else:
        ref, name = scored[0], "the best"
    lines = []
    for c in scored:
        if c is not ref:
            line = tune_stats.verdict(c.label, f"{ref.label}, {name}", c.stats.values, ref.stats.values, metric)
            if any(t.status != "done" for t in c.trials + ref.trials):  # ASHA stopped, or still running
                line += " Some of these seeds did not run to the last epoch: their values are from earlier epochs."
            lines.append(line)
    return ref, lines


def write(sweep: str, baseline: str | None = None) -> dict:
    """results.csv, trials.csv, best.yaml and the plots, in the sweep's folder (any store); returns
    their locations, the table rows and the comparisons. ``baseline`` overrides tune.baseline."""
    sweep = str(sweep)
    trials, base, space = collect(sweep)
    metric, paths, sign = base.tune.metric, list(space.space), (1 if base.tune.mode == "max" else -1)
    base_dict = base.model_dump(mode="json")
    configs = configurations(trials, metric, sign, load_draws(sweep))
    ref, comparisons = compare(configs, base_dict, baseline or base.tune.baseline, metric)
    out = {"comparisons": comparisons}
    # per trial
    header = ["trial", "config", "seed", "status", metric, "best_epoch", "epochs_run", "exploited_from", *paths]
    rows = [[t.trial_id, f"c{t.cell}", t.seed, t.status, t.best.get(metric), t.best.get("epoch"),
             len({r.get("epoch") for r in t.rows}), t.exploited_from, *[t.params.get(p) for p in paths]]
            for c in configs for t in c.trials]
    out["trials_csv"] = _csv(loc.join(sweep, "trials.csv"), [header, *rows])
    # per configuration
    header = ["rank", "config", "draws", "seeds", f"{metric}_mean", f"{metric}_sd", "ci95_low", "ci95_high",
              f"{metric}_per_seed", "seed_values", "status", f"diff_vs_{ref.label if ref else 'baseline'}", "welch_p",
              "resolved", *paths]
    table = []
    for i, c in enumerate(configs, 1):
        st = c.stats
        test = tune_stats.welch(st.values, ref.stats.values) if ref and c is not ref else None
        statuses = sorted({t.status for t in c.trials})
        table.append([i, c.label, c.draws, st.n, st.mean if st.n else None, st.sd, *(st.ci or (None, None)),
                      [t.best[metric] for t in c.trials if t.best], [t.seed for t in c.trials if t.best],
                      ",".join(statuses), test.diff if test else None, test.p if test else None,
                      ("baseline" if c is ref else "" if test is None else "yes" if test.resolved else "no"),
                      *[c.params.get(p, "") for p in paths]])
    out.update(header=header, table=table, csv=_csv(loc.join(sweep, "results.csv"), [header, *table]))
    n_trials = sum(len(c.trials) for c in configs)
    repeats = sum(c.draws for c in configs if c.draws) - len(configs) if all(c.draws for c in configs) else 0
    fate = ("trained as more seeds of their configuration" if base.tune.trial_seeds == "distinct"
            else "not trained again")
    out["summary"] = (f"{base.tune.name}: {len(configs)} distinct configuration(s), {n_trials} trial(s)"
                      + (f"; {repeats} repeated draw(s), {fate}" if repeats > 0 else "")
                      + f"; {metric}: per configuration, mean, sd and 95 % CI (t) over its seeds; "
                      "comparisons: Welch's t-test")
    if configs and configs[0].stats.n:
        best = configs[0]
        cfg = apply(base_dict, best.params)
        cfg.run.name = f"{base.tune.name}-best"
        ci = best.stats.ci
        text = (f"# best configuration {best.label} of sweep {base.tune.name}: "
                f"{metric} mean {best.stats.mean:.4f} over {best.stats.n} seed(s)"
                f"{f', 95 % CI {ci[0]:.4f} to {ci[1]:.4f}' if ci else ''}\n" + to_yaml(cfg))
        out["best"] = loc.write_bytes(loc.join(sweep, "best.yaml"), text.encode())
    out.update(plot(sweep, trials, configs, metric, space))
    return out


def _csv(path: str, rows: list[list]) -> str:
    text = io.StringIO(newline="")  # a list (the seeds' values) is one cell: space-separated, full precision
    csv.writer(text).writerows([[" ".join(map(str, v)) if isinstance(v, list) else v for v in row] for row in rows])
    return loc.write_bytes(path, text.getvalue().encode())
