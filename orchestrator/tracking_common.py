"""What the experiment trackers (tracking.py: MLflow, tracking_wandb.py: W&B offline) share: the epoch
metrics they log, the config as dotted keys, and the rule that a tracker never fails a run."""

from __future__ import annotations

import sys
from typing import Callable

EXTRA = "pip install 'cnnctl[track]'"
EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec",
                 "epoch_time_s")


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (lists and None as their YAML-ish text)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat(value, path + ".")
        else:
            out[path] = "null" if value is None else str(value)
    return out


def epoch_metrics(row: dict) -> dict[str, float]:
    """The numbers of an end-of-epoch report that trackers log."""
    return {k: float(row[k]) for k in EPOCH_METRICS if isinstance(row.get(k), (int, float))}


class Tracker:
    """A tracker's calls: the first failure is one warning line and turns the tracker off."""

    kind = "tracker"

    def __init__(self, where: str, say: Callable[[str], None] = warn):
        self.where, self.say, self.broken = where, say, False

    def call(self, what: str, fn, *args, **kw):
        """``fn(*args, **kw)``, or None once the tracker has failed (said once)."""
        if self.broken:
            return None
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - whatever the tracker says, training goes on
            self.broken = True
            self.say(f"warning: tracker {self.kind} at {self.where}: {what} failed ({short(exc)}); "
                     "training goes on without it")
            return None

    def on_report(self, row: dict) -> None:
        """A rank-0 report: logged where it ends an epoch (a step checkpoint's report is not)."""
        if "epoch" in row and not row.get("mid_epoch"):
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        raise NotImplementedError
