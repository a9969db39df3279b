"""What `cnnctl train` shows a person: one progress bar per epoch, one row when the epoch ends, and
where its checkpoint went; on a non-terminal (CI, a log file) a plain line every `run.log_every`
steps instead of the bar.

Rank 0 and Ray Train's controller send their events to a small actor on the cluster
(orchestrator/console_events.py); the driver's ``TrainConsole`` drains it and draws. `cnnctl eval`'s
progress and result table and `cnnctl runs`' table are drawn here too.
"""

from __future__ import annotations

import threading
import time

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cnnctl.orchestrator.console_events import Sink, epoch_callback, sink_name
from cnnctl.orchestrator.metrics import read
from cnnctl.shards import location as loc

POLL_S = 0.2
HEADER = (f"{'epoch':>7}  {'train loss':>10} {'top-1':>6}   {'val loss':>8} {'top-1':>6} {'top-5':>6}   "
          f"{'lr':>9} {'img/s':>7} {'time':>7}")


def epoch_row(m: dict, epochs: int) -> str:
    return (f"{m['epoch'] + 1:>3}/{epochs:<3}  {m['train_loss']:>10.4f} {m['train_top1']:>6.1%}   "
            f"{m['val_loss']:>8.4f} {m['val_top1']:>6.1%} {m['val_top5']:>6.1%}   {m['lr']:>9.3g} "
            f"{m['images_per_sec']:>7,.0f} {m['epoch_time_s']:>6.1f}s")


def _bar(console: Console) -> Progress:
    """A progress bar that is gone when it stops: the rows and the summary stay."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console, transient=True)


def short(path: str) -> str:
    """A local path relative to the working folder when it is below it (a URL as it is)."""
    if loc.is_url(path):
        return path
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


class TrainConsole:
    """The driver's side, around `train.fit`: ``with TrainConsole(cfg) as c: fit(cfg, c)``."""

    def __init__(self, run_dir: str, epochs: int, log_every: int, verbose: bool = False,
                 console: Console | None = None):
        self.run_dir, self.epochs, self.log_every, self.verbose = run_dir, epochs, log_every, verbose
        self.out = console or Console(highlight=False, soft_wrap=True)  # a long path stays one line
        self.live = self.out.is_terminal
        self.bar: Progress | None = None
        self.task, self.task_epoch, self.done_epochs = None, -1, set()
        self.first_epoch: int | None = None  # the first epoch this console saw: rows before it are an earlier run's
        self.header_shown = False
        self.stopping = threading.Event()

    def __enter__(self) -> "TrainConsole":
        import ray
        from ray._raylet import RAY_NODE_ID_KEY

        self.name = sink_name(loc.name(self.run_dir))
        # One per run name in this driver's job, owned by this console: `__exit__` kills it and waits
        # for its name to be free, so a second run of the same name in one process (tests, a notebook)
        # gets an actor of its own, which the first console's handle, collected later, cannot end.
        # It lives on the driver's node, as Ray Train's controller does: a lost node keeps the console.
        here = {RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}
        self.sink = ray.remote(Sink).options(name=self.name, num_cpus=0, get_if_exists=True,
                                             label_selector=here).remote()
        self.sink.drain.remote()  # not waited for: the actor starts while the run does
        if self.live:
            self.bar = _bar(self.out)
            self.bar.start()
        self.thread = threading.Thread(target=self._poll, daemon=True, name="console")
        self.thread.start()
        return self

    def callbacks(self) -> list:
        return [epoch_callback(self.sink)]

    def __exit__(self, *exc) -> None:
        import ray

        self.stopping.set()
        self.thread.join()
        try:
            self._draw(ray.get(self.sink.drain.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - the cluster went away: nothing more to show
            pass
        if self.bar is not None:
            self.bar.stop()
        self._release()

    def _release(self) -> None:
        """End the console actor and wait (10 s at most) until its name is free again."""
        import ray

        try:
            ray.kill(self.sink)
        except Exception:  # noqa: BLE001 - the cluster went away, and the actor with it
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                ray.get_actor(self.name)
            except ValueError:
                return
            time.sleep(0.05)

    def _poll(self) -> None:
        import ray

        while not self.stopping.wait(POLL_S):
            try:
                self._draw(ray.get(self.sink.drain.remote(), timeout=10))
            except Exception:  # noqa: BLE001 - a slow or lost actor only delays the console
                continue

    def print(self, text: str) -> None:
        (self.bar.console if self.bar is not None else self.out).print(text, markup=False, highlight=False)

    def _draw(self, events: list[tuple]) -> None:
        for kind, *rest in events:
            if kind == "note":  # rank 0's lines as it starts: after a restart, rows lost with the workers first
                self._written_rows()
                self.print(rest[0])
            elif kind == "step":
                self._step(*rest)
            elif kind == "epoch":
                self._epoch(*rest)
            elif kind == "step-checkpoint" and rest[1]:
                m = rest[0]
                self.print(f"{'':>7}  step checkpoint: epoch {m['epoch'] + 1} step {m['step_in_epoch']}/{m['steps']} "
                           f"{self._where(rest[1])}")

    def _step(self, epoch, epochs, step, steps, loss, lr, rate, elapsed) -> None:
        self.first_epoch = epoch if self.first_epoch is None else min(self.first_epoch, epoch)
        if epoch in self.done_epochs:
            return  # a late update of an epoch whose row is out
        stats = f"loss {loss:.4f}  lr {lr:.3g}  {rate:,.0f} img/s"
        if self.bar is None:
            if step % self.log_every == 0:
                eta = (steps - step) * elapsed / step
                self.print(f"epoch {epoch + 1}/{epochs} step {step}/{steps}  {stats}  eta {_clock(eta)}")
            return
        if self.task_epoch != epoch:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, stats="")
            self.task_epoch = epoch
        self.bar.update(self.task, completed=step, stats=stats)

    def _epoch(self, metrics: dict, checkpoint: str | None) -> None:
        epoch = metrics["epoch"]
        self.first_epoch = epoch if self.first_epoch is None else min(self.first_epoch, epoch)
        if self.bar is not None and self.task is not None and self.task_epoch == epoch:
            self.bar.remove_task(self.task)
            self.task, self.task_epoch = None, -1
        if not self.header_shown:
            self.print(HEADER)
            self.header_shown = True
        self._written_rows(before=epoch)
        if epoch not in self.done_epochs:
            self.done_epochs.add(epoch)
            self.print(epoch_row(metrics, self.epochs))
        if checkpoint:
            self.print(f"{'':>7}  checkpoint {self._where(checkpoint)}")

    def _written_rows(self, before: int | None = None) -> None:
        """The rows of this run's epochs (before ``before``) whose reports Ray Train never passed on:
        the workers failed while the epoch's checkpoint uploaded, and the run resumed from it. They
        are in metrics.jsonl, where rank 0 wrote them first."""
        if self.first_epoch is None or (before is not None and self.done_epochs.issuperset(
                range(self.first_epoch, before))):
            return  # nothing missing: metrics.jsonl is not read for every epoch
        for row in read(self.run_dir):
            epoch = row["epoch"]
            if self.first_epoch <= epoch and (before is None or epoch < before) and epoch not in self.done_epochs:
                self.done_epochs.add(epoch)
                self.print(epoch_row(row, self.epochs))

    def _where(self, checkpoint: str) -> str:
        # Ray's Checkpoint.path is the path inside its filesystem (no scheme): name it in the run's store
        return short(loc.join(self.run_dir, loc.name(checkpoint)))


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class EvalProgress:
    """`cnnctl eval --workers N`'s progress on the driver: images done of the split's, img/s and the
    time left, as a bar on a terminal (gone when it ends) or a line every LINE_EVERY_S otherwise.
    ``update(done, total, seconds)`` is what orchestrator/eval_ray.py calls while it waits."""

    LINE_EVERY_S = 10.0

    def __init__(self, what: str, console: Console | None = None):
        self.what, self.out = what, console or Console(highlight=False, soft_wrap=True)
        self.bar = self.task = None
        self.first: tuple[int, float] | None = None  # (images, seconds) when the first count came
        self.last_line = 0.0

    def __enter__(self) -> "EvalProgress":
        if self.out.is_terminal:
            self.bar = _bar(self.out)
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int, total: int, seconds: float) -> None:
        if done and self.first is None:
            self.first = (done, seconds)
        rate = (done - self.first[0]) / (seconds - self.first[1]) if self.first and seconds > self.first[1] else 0.0
        stats = f"{rate:,.0f} img/s" if rate else "starting"
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(self.what, total=total, stats=stats)
            self.bar.update(self.task, completed=done, stats=stats)
        elif seconds - self.last_line >= self.LINE_EVERY_S and done < total:
            self.last_line = seconds
            eta = f"  eta {_clock((total - done) / rate)}" if rate else ""
            self.out.print(f"{self.what} {done:,}/{total:,} images  {stats}{eta}", markup=False)


