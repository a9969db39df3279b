"""A trial of several workers: a Ray Train run driven from a TrialRun actor outside the trial, and
the Train callbacks that forward each epoch's rank-0 metrics and checkpoint to the trial's queue.
"""

from __future__ import annotations

import functools
import os

from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.train import build_trainer

POLL_S = 0.25  # how often a trial's Train controller polls its workers (Train's default: 2 s)


def scalars(metrics: dict) -> dict:
    """The metrics Tune can take: numbers, strings and flags."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


class ForwardToTrial:
    """A Train V2 callback (on the Train controller): rank 0's metrics and checkpoint of each report go
    to the trial's queue; the queue holds one item, so training waits for Tune. The checkpoint travels
    as its path and pyarrow filesystem: on an object store the path alone has no scheme."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        from ray.exceptions import RayActorError

        if metrics[0].get("mid_epoch"):
            return  # a step checkpoint: trials are compared, stopped and exploited at epochs
        try:
            where = (checkpoint.path, checkpoint.filesystem) if checkpoint else None
            self.queue.put(("report", scalars(metrics[0]), where))
        except RayActorError:  # the trial is gone; its TrialRun aborts this run
            pass

    def after_exception(self, run_context, worker_exceptions):
        pass

    def __reduce__(self):  # rebuilt through _callback on the controller: the class is made there
        return _callback, (self.queue,)


class TellRunner:
    """A Train V2 controller callback: hands the controller's own handle to the TrialRun as soon
    as the controller starts, so the run can be aborted before its first report too."""

    def __init__(self, runner):
        self.runner = runner

    def after_controller_start(self, train_run_context):
        import ray

        ray.get(self.runner.set_controller.remote(ray.get_runtime_context().current_actor))

    def __reduce__(self):
        return _tell_runner, (self.runner,)


@functools.cache
def _callback_classes() -> tuple[type, type]:
    # ray.train is imported only once Ray is connected (the auth env must be set first).
    from ray.train import UserCallback
    from ray.train.v2._internal.execution.callback import ControllerCallback

    return (type("ForwardToTrialCallback", (ForwardToTrial, UserCallback), {}),
            type("TellRunnerCallback", (TellRunner, ControllerCallback), {}))


def _callback(queue):
    return _callback_classes()[0](queue)


def _tell_runner(runner):
    return _callback_classes()[1](runner)


class TrialRun:
    """One start of a trial's Train run, driven from a detached actor outside the trial.

    Why: the placement group of a Train run's workers is created by its controller actor, and Ray
    removes such a group only once both that actor and the driver's job are gone. When Tune stops a
    trial (PBT exploit, pause, ASHA stop) it ends the trial's actor, and everything the trial owns
    dies with it, the controller too, ungracefully: the group, and its CPUs, stayed reserved for the
    rest of the sweep (Train's own cleaner watches the controller through the State API, which a
    cluster without the dashboard does not serve). This actor is not owned by the trial: it sees the
    trial go (its queue dies with it) or hears `stop`, then aborts the controller, which removes
    the group itself, and exits. The same happens when the whole driver is killed.
    """

    def __init__(self, queue):
        import threading

        self.queue = queue
        self.controller = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.finished = threading.Event()
        self.aborted = False
        threading.Thread(target=self._watch, daemon=True, name="trial-watch").start()

    def fit(self, config: dict) -> None:
        """Run the Train run; the trial hears how it ended through the queue. Exits the actor."""
        import ray

        self.started.set()
        message = ("stopped", None, None)
        try:
            if not self.stopping.is_set():
                # The controller polls its workers this often; Train's 2 s default adds up to that
                # much to every report (a trial's result) and to the run's start and end.
                os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_S))
                me = ray.get_runtime_context().current_actor
                cfg = RunConfig.model_validate(config)
                result = build_trainer(cfg, callbacks=[_callback(self.queue), _tell_runner(me)], pin_nodes=False).fit()
                message = ("error", str(result.error), None) if result.error else ("done", None, None)
        except BaseException as exc:  # noqa: BLE001 - the trial must hear of it, or it waits forever
            message = ("error", repr(exc), None)
        finally:
            self.finished.set()
        if self.stopping.is_set():
            self._abort()  # a no-op unless the run ended some other way while stopping
        else:
            try:
                self.queue.put(message, timeout=120)
            except Exception:  # noqa: BLE001 - the trial is gone or stuck: nothing to tell
                pass
        ray.actor.exit_actor()

    def alive(self) -> bool:
        return True

    def set_controller(self, controller) -> None:
        with self.lock:
            self.controller = controller

    def stop(self, timeout: float = 300) -> bool:
        """Abort the run (if it still runs) and wait until it has ended; True if it did."""
        self.stopping.set()
        return self.finished.wait(timeout)

    def _abort(self) -> None:
        import ray

        with self.lock:
            controller, self.aborted = (None if self.aborted else self.controller), True
        if controller is not None:
            try:  # the controller shuts its workers down, removes their placement group, and exits
                ray.get(controller.abort.remote(), timeout=300)
            except Exception:  # noqa: BLE001 - it finished or exited already
                pass

    def _watch(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        idle = 0
        while not self.finished.wait(1.0):
            idle = 0 if self.started.is_set() or not self.stopping.is_set() else idle + 1
            if idle > 30:  # the trial went before it could start the run: nothing to clean up
                os._exit(0)
            if not self.stopping.is_set():
                try:
                    ray.get(self.queue.actor.qsize.remote(), timeout=30)
                    continue
                except RayActorError:  # the trial's queue died with the trial
                    self.stopping.set()
                except GetTimeoutError:
                    continue
            with self.lock:
                ready = self.controller is not None and not self.aborted
            if ready:
                self._abort()

