"""A sweep's plots, drawn from the report's configurations and trials: each configuration's mean
against each hyperparameter (error bars: the 95 % CI over its seeds), parallel coordinates, and every
trial's learning curve; PNG files in the sweep's folder (any store).
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from cnnctl.shards import location as loc  # noqa: E402


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


def plot(sweep: str, trials: list, configs: list, metric: str, space) -> dict:
    """The PNGs of report.py's trials and configurations (best first); returns their locations."""
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
    fig.suptitle(f"{loc.name(sweep)}: {metric} per configuration "
                 f"(mean, 95 % CI over {'/'.join(map(str, seeds))} seed(s); dots: seeds)")
    out["metric_vs_params"] = _save(fig, loc.join(sweep, "metric_vs_params.png"))
    # parallel coordinates: every axis scaled to [0, 1], each configuration's mean one line
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(paths) + 2), 4.5), constrained_layout=True)
    columns = []
    for path in paths:
        on = [c for c in scored if path in c.params]
        log = space.space[path].loguniform is not None
        xs, _ = _axis_values([c.params[path] for c in on], log) if on else ([], None)
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
    ax.set_title(f"{loc.name(sweep)}: parallel coordinates per configuration "
                 f"(colour = mean {metric}, {lo:.3f} to {hi:.3f})")
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
