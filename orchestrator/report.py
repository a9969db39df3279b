"""`cnnctl report RUN [RUN...]`: PNG plots of runs' metrics.jsonl (loss, accuracy, lr, img/s per
epoch); several runs share the panels, and the legend says what differs between their configs."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

from cnnctl.orchestrator.metrics import read  # noqa: E402
from cnnctl.shards import location as loc  # noqa: E402

PANELS = [
    ("loss", [("train_loss", "train"), ("val_loss", "val")], None),
    ("accuracy", [("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")], None),
    ("learning rate", [("lr", "lr (end of epoch)")], "log"),
    ("throughput (img/s)", [("images_per_sec", "train img/s")], None),
]


def plot_run(run: str, out: str | Path | None = None) -> str:
    """The PNG, written to ``out`` or beside the run (in its store: a local folder or a URL)."""
    rows = read(run)
    if not rows:
        raise FileNotFoundError(f"{run}: no metrics.jsonl (has the run finished an epoch?)")
    out = str(out or loc.join(run, "report.png"))
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (title, series, scale) in zip(axes.flat, PANELS):
        for key, label in series:
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if scale and all((r.get("lr") or 0) > 0 for r in rows):
            ax.set_yscale(scale)
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(rows, key=lambda r: r.get("val_top1", 0))
    fig.suptitle(f"{loc.name(run)}: final val top-1 {rows[-1].get('val_top1', float('nan')):.4f} "
                 f"(best {best.get('val_top1', float('nan')):.4f} at epoch {best['epoch']})")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return loc.write_bytes(out, png.getvalue())


# Where a run is stored and how it was reached are not what makes runs differ.
NOT_A_DIFFERENCE = ("run.name", "run.storage", "parallel.address")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(configs: list[dict]) -> list[str]:
    """The config fields (dotted) whose values are not the same in every run."""
    flats = [_flat(c) for c in configs]
    keys = sorted({k for f in flats for k in f} - set(NOT_A_DIFFERENCE))
    return [k for k in keys if len({json_key(f.get(k)) for f in flats}) > 1]


def json_key(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip()


def plot_runs(runs: list[str], out: str | None = None) -> str:
    """Several runs' curves on shared panels: train dashed, val solid, one colour per run; the
    legend names each run by the config fields that differ."""
    curves = []
    for run in runs:
        rows = read(run)
        if not rows:
            raise FileNotFoundError(f"{run}: no metrics.jsonl (has the run finished an epoch?)")
        path = loc.join(run, "config.yaml")
        config = yaml.safe_load(loc.read_text(path)) if loc.exists(path) else {}
        curves.append((run, rows, config))
    keys = differences([c for _, _, c in curves])
    out = str(out or loc.join(loc.parent(runs[0]), f"report-{'+'.join(loc.name(r) for r in runs)}.png"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    for n, (run, rows, config) in enumerate(curves):
        flat, colour = _flat(config), f"C{n % 10}"
        label = loc.name(run) + (": " + ", ".join(f"{k}={json_key(flat.get(k))}" for k in keys) if keys else "")
        epochs = [r["epoch"] for r in rows]
        for ax, (title, series, scale) in zip(axes.flat, PANELS):
            for key, name in series:
                if key in ("train_top1", "val_top5"):
                    continue  # one accuracy curve per run keeps several runs readable
                values = [r.get(key) for r in rows]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, color=colour, linestyle="--" if key.startswith("train") else "-",
                            marker=".", label=f"{label} ({name})" if title == "loss" else label)
            ax.set_title(title if title != "accuracy" else "val top-1")
            ax.set_xlabel("epoch")
            if scale and all((r.get("lr") or 0) > 0 for r in rows):
                ax.set_yscale(scale)
            ax.grid(alpha=0.3)
    for ax in axes.flat:
        ax.legend(fontsize=7)
    fig.suptitle(f"{len(runs)} runs"
                 + (f"; they differ in {', '.join(keys)}" if keys else "; their configs are the same"))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return loc.write_bytes(out, png.getvalue())
