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

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.tune import stats as tune_stats  # noqa: E402
from orchestrator.config import to_yaml  # noqa: E402
from orchestrator.tune.plan import CELL, SEED, baseline_cell, flat  # noqa: E402
from orchestrator.tune.space import apply  # noqa: E402
from orchestrator.tune.spec import load_draws, load_spec  # noqa: E402
from shards import location as loc  # noqa: E402


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
        return ",".join(sorted({r["resumed_from_trial"] for r in self.rows if r.get("resumed_from_trial", self.trial_id) != self.trial_id}))


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
        out.append(Configuration(cell, params, members, metric, draws[cell] if draws and 0 <= cell < len(draws) else None))
    out.sort(key=lambda c: -sign * c.stats.mean if c.stats.n else math.inf)
    return out


def compare(configs: list[Configuration], base_dict: dict, baseline: str | None, metric: str) -> tuple[Configuration | None, list[str]]:
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
    rows = [[t.trial_id, f"c{t.cell}", t.seed, t.status, t.best.get(metric), t.best.get("epoch"), len({r.get("epoch") for r in t.rows}),
             t.exploited_from, *[t.params.get(p) for p in paths]] for c in configs for t in c.trials]
    out["trials_csv"] = _csv(loc.join(sweep, "trials.csv"), [header, *rows])
    # per configuration
    header = ["rank", "config", "draws", "seeds", f"{metric}_mean", f"{metric}_sd", "ci95_low", "ci95_high", f"{metric}_per_seed",
              "seed_values", "status", f"diff_vs_{ref.label if ref else 'baseline'}", "welch_p", "resolved", *paths]
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
    out["summary"] = (f"{base.tune.name}: {len(configs)} distinct configuration(s), {n_trials} trial(s)"
                      + (f"; {repeats} repeated draw(s), " + ("trained as more seeds of their configuration" if base.tune.trial_seeds == "distinct"
                                                              else "not trained again") if repeats > 0 else "")
                      + f"; {metric}: per configuration, mean, sd and 95 % CI (t) over its seeds; comparisons: Welch's t-test")
    if configs and configs[0].stats.n:
        best = configs[0]
        cfg = apply(base_dict, best.params)
        cfg.run.name = f"{base.tune.name}-best"
        ci = best.stats.ci
        text = (f"# best configuration {best.label} of sweep {base.tune.name}: {metric} mean {best.stats.mean:.4f} over "
                f"{best.stats.n} seed(s){f', 95 % CI {ci[0]:.4f} to {ci[1]:.4f}' if ci else ''}\n" + to_yaml(cfg))
        out["best"] = loc.write_bytes(loc.join(sweep, "best.yaml"), text.encode())
    out.update(plot(sweep, trials, configs, metric, space))
    return out


def _csv(path: str, rows: list[list]) -> str:
    text = io.StringIO(newline="")  # a list (the seeds' values) is one cell: space-separated, full precision
    csv.writer(text).writerows([[" ".join(map(str, v)) if isinstance(v, list) else v for v in row] for row in rows])
    return loc.write_bytes(path, text.getvalue().encode())


def _axis_values(values: list, log: bool) -> tuple[list[float], list[str] | None]:
    """Numbers as they are (log10 for log ranges); anything else as category indices with labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [math.log10(v) if log else float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def _spans_decades(values: list) -> bool:
    """Positive numbers two or more decades apart (a grid such as 1e-5, 1e-4, 1e-3) read on a log axis."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(values) and min(nums) > 0 and max(nums) / min(nums) >= 100