def eval_table(result: dict) -> Table:
    """`cnnctl eval`'s result as one table row (several checkpoints: their fused softmax)."""
    views = {"center": "centre crop", "ten-crop": "10 crops", "dense": "dense"}[result["tta"]]
    if result["tta"] == "dense":
        scales = result["scales"]
        views += f" {scales}" if isinstance(scales, str) else f" Q={','.join(map(str, scales))}"
    if result["flip"] and result["tta"] != "ten-crop":
        views += " + flips"
    fused = " (softmax averaged)" if len(result["checkpoints"]) > 1 else ""
    if result.get("merge_s") is not None:  # on Ray workers
        fused += f" on {result['workers']} Ray worker(s), {result['nodes']} node(s)"
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left",
                  title=" + ".join(short(c) for c in result["checkpoints"]) + fused)
    for col in ("split", "images", "views", "top-1", "top-5", "loss", "time"):
        table.add_column(col, justify="left" if col in ("split", "views") else "right")
    table.add_row(result["split"], f"{result['count']:,}", views, f"{result['top1']:.2%}", f"{result['top5']:.2%}",
                  f"{result['loss']:.4f}", f"{result['seconds']:.1f}s")
    return table


def runs_table(rows: list) -> Table:
    """`cnnctl runs`: one row per run (runs.RunRow)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("run", "model", "layout", "world", "epochs", "best top-1", "last top-1", "status", "where", "note"):
        numeric = col in ("epochs", "best top-1", "last top-1")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=True)
    colour = {"finished": "green", "running": "cyan", "resumable": "yellow", "failed": "red"}

    def pct(v):
        return "-" if v is None else f"{v:.2%}"

    for r in rows:
        table.add_row(r.name, r.model, r.layout, r.world, f"{r.done}/{r.planned}", pct(r.best), pct(r.last),
                      f"[{colour[r.status]}]{r.status}[/]", short(r.where), r.note)
    return table
