"""What `cnnctl tune` shows: one row per finished trial (its parameters, epochs, metric, time) and,
on a terminal, a live summary line under them; Tune's own status tables stay off (verbose=0).

Imported after Ray is connected (it imports ray.tune); the callback runs on the driver.
"""

from __future__ import annotations

import logging
import os
import time

from ray.tune import Callback
from rich.console import Console
from rich.live import Live

from cnnctl.orchestrator.tune import plan as tune_plan


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class TuneConsole(Callback):
    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self._reset()

    def _reset(self) -> None:
        self.out, self.live, self.header = None, None, False
        self.started, self.finished, self.failed, self.best = {}, 0, 0, None

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the sweep; the screen stays here
        return {"metric": self.metric, "mode": self.mode}

    def __setstate__(self, state: dict) -> None:
        self.metric, self.mode = state["metric"], state["mode"]
        self._reset()

    def setup(self, **info) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        if self.out.is_terminal:
            self.live = Live("", console=self.out, transient=True, auto_refresh=False)
            self.live.start()

    def _print(self, text: str) -> None:
        out = self.live.console if self.live else self.out or Console(highlight=False, soft_wrap=True)
        out.print(text, markup=False)

    def _summary(self, trials) -> None:
        if self.live is None:
            return
        running = sum(t.status == "RUNNING" for t in trials)
        best = "" if self.best is None else f"  best {self.metric} {self.best[0]:.4f} ({self.best[1]})"
        self.live.update(f"{len(trials)} trial(s): {running} running, {self.finished} finished, "
                         f"{self.failed} failed{best}", refresh=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())
        self._summary(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._summary(trials)

    def _row(self, trial, status: str) -> None:
        result = trial.last_result or {}
        config = tune_plan.flat(trial.config or {})  # a planned trial's paths sit under one key
        params = {k: v for k, v in config.items()
                  if k not in (tune_plan.CELL, tune_plan.SEED) and not isinstance(v, dict)}
        if not self.header:
            self._print("  ".join(["trial", *params, "seed", "epochs", self.metric, "time", "status"]))
            self.header = True
        score = result.get(self.metric)
        if isinstance(score, (int, float)) and (self.best is None or (score > self.best[0]) == (self.mode == "max")):
            self.best = (score, trial.trial_id)
        seconds = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        cells = [trial.trial_id, *map(_value, params.values()), str(config.get(tune_plan.SEED, "-")),
                 str(result.get("training_iteration", 0)),
                 "-" if score is None else f"{score:.4f}", f"{seconds:.0f}s", status]
        self._print("  ".join(cells))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished += 1
        self._row(trial, "finished")
        self._summary(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.failed += 1
        self._row(trial, "failed")
        self._summary(trials)

    def on_experiment_end(self, trials, **info) -> None:
        if self.live is not None:
            self.live.stop()


def run_config_kwargs(metric: str, mode: str) -> dict:
    """Tune's RunConfig settings for this console. Tune's newer output engine prints an experiment
    banner even when silent (verbose=0); its older one, kept for this, prints nothing at 0."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return {"verbose": 0, "callbacks": [TuneConsole(metric, mode)]}


def quiet_trial() -> None:
    """In a trial's process: Train's INFO lines (a "Checkpoint successfully created" per report) stay
    in its log files, as they do for `cnnctl train`."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
