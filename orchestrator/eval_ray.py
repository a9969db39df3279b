"""`cnnctl eval --workers N`: one evaluation spread over Ray workers, each on an exact part of the split.

Worker r of N evaluates ``Split(r, N)`` of the split (shards/reader.py: every image is read by
exactly one worker) with the same models, views and fusion as the in-process evaluation
(`evaluate.eval_part`), reading checkpoints and shards from their locations itself, and returns its
sums: the float64 loss sum and the top-1, top-5 and image counts. The driver adds them in rank order
and summarises, so top-1 and top-5 equal one process's exactly and the loss to float rounding.

Workers tell a small actor (``Tally``) how many images they have done, at most every
``SEND_EVERY_S``; the driver polls it while it waits for the results and draws the progress
(orchestrator/console.py, ``EvalProgress``). Each worker reserves ``threads`` CPUs and runs that many
torch threads; with ``gpus`` one GPU too, and evaluates there. ``evaluate`` is `cnnctl eval`'s one
call: the in-process evaluation (evaluate.run_eval), or these workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cnnctl.orchestrator.cluster import ClusterError

if TYPE_CHECKING:  # torch is imported by the workers only: the tally actor's process stays small
    from cnnctl.orchestrator.evaluate import EvalPlan

SEND_EVERY_S = 0.25  # a worker's count updates: smooth enough for a bar, one small message each
POLL_S = 0.2


class Tally:
    """Images evaluated so far, summed over the workers."""

    def __init__(self):
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def get(self) -> int:
        return self.done


class EvalFailed(RuntimeError):
    """A worker raised: ``trace`` is its traceback as Ray gives it; the message is one line."""

    def __init__(self, rank: int, error: Exception):
        cause = getattr(error, "cause", None) or error
        last = str(cause).strip().splitlines()[-1] if str(cause).strip() else ""
        super().__init__(f"eval worker {rank} failed: {type(cause).__name__}: {last}")
        self.trace = str(error)


@dataclass
class Layout:
    workers: int
    nodes: int | None  # None: anywhere the workers fit; else exactly workers_per_node on each of `nodes` nodes
    workers_per_node: int | None

    def describe(self) -> str:
        where = f"{self.nodes} node(s) x {self.workers_per_node}" if self.nodes else "any node"
        return f"{self.workers} worker(s) ({where})"


def layout(workers: int | None, nodes: int | None, workers_per_node: int | None) -> Layout:
    """The workers from `cnnctl eval`'s options: ``--workers N`` alone places them wherever they fit;
    ``--nodes M`` and/or ``--workers-per-node K`` pin K workers to each of M nodes (as `cnnctl train`
    does), N = M x K. A ValueError of one line when they disagree."""
    if nodes is None and workers_per_node is None:
        return Layout(workers or 1, None, None)
    given, per = (nodes, "--nodes") if workers_per_node is None else (workers_per_node, "--workers-per-node")
    if workers is not None and (nodes is None or workers_per_node is None) and workers % given:
        raise ValueError(f"--workers {workers} is not a multiple of {per} {given}")
    if nodes is None:
        nodes = workers // workers_per_node if workers else 1
    if workers_per_node is None:
        workers_per_node = workers // nodes if workers else 1
    if workers is not None and workers != nodes * workers_per_node:
        raise ValueError(f"--workers {workers}: --nodes {nodes} x --workers-per-node {workers_per_node} = "
                         f"{nodes * workers_per_node}")
    return Layout(nodes * workers_per_node, nodes, workers_per_node)


def check_fits(workers: int, cpus: float, gpus: bool) -> None:
    """Refuse now, in one line, a request the cluster's nodes cannot hold (Ray would wait forever)."""
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    per_node = [min(int(n["Resources"].get("CPU", 0) // cpus) if cpus else workers,
                    int(n["Resources"].get("GPU", 0)) if gpus else workers) for n in alive]
    if sum(per_node) < workers:
        raise ClusterError(f"the cluster has {len(alive)} live node(s), holding {sum(per_node)} worker(s) of "
                           f"{cpus:g} CPU{' and 1 GPU' if gpus else ''} between them; "
                           f"--workers {workers} needs {workers}")


def _evaluate_part(plan: EvalPlan, rank: int, world: int, threads: int, gpus: bool, tally) -> dict:
    """One worker: its part's sums, the node it ran on and when it finished (the driver's merge clock)."""
    import ray

    from cnnctl.orchestrator.evaluate import eval_part
    from cnnctl.shards.reader import Split

    pending, last = 0, time.monotonic()

    def report(n: int) -> None:
        nonlocal pending, last
        pending += n
        if time.monotonic() - last >= SEND_EVERY_S:
            tally.add.remote(pending)
            pending, last = 0, time.monotonic()

    sums = eval_part(plan, Split(rank, world), threads, "cuda" if gpus else "cpu", report)
    if pending:
        tally.add.remote(pending)
    return {**sums, "rank": rank, "node": ray.get_runtime_context().get_node_id(), "finished": time.time()}


def merge(parts: list[dict]) -> dict:
    """The split's sums from the workers' (in rank order): exact counts, the float64 loss summed."""
    parts = sorted(parts, key=lambda p: p["rank"])
    counts = {k: sum(p[k] for p in parts) for k in ("top1", "top5", "count")}
    return {"loss_sum": sum(p["loss_sum"] for p in parts), **counts}


def run(plan: EvalPlan, lay: Layout, threads: int, gpus: bool,
        progress: Callable[[int, int, float], None] | None = None) -> tuple[dict, dict]:
    """Evaluate ``plan`` on ``lay.workers`` Ray workers (Ray connected). Returns the merged sums and
    what the result records of the run: workers, nodes used, each worker's image count, seconds, merge_s (from the last
    worker's finish to the merged summary). ``progress(done, total, seconds)`` is called while it
    waits. A cluster that cannot hold the workers is a ClusterError before any starts. merge_s compares
    the workers' wall clocks with the driver's: across machines it includes their clock offset."""
    import ray

    from cnnctl.orchestrator.modeling import summarize
    from cnnctl.orchestrator.ray_workers import place_workers

    if lay.nodes:
        selectors = place_workers(lay.nodes, lay.workers_per_node, threads, gpus) or [None] * lay.workers
    else:
        check_fits(lay.workers, threads, gpus)
        selectors = [None] * lay.workers
    t0 = time.perf_counter()
    tally = ray.remote(Tally).options(num_cpus=0).remote()
    task, plan_ref = ray.remote(_evaluate_part), ray.put(plan)
    refs = [task.options(num_cpus=threads, num_gpus=1 if gpus else 0, max_retries=0,
                         **({"label_selector": s} if s else {}))
            .remote(plan_ref, r, lay.workers, threads, gpus, tally) for r, s in enumerate(selectors)]
    rank_of = {ref: r for r, ref in enumerate(refs)}
    pending, parts, asked = list(refs), [], None
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                try:
                    parts.append(ray.get(ref))
                except ray.exceptions.RayError as exc:  # the task raised, or its process died
                    raise EvalFailed(rank_of[ref], exc) from None
            if progress is not None and pending:  # never waits for the tally: the results come first
                asked = asked or tally.get.remote()
                if ray.wait([asked], timeout=0)[0]:
                    progress(ray.get(asked), plan.total, time.perf_counter() - t0)
                    asked = None
        sums = merge(parts)
        summarize(sums)
        merged = time.time()
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.kill(tally)
    if progress is not None:
        progress(sums["count"], plan.total, time.perf_counter() - t0)
    parts.sort(key=lambda p: p["rank"])
    return sums, {"workers": lay.workers, "nodes": len({p["node"] for p in parts}),
                  "worker_counts": [p["count"] for p in parts],
                  "seconds": time.perf_counter() - t0,
                  "merge_s": round(merged - max(p["finished"] for p in parts), 4)}


def evaluate(checkpoints: list[str], lay: Layout, views: dict, *, threads: int, gpus: bool, address: str | None,
             out: str | None, verbose: bool = False, show: bool = True) -> dict:
    """`cnnctl eval`: one evaluation in this process without Ray, or spread over ``lay``'s Ray workers
    (with ``gpus``, an ``address`` or pinned nodes too). ``views``: plan_eval's data, split, tta,
    scales, flip and batch_size. ``show``: a progress bar of the Ray workers' images."""
    from cnnctl.orchestrator.evaluate import plan_eval, result_of, run_eval

    if lay.workers == 1 and not (lay.nodes or gpus or address):
        return run_eval(checkpoints, out=out, threads=threads, **views)
    from contextlib import nullcontext

    from cnnctl.orchestrator.cluster import connect
    from cnnctl.orchestrator.console import EvalProgress

    plan = plan_eval(checkpoints, **views)  # everything checked here, before Ray starts
    connect(address, cpus_needed=lay.workers * threads, verbose=verbose)
    with EvalProgress(f"eval {plan.split}") if show else nullcontext() as bar:  # --json: nothing but the JSON
        sums, done = run(plan, lay, threads, gpus, bar.update if show else None)
    return result_of(plan, sums, done.pop("seconds"), out, **done)