def plot(sweep: str, trials: list[Trial], configs: list[Configuration], metric: str, space) -> dict:
    scored = [c for c in configs if c.stats.n]
    out = {}
    if not scored:
        return out
    paths = list(space.space)
    # each configuration's mean against each hyperparameter, error bars = the 95 % CI over its seeds;
    # a configuration the dimension does not apply to (LRN off for alpha) is a band across the panel
    cols = min(3, len(paths))
    rows = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False, constrained_layout=True)
    for ax, path in zip(axes.flat, paths):
        on = [c for c in scored if path in c.params]
        for k, c in enumerate(c for c in scored if path not in c.params):
            low, high = c.stats.ci or (c.stats.mean, c.stats.mean)
            colour = f"C{(k + 1) % 10}"
            ax.axhspan(low, high, color=colour, alpha=0.15)
            ax.axhline(c.stats.mean, color=colour, lw=1, label=f"{c.label}: {path} n/a ({c.stats.n} seeds)")
        if on:
            log = space.space[path].loguniform is not None or _spans_decades([c.params[path] for c in on])
            xs, labels = _axis_values([c.params[path] for c in on], log)
            for x, c in zip(xs, on):
                ci = c.stats.ci
                yerr = [[c.stats.mean - ci[0]], [ci[1] - c.stats.mean]] if ci else None
                ax.errorbar([x], [c.stats.mean], yerr=yerr, fmt="o", color="C0", capsize=3)
                ax.scatter([x] * c.stats.n, c.stats.values, s=8, color="C0", alpha=0.35)
            ax.set_xlabel(f"log10 {path}" if log and labels is None else path)
            if labels:
                ax.set_xticks(range(len(labels)), labels)
        else:
            ax.set_xlabel(f"{path} (applies to none)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(paths):]:
        ax.axis("off")
    seeds = sorted({c.stats.n for c in scored})
    fig.suptitle(f"{loc.name(sweep)}: {metric} per configuration (mean, 95 % CI over {'/'.join(map(str, seeds))} seed(s); dots: seeds)")
    out["metric_vs_params"] = _save(fig, loc.join(sweep, "metric_vs_params.png"))
    # parallel coordinates: every axis scaled to [0, 1], each configuration's mean one line
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(paths) + 2), 4.5), constrained_layout=True)
    columns = []
    for path in paths:
        on = [c for c in scored if path in c.params]
        xs, _ = _axis_values([c.params[path] for c in on], space.space[path].loguniform is not None) if on else ([], None)
        low, high = (min(xs), max(xs)) if xs else (0, 0)
        scaled = {id(c): (x - low) / (high - low) if high > low else 0.5 for c, x in zip(on, xs)}
        columns.append([scaled.get(id(c), math.nan) for c in scored])  # n/a: the line breaks there
    scores = [c.stats.mean for c in scored]
    lo, hi = min(scores), max(scores)
    cmap = plt.get_cmap("viridis")
    for i, score in enumerate(scores):
        ax.plot(range(len(paths) + 1), [col[i] for col in columns] + [(score - lo) / (hi - lo) if hi > lo else 0.5],
                color=cmap((score - lo) / (hi - lo) if hi > lo else 0.5), alpha=0.8, marker=".")
    ax.set_xticks(range(len(paths) + 1), [*paths, f"mean {metric}"], rotation=20, ha="right")
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"{loc.name(sweep)}: parallel coordinates per configuration (colour = mean {metric}, {lo:.3f} to {hi:.3f})")
    out["parallel_coordinates"] = _save(fig, loc.join(sweep, "parallel_coordinates.png"))
    # every trial's learning curve, coloured by its configuration
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for k, c in enumerate(configs):
        for j, t in enumerate(c.trials):
            points = sorted((r["epoch"], r[metric]) for r in t.rows if "epoch" in r)
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{k % 10}", alpha=0.8,
                        label=f"{c.label} ({len(c.trials)} seed(s))" if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(configs) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(f"{loc.name(sweep)}: learning curves of all trials (one colour per configuration)")
    out["learning_curves"] = _save(fig, loc.join(sweep, "learning_curves.png"))
    return out


def _save(fig, path: str) -> str:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return loc.write_bytes(path, png.getvalue())
