"""Experiment tracking for `cnnctl train` and `cnnctl tune`: ``run.tracker=mlflow`` here, ``run.tracker=wandb``
(offline) in tracking_wandb.py; off by default (``run.tracker=none``). `start` picks the tracker.

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

`cnnctl tune`: one MLflow run per trial, under the same experiment, made by the trial's own process
(which sees every epoch's rank-0 report, whether it trains there or drives a Ray Train run): tags
``cnnctl.sweep``, ``cnnctl.trial``, ``cnnctl.cell`` (the configuration: c0, c1, ...) and ``cnnctl.seed``,
so the seeds of one configuration group by ``cnnctl.cell``; a trial started again (PBT exploit,
``--resume``) logs on into its run; ``cnnctl.checkpoint`` is Tune's copy of the trial's last
checkpoint, in the trial's folder of the sweep.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Callable

from cnnctl.orchestrator.tracking_common import EXTRA, Tracker, epoch_metrics, flat, warn

__all__ = ["MlflowTracker", "check", "flat", "start", "warn"]
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def check(cfg) -> list[str]:
    """One line per problem with the tracker settings that stops the run before Ray starts."""
    kind = cfg.run.tracker
    if kind in ("mlflow", "wandb") and importlib.util.find_spec(kind) is None:
        return [f"run.tracker={kind} needs {kind}: {EXTRA}"]
    if kind == "wandb":
        from cnnctl.orchestrator.tracking_wandb import problems

        return problems(cfg)
    return []


class MlflowTracker(Tracker):
    """One MLflow run, created on the driver; the Ray Train callback logs into it by its id."""

    kind = "mlflow"

    def __init__(self, uri: str | None, experiment: str, say: Callable[[str], None] = warn):
        super().__init__(uri or "its default URI", say)
        self.uri, self.experiment, self.run_id = uri, experiment, None
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

    def start(self, cfg, run_dir: str, trial: dict | None = None) -> bool:
        """Create the run; ``trial`` ({"sweep", "trial", "cell", "seed"}): a sweep's trial, its tags,
        and its run found again where the trial has one already."""
        def create():
            c = self.client()
            exp = c.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else c.create_experiment(self.experiment)
            tags = {"cnnctl.run_dir": run_dir, "cnnctl.model": cfg.model.name, "cnnctl.run": cfg.run.name}
            if trial is None:
                return c.create_run(exp_id, run_name=cfg.run.name, tags=tags).info.run_id
            tags |= {f"cnnctl.{k}": str(v) for k, v in trial.items()}
            if found := self.find(trial["sweep"], trial["trial"], exp_id):
                c.update_run(found, status="RUNNING")
                for key, value in tags.items():
                    c.set_tag(found, key, value)
                return found
            return c.create_run(exp_id, run_name=str(trial["trial"]), tags=tags).info.run_id

        self.run_id = self.call("starting a run", create)
        return self.run_id is not None

    def find(self, sweep: str, trial: str, exp_id: str | None = None) -> str | None:
        """The run id of a sweep's trial, or None."""
        if exp_id is None:
            exp = self.client().get_experiment_by_name(self.experiment)
            if exp is None:
                return None
            exp_id = exp.experiment_id
        sweep = sweep.replace("'", "\\'")  # a quote inside a quoted filter value
        text = f"tags.`cnnctl.sweep` = '{sweep}' and tags.`cnnctl.trial` = '{trial}'"
        runs = self.client().search_runs([exp_id], filter_string=text, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in sorted(flat(config).items())]

        def send():
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client().log_batch(self.run_id, params=params[i:i + 100])

        self.call("logging the config", send)

    def log_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, v, now, step) for k, v in epoch_metrics(row).items()]
        self.call(f"logging epoch {step}", lambda: self.client().log_batch(self.run_id, metrics=metrics))

    def finish(self, status: str, checkpoint: str | None) -> None:
        def end():
            if checkpoint:
                self.client().set_tag(self.run_id, "cnnctl.checkpoint", checkpoint)
            self.client().set_terminated(self.run_id, status)

        self.call("ending the run", end)

    def callbacks(self) -> list:
        """A Ray Train callback (it runs in the controller): each end-of-epoch report of rank 0."""
        from ray.train import UserCallback

        tracker = self

        class EpochToMlflow(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                tracker.on_report(metrics[0] if metrics else {})

        return [EpochToMlflow()]


def start(cfg, run_dir: str, say: Callable[[str], None] = warn, trial: dict | None = None):
    """The run's tracker (MlflowTracker or tracking_wandb.WandbTracker), its run created, or None
    (tracking off, or the tracker unreachable: warned). ``trial``: a sweep's trial (`MlflowTracker.start`)."""
    if cfg.run.tracker == "mlflow":
        tracker = MlflowTracker(cfg.run.tracker_uri, cfg.run.tracker_experiment, say)
    elif cfg.run.tracker == "wandb":
        from cnnctl.orchestrator.tracking_wandb import WandbTracker, folder

        tracker = WandbTracker(folder(cfg, run_dir), say)
    else:
        return None
    return tracker if tracker.start(cfg, run_dir, trial) else None
