"""How a run's progress reaches the driver's console (orchestrator/console.py): rank 0 puts its steps
and notes into a small actor on the cluster (``Sink``, named after the run), and Ray Train's controller
puts each epoch's metrics and persisted checkpoint there (``epoch_callback``); the driver drains it.

Workers therefore print nothing of their own: Ray forwards what they print (twice, in Train V2: its
print patch tees stdout into a logger that prints again), and only real warnings and errors should
reach the screen that way, with the worker that raised them.
"""

from __future__ import annotations

import time

SEND_EVERY_S = 0.5  # rank 0's bar updates: twice a second is smooth and costs one host sync each


def sink_name(run_name: str) -> str:
    return f"cnnctl-console-{run_name}"


class Sink:
    """The events of one run, from rank 0 and the Train controller, until the driver drains them."""

    def __init__(self):
        self.events: list[tuple] = []

    def put(self, event: tuple) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        out, self.events = self.events, []
        return out


class WorkerConsole:
    """Rank 0's side. Without a driver console (a Tune trial, a unit test) steps are not sent."""

    def __init__(self, sink=None, log_every: int = 50):
        self.sink, self.log_every, self.last = sink, log_every, 0.0

    @classmethod
    def find(cls, run_name: str, log_every: int) -> "WorkerConsole":
        import ray

        try:  # the driver's console actor, in this job's namespace
            return cls(ray.get_actor(sink_name(run_name)), log_every)
        except ValueError:
            return cls(None, log_every)

    def due(self, step: int, steps: int) -> bool:
        """Whether this step is sent: every log_every steps (the plain lines), the last one, and
        often enough for a smooth bar."""
        if self.sink is None:
            return False
        return step % self.log_every == 0 or step == steps or time.monotonic() - self.last >= SEND_EVERY_S

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, lr: float, rate: float,
             elapsed: float) -> None:
        self.last = time.monotonic()
        self.sink.put.remote(("step", epoch, epochs, step, steps, loss, lr, rate, elapsed))

    def note(self, text: str) -> None:
        if self.sink is None:
            print(text, flush=True)
        else:
            self.sink.put.remote(("note", text))


def quiet_worker() -> None:
    """Hold a Train worker's "Reporting training result" lines (a dump of every rank's metrics, each
    epoch) to the run's log level, as Train does its other lines: their logger is named by a file
    path, outside the ``ray.train`` tree that the level governs."""
    import logging

    from ray.train.v2._internal.execution import context

    level = context.get_train_context().train_run_context.get_run_config().logging_config.log_level
    logging.getLogger(context.__file__).setLevel(level)


def epoch_callback(sink):
    """A Train callback (it runs on the controller): each epoch's rank-0 metrics and the checkpoint
    as persisted, once the report is complete."""
    from ray.train import UserCallback

    class EpochToConsole(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            import ray

            row = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str))}
            kind = "step-checkpoint" if row.get("mid_epoch") else "epoch"
            ray.get(sink.put.remote((kind, row, checkpoint.path if checkpoint else None)))

    return EpochToConsole()
