"""A sweep's results, read from its folder alone (no Ray): a table and CSV sorted by the metric,
the best trial's config as a `cnnctl train --config` YAML, and PNG plots.

Tune writes each trial's results as JSON lines in ``<sweep>/trial_<id>/result.json``; every line
carries the trial's config at that time (PBT changes it), so a sweep killed mid-way reports too.
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

from orchestrator.config import to_yaml  # noqa: E402
from orchestrator.search_space import apply  # noqa: E402
from orchestrator.tune import load_spec  # noqa: E402
from shards import location as loc  # noqa: E402


@dataclass
class Trial:
    trial_id: str
    status: str
    rows: list[dict]
    best: dict = field(default_factory=dict)  # the row with the best metric

    @property
    def params(self) -> dict:
        return self.best.get("config", {})

    @property
    def exploited_from(self) -> str:
        return ",".join(sorted({r["resumed_from_trial"] for r in self.rows if r.get("resumed_from_trial", self.trial_id) != self.trial_id}))


def _rows(trial_dir: str) -> list[dict]:
    f = loc.join(trial_dir, "result.json")
    if not loc.exists(f):
        return []
    return [json.loads(line) for line in loc.read_text(f).splitlines() if line.strip()]


def collect(sweep: str) -> tuple[list[Trial], object, object]:
    """Trials sorted best first, the base RunConfig and the search space."""
    base, space = load_spec(sweep)
    metric, sign = base.tune.metric, (1 if base.tune.mode == "max" else -1)
    trials = []
    for d in [p for p in loc.listdir(sweep) if loc.name(p).startswith("trial_")]:
        rows = [r for r in _rows(d) if metric in r]
        last_epoch = max((r.get("epoch", -1) for r in rows), default=-1)
        if any(loc.name(f).startswith("error.") for f in loc.listdir(d)):
            status = "error"
        elif last_epoch >= base.schedule.epochs - 1:
            status = "done"
        else:
            status = f"stopped at epoch {last_epoch}" if rows else "no result"
        best = max(rows, key=lambda r: sign * r[metric]) if rows else {}
        trials.append(Trial(loc.name(d).removeprefix("trial_"), status, rows, best))
    trials.sort(key=lambda t: -sign * t.best[metric] if t.best else math.inf)
    return trials, base, space


def write(sweep: str) -> dict:
    """results.csv, best.yaml and the plots, in the sweep's folder (any store); returns their
    locations and the table rows."""
    sweep = str(sweep)
    trials, base, space = collect(sweep)
    metric, paths = base.tune.metric, list(space.space)
    header = ["rank", "trial", "status", metric, "best_epoch", "epochs_run", "exploited_from", *paths]
    table = []
    for i, t in enumerate(trials, 1):
        table.append([i, t.trial_id, t.status, t.best.get(metric), t.best.get("epoch"), len({r.get("epoch") for r in t.rows}),
                      t.exploited_from, *[t.params.get(p) for p in paths]])
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *table])
    out = {"csv": loc.write_bytes(loc.join(sweep, "results.csv"), text.getvalue().encode()), "header": header, "table": table}
    if trials and trials[0].best:
        best = apply(base.model_dump(mode="json"), {p: v for p, v in trials[0].params.items() if p in paths or "." in p})
        best.run.name = f"{base.tune.name}-best"
        text = (f"# best trial {trials[0].trial_id} of sweep {base.tune.name}: {metric} "
                f"{trials[0].best[metric]:.4f} at epoch {trials[0].best.get('epoch')}\n" + to_yaml(best))
        out["best"] = loc.write_bytes(loc.join(sweep, "best.yaml"), text.encode())
    out.update(plot(sweep, trials, metric, space))
    return out


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


def plot(sweep: str, trials: list[Trial], metric: str, space) -> dict:
    scored = [t for t in trials if t.best]
    out = {}
    if not scored:
        return out
    paths = list(space.space)
    scores = [t.best[metric] for t in scored]
    # metric against each hyperparameter
    cols = min(3, len(paths))
    rows = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, constrained_layout=True)
    # An on/off dimension (LRN enabled, say) colours every other panel: "off" trials ignore the knobs.
    switch = next((p for p in paths if all(isinstance(t.params.get(p), bool) for t in scored)), None)
    for ax, path in zip(axes.flat, paths):
        values = [t.params.get(path) for t in scored]
        log = space.space[path].loguniform is not None or _spans_decades(values)
        xs, labels = _axis_values(values, log)
        if switch and path != switch:
            for flag, colour in ((True, "tab:blue"), (False, "tab:orange")):
                pick = [i for i, t in enumerate(scored) if t.params.get(switch) is flag]
                ax.scatter([xs[i] for i in pick], [scores[i] for i in pick], color=colour, label=f"{switch}={flag}")
            ax.legend(fontsize=7)
        else:
            ax.scatter(xs, scores)
        ax.set_xlabel(f"log10 {path}" if log and labels is None else path)
        ax.set_ylabel(metric)
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(paths):]:
        ax.axis("off")
    fig.suptitle(f"{loc.name(sweep)}: best {metric} of each trial against each hyperparameter")
    out["metric_vs_params"] = _save(fig, loc.join(sweep, "metric_vs_params.png"))
    # parallel coordinates: every axis scaled to [0, 1], each trial one line coloured by the metric
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(paths) + 2), 4.5), constrained_layout=True)
    columns = []
    for path in paths:
        xs, _ = _axis_values([t.params.get(path) for t in scored], space.space[path].loguniform is not None)
        low, high = min(xs), max(xs)
        columns.append([(x - low) / (high - low) if high > low else 0.5 for x in xs])
    lo, hi = min(scores), max(scores)
    cmap = plt.get_cmap("viridis")
    for i, score in enumerate(scores):
        ax.plot(range(len(paths) + 1), [c[i] for c in columns] + [(score - lo) / (hi - lo) if hi > lo else 0.5],
                color=cmap((score - lo) / (hi - lo) if hi > lo else 0.5), alpha=0.8)
    ax.set_xticks(range(len(paths) + 1), [*paths, metric], rotation=20, ha="right")
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"{loc.name(sweep)}: parallel coordinates (colour = {metric}, {lo:.3f} to {hi:.3f})")
    out["parallel_coordinates"] = _save(fig, loc.join(sweep, "parallel_coordinates.png"))
    # every trial's learning curve
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for t in trials:
        points = sorted((r["epoch"], r[metric]) for r in t.rows if "epoch" in r)
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{t.trial_id} ({t.status})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{loc.name(sweep)}: learning curves of all trials")
    out["learning_curves"] = _save(fig, loc.join(sweep, "learning_curves.png"))
    return out


def _save(fig, path: str) -> str:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return loc.write_bytes(path, png.getvalue())
