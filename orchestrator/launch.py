"""Launching one training run from the driver: `cnnctl train` checks it (`preflight.preflight`),
then runs it here, with the console on the screen and the run's state beside it (status.json, which
`cnnctl runs` reads)."""

from __future__ import annotations

from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.runs import mark


class TrainingFailed(RuntimeError):
    """A run that ended in an error; the message is its last line."""


def watched_fit(cfg: RunConfig, verbose: bool = False):
    """`train.fit` with the console on the screen and the run's state in its status.json; returns
    Ray's Result, or raises TrainingFailed with the error's last line (Ray Train raises a worker's
    error; Ray has forwarded its traceback under the worker's name already). Ray is connected."""
    from cnnctl.orchestrator.console import TrainConsole
    from cnnctl.orchestrator.train import fit, run_dir

    run = run_dir(cfg)
    mark(run, "running")
    try:
        with TrainConsole(run, cfg.schedule.epochs, cfg.run.log_every, verbose) as console:
            result = fit(cfg, console, verbose)
        if result.error:
            raise result.error
    except Exception as exc:  # noqa: BLE001 - any error ends the run: status.json must say it failed
        last = ([line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__])[-1]
        mark(run, "failed", last)
        raise TrainingFailed(last) from None
    except BaseException:  # Ctrl-C: `cnnctl runs` must not call it running
        mark(run, "failed", "interrupted")
        raise
    mark(run, "finished")
    return result
