"""`run.tracker=wandb`: Weights & Biases in offline mode only, logging what `run.tracker=mlflow` logs.

Nothing goes over the network: ``wandb.init(mode="offline")`` writes the run under
``<folder>/wandb/offline-run-<time>-<id>/`` (``run-<id>.wandb`` holds its records; `wandb sync` uploads
them later, from wherever W&B can be reached). <folder> is ``run.tracker_uri`` (a local folder), else
the run folder (a local run.storage; an object store needs run.tracker_uri). wandb's own service
(wandb-core, a child of the process that calls wandb.init) talks to it over a Unix socket and listens on
no TCP port (tests/e2e/test_tracking_wandb.py checks it). Ending the run stops that service
(wandb.teardown), so the run's files are complete when the run or trial returns.

Logged: the resolved config (the run's config, nested as config.yaml), each epoch's rank-0 metrics
with ``epoch`` as their x-axis, and in the summary ``checkpoint`` (the final checkpoint's location in
the run's store) and ``status`` (FINISHED, FAILED, KILLED). The project is ``run.tracker_experiment``.

Where wandb.init runs: in the one process that lives as long as the run, so one wandb run gets every
epoch.
- `cnnctl train`: the driver (`train.fit`). The epochs' reports arrive in Ray Train's controller, an
  actor that may sit on another node and whose end Ray Train does not tell a user callback; and a
  wandb run belongs to the process that made it. So the controller's callback only puts each
  end-of-epoch row on a Ray queue (no CPU), and a thread of the driver logs the rows into the driver's
  run: one run across worker restarts, its files on the machine that ran cnnctl.
- `cnnctl tune`: the trial's own process, which sees each epoch's report itself (tune/trial.py). Its
  group is the sweep and configuration (``<sweep>-c0``), its tags the configuration and the seed, so
  the seeds of one configuration group. Offline runs cannot be resumed: a trial started again (PBT
  exploit, --resume) is another run of the same group, named after the trial.

As with MLflow, a failing tracker is one warning line, and the run goes on without it.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from cnnctl.orchestrator.tracking_common import Tracker, epoch_metrics, warn
from cnnctl.shards import location as loc


def folder(cfg, run_dir: str) -> str:
    """Where the offline run's files go: run.tracker_uri, else the (local) run folder."""
    return loc.absolute(cfg.run.tracker_uri or run_dir)


def problems(cfg) -> list[str]:
    """What stops a wandb-tracked run before Ray starts (wandb itself is checked by `tracking.check`)."""
    if cfg.run.tracker_uri and loc.is_url(cfg.run.tracker_uri):
        return [f"run.tracker=wandb runs offline: run.tracker_uri is a local folder, not {cfg.run.tracker_uri}"]
    if not cfg.run.tracker_uri and loc.is_url(cfg.run.storage):
        return ["run.tracker=wandb writes its offline files on this machine: with run.storage in an object store, "
                "set run.tracker_uri to a local folder"]
    return []


class WandbTracker(Tracker):
    """One offline wandb run, made in this process (see the module's docstring)."""

    kind = "wandb"

    def __init__(self, where: str, say: Callable[[str], None] = warn):
        super().__init__(f"{where} (offline)", say)
        self.folder, self.run, self.queue, self.thread = where, None, None, None

    def start(self, cfg, run_dir: str, trial: dict | None = None) -> bool:
        """Create the run; ``trial`` ({"sweep", "trial", "cell", "seed"}): a sweep's trial (group, tags)."""
        def init():
            import wandb

            os.makedirs(self.folder, exist_ok=True)
            settings = wandb.Settings(mode="offline", console="off", silent=True, x_disable_stats=True,
                                      x_disable_machine_info=True, disable_git=True, save_code=False,
                                      x_save_requirements=False)
            about = {"cnnctl": {"run_dir": run_dir, **(trial or {})}}
            group = {} if trial is None else {
                "group": f"{loc.name(trial['sweep'])}-{trial['cell']}", "job_type": "trial",
                "tags": [str(trial["cell"]), f"seed={trial['seed']}"]}
            run = wandb.init(project=cfg.run.tracker_experiment, dir=self.folder, settings=settings,
                             name=str(trial["trial"]) if trial else cfg.run.name, config=about, **group)
            run.define_metric("*", step_metric="epoch")
            return run

        self.run = self.call("starting a run", init)
        return self.run is not None

    def log_config(self, config: dict) -> None:
        self.call("logging the config", lambda: self.run.config.update(config, allow_val_change=True))

    def log_epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        self.call(f"logging epoch {epoch}", lambda: self.run.log({**epoch_metrics(row), "epoch": epoch}))

    def finish(self, status: str, checkpoint: str | None) -> None:
        self._stop_queue()

        def end():
            self.run.summary.update({"status": status, **({"checkpoint": checkpoint} if checkpoint else {})})
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)

        self.call("ending the run", end)
        if self.run is None:
            return
        import wandb

        try:
            if self.broken:  # what it has is kept
                self.run.finish(exit_code=1, quiet=True)
            wandb.teardown()  # stops wandb-core, which closes the run's files: complete once this returns
        except (Exception, SystemExit):  # noqa: BLE001 - said once already; teardown exits on a core error
            pass

    def callbacks(self) -> list:
        """A Ray Train callback (in the controller) that puts each end-of-epoch row of rank 0 on a Ray
        queue; a thread of this process logs them into the run."""
        from ray.train import UserCallback
        from ray.util.queue import Queue

        queue = self.queue = Queue(actor_options={"num_cpus": 0})
        self.thread = threading.Thread(target=self._drain, daemon=True, name="wandb-epochs")
        self.thread.start()

        class EpochToQueue(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                row = metrics[0] if metrics else {}
                if "epoch" in row and not row.get("mid_epoch"):
                    try:
                        queue.put({k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))})
                    except Exception:  # noqa: BLE001 - the driver is gone: nothing to log into
                        pass

        return [EpochToQueue()]

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                row = self.queue.get(timeout=1)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue was killed: the run is over
                return
            if row is None:
                return
            self.on_report(row)

    def _stop_queue(self) -> None:
        """Every row the controller put is logged (the end marker goes after them), then the queue goes."""
        if self.queue is None:
            return
        import ray

        try:
            self.queue.put(None, timeout=30)
            self.thread.join(timeout=60)
        finally:
            ray.kill(self.queue.actor)
            self.queue = None
