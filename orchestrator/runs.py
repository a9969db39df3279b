"""`cnnctl runs [STORAGE]`: the runs under a storage location, and where each stands.

A run folder holds config.yaml (written when the run starts), metrics.jsonl (a row per finished
epoch), checkpoint_*/ and status.json, which the `cnnctl train` driver writes when it starts and
ends. A driver that was killed leaves "running" behind with its pid; a pid that is gone on this
host means the run stopped.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import yaml

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.metrics import read
from cnnctl.shards import location as loc

STATUS = "status.json"


def mark(run: str, state: str, error: str | None = None) -> None:
    """Record the driver's view of the run (running, finished or failed) beside it."""
    status = {"state": state, "host": socket.gethostname(), "pid": os.getpid(),
              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if error:
        status["error"] = error.strip().splitlines()[-1][:300]
    loc.write_bytes(loc.join(run, STATUS), (json.dumps(status) + "\n").encode())


def _driver_alive(status: dict) -> bool:
    if status.get("host") != socket.gethostname():
        return True  # another machine's driver: trust what it last wrote
    try:
        os.kill(int(status["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunRow:
    name: str
    model: str
    layout: str
    done: int
    planned: int
    best: float | None
    last: float | None
    status: str
    where: str
    note: str = ""
    world: str = "-"  # the world of its newest checkpoint: where an elastic run trains now


def describe(run: str) -> RunRow | None:
    """One run's row; None for a folder that is not a run (no config.yaml)."""
    try:
        raw = loc.read_text(loc.join(run, "config.yaml"))
    except (FileNotFoundError, OSError):
        return None
    name = loc.name(run)
    try:
        cfg = RunConfig.model_validate(yaml.safe_load(raw))
    except Exception as exc:  # noqa: BLE001 - a damaged config is a row that says so, not a crash
        why = f"config.yaml unreadable: {str(exc).splitlines()[0]}"
        return RunRow(name, "?", "?", 0, 0, None, None, "failed", run, why)
    rows = read(run)
    epochs = sorted({r["epoch"] for r in rows if "epoch" in r})
    tops = [r["val_top1"] for r in rows if r.get("val_top1") is not None]
    p = cfg.parallel
    nodes = f"{p.min_nodes}-{p.nodes}" if p.elastic else p.nodes  # planned: an elastic run's range
    layout = f"{nodes}x{p.workers_per_node} dp={p.dp} mp={p.mp}"
    try:
        status = json.loads(loc.read_text(loc.join(run, STATUS)))
    except (FileNotFoundError, OSError, ValueError):
        status = {}
    done, planned = (epochs[-1] + 1 if epochs else 0), cfg.schedule.epochs
    # checkpoint_*.json is Ray's snapshot, not a checkpoint
    checkpoints = [c for c in loc.listdir(run) if loc.name(c).startswith("checkpoint_") and not c.endswith(".json")]
    complete = [c for c in checkpoints if ckpt.is_complete(c)]
    note = status.get("error", "")
    if done >= planned and complete:
        state = "finished"
    elif status.get("state") == "running" and _driver_alive(status):
        state = "running"
    elif complete:
        state = "resumable"  # rerunning the same command continues from the newest complete checkpoint
    else:
        state = "failed"
    if len(complete) < len(checkpoints):
        note = "; ".join(filter(None, [note, f"{len(checkpoints) - len(complete)} torn checkpoint(s) ignored"]))
    return RunRow(name, cfg.model.name, layout, done, planned, max(tops) if tops else None, tops[-1] if tops else None,
                  state, run, note, world(ckpt.find(run)) if complete else "-")


def world(checkpoint: str) -> str:
    """'2 (dp 2)': the world a checkpoint was taken at (its config, as its workers settled it)."""
    p = ckpt.load_config(checkpoint).parallel
    return f"{p.world} (dp {p.dp})"


def list_runs(storage: str) -> list[RunRow]:
    """Every run directly under ``storage`` (a sweep's trial runs are under <sweep>/train)."""
    rows = [describe(folder) for folder in sorted(loc.listdir(storage))]
    return [r for r in rows if r is not None]
