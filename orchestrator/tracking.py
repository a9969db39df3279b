"""Experiment tracking for `cnnctl train`: ``run.tracker=mlflow`` (off by default, `run.tracker=none`).

One MLflow run per `cnnctl train`, under ``run.tracker_experiment`` at ``run.tracker_uri``:
- params: the resolved config (after `train.prepare_run`: classes and normalisation settled), one
  dotted key per leaf, as `config.yaml` beside the run holds it;
- metrics: each end-of-epoch report of rank 0 (train/val loss and top-1, val top-5, lr, images/s,
  epoch time), step = epoch; logged from Ray Train's controller as the reports arrive, so no worker
  talks to the tracker (mid-epoch step checkpoints are not logged);
- tags: the run folder, the model, and at the end ``cnnctl.checkpoint``, the final checkpoint's location
  in the run's store; the run's status is FINISHED, FAILED or KILLED.

The tracker never fails a run: a tracker that cannot be reached or refuses a call is one warning line,
and nothing more is sent to it for that run. Requests use few retries (MLFLOW_HTTP_REQUEST_* set
only where the environment does not already set them), so a down tracker costs seconds, not minutes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Callable

EXTRA = "pip install 'cnnctl[track]'"
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
EPOCH_METRICS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec", "epoch_time_s")


def check(cfg) -> list[str]:
    """One line per problem with the tracker settings that stops the run before Ray starts."""
    if cfg.run.tracker == "mlflow" and importlib.util.find_spec("mlflow") is None:
        return [f"run.tracker=mlflow needs mlflow: {EXTRA}"]
    return []


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _short(exc: BaseException) -> str:
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


class MlflowTracker:
    """One MLflow run, created on the driver; the Ray Train callback logs into it by its id."""

    def __init__(self, uri: str | None, experiment: str, say: Callable[[str], None] = warn):
        self.uri, self.experiment, self.run_id, self.say, self.broken = uri, experiment, None, say, False
        self._client = None

    def __getstate__(self):  # pickled into Ray Train's controller: no client, no console
        return {**self.__dict__, "_client": None, "say": warn}

    def client(self):
        if self._client is None:
            for key, value in _HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _call(self, what: str, fn, *args, **kw):
        """``fn(*args, **kw)``; the first failure is one warning line and turns the tracker off."""
        if self.broken:
            return None
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - whatever the tracker says, training goes on
            self.broken = True
            self.say(f"warning: tracker mlflow at {self.uri or 'its default URI'}: {what} failed ({_short(exc)}); "
                     "training goes on without it")
            return None

    def start(self, cfg, run_dir: str) -> bool:
        def create():
            c = self.client()
            exp = c.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else c.create_experiment(self.experiment)
            tags = {"cnnctl.run_dir": run_dir, "cnnctl.model": cfg.model.name, "cnnctl.run": cfg.run.name}
            return c.create_run(exp_id, run_name=cfg.run.name, tags=tags).info.run_id

        self.run_id = self._call("starting a run", create)
        return self.run_id is not None

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in sorted(flat(config).items())]

        def send():
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client().log_batch(self.run_id, params=params[i:i + 100])

        self._call("logging the config", send)

    def log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, float(row[k]), now, step) for k in EPOCH_METRICS if isinstance(row.get(k), (int, float))]
        self._call(f"logging epoch {step}", lambda: self.client().log_batch(self.run_id, metrics=metrics))

    def finish(self, status: str, checkpoint: str | None) -> None:
        def end():
            if checkpoint:
                self.client().set_tag(self.run_id, "cnnctl.checkpoint", checkpoint)
            self.client().set_terminated(self.run_id, status)

        self._call("ending the run", end)

    def callbacks(self) -> list:
        """A Ray Train callback (it runs in the controller): each end-of-epoch report of rank 0."""
        from ray.train import UserCallback

        tracker = self

        class EpochToMlflow(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                row = metrics[0] if metrics else {}
                if "epoch" in row and not row.get("mid_epoch"):
                    tracker.log_epoch(row)

        return [EpochToMlflow()]


def start(cfg, run_dir: str, say: Callable[[str], None] = warn) -> MlflowTracker | None:
    """The run's tracker, its run created, or None (tracking off, or the tracker unreachable: warned)."""
    if cfg.run.tracker != "mlflow":
        return None
    tracker = MlflowTracker(cfg.run.tracker_uri, cfg.run.tracker_experiment, say)
    return tracker if tracker.start(cfg, run_dir) else None
