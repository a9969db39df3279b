"""`cnnctl report RUN`: PNG plots of a run's metrics.jsonl (loss, accuracy, lr, img/s per epoch)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.metrics import read  # noqa: E402
from shards import location as loc  # noqa: E402

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
