"""The same global batch at any dp, and a step checkpoint resumed at another dp (docs/resume.md).

``data.global_batch`` (default data.batch_size) is the samples of one optimiser step, fixed when the
run starts and kept in every step checkpoint's layout. Each dp rank takes batches of
data.batch_size / dp and accumulates gradients over global_batch / data.batch_size of them (DDP
averages only on the last). A rerun at another dp takes the checkpoint's global batch and per-rank
batch (where it divides the new dp's share; else the largest smaller one that does), so the lr
schedule, warm-up and plateau rule count the same optimiser steps of the same size.

A step checkpoint resumed at another dp: its readers' positions say what of the epoch was trained,
shards/dealt.py deals the rest to the new readers, and this rank's per-epoch components start from
a position of the new layout (its readers at the start of their work, the epoch's running sums on dp
rank 0, the RNG streams as a fresh epoch's: dropout masks and lighting draw anew after a resize).
"""

from __future__ import annotations

import contextlib

import torch

from cnnctl.orchestrator.config import RunConfig
from cnnctl.shards import dealt
from cnnctl.shards.position import ReaderPosition

RESIZABLE = ("dp", "batch_size", "loader_workers")  # what a resume at another dp may change


def global_batch(cfg: RunConfig) -> int:
    return cfg.data.global_batch or cfg.data.batch_size


def accumulation(cfg: RunConfig) -> int:
    """Batches each rank accumulates per optimiser step."""
    return global_batch(cfg) // cfg.data.batch_size


def saved_global(saved: dict) -> int:
    """A checkpoint layout's global batch (one written before data.global_batch: its batch size)."""
    return saved.get("global_batch") or saved["batch_size"]


def per_rank(total: int, dp: int, batch: int) -> tuple[int, int] | None:
    """(batch, accumulation) of a rank taking ``total`` // dp samples a step at most ``batch`` at a
    time; None when dp does not divide ``total``."""
    if total % dp:
        return None
    share = total // dp
    accumulate = -(-share // batch)
    while share % accumulate:
        accumulate += 1
    return share // accumulate, accumulate


def adjust(cfg: RunConfig, saved: dict, where: str) -> str | None:
    """Settle ``cfg``'s batch for resuming a step checkpoint taken at layout ``saved`` at another
    dp: the checkpoint's global batch, its per-rank batch where it fits; or one line why not."""
    total, dp = saved_global(saved), cfg.parallel.dp
    if cfg.data.global_batch not in (None, total):
        return (f"{where}: data.global_batch is fixed when the run starts: this run's is {total}, "
                f"not {cfg.data.global_batch}")
    fit = per_rank(total, dp, saved["batch_size"] // saved["dp"])
    if fit is None:
        return (f"{where}: the global batch {total} does not split over dp {dp} (data.global_batch must be a "
                f"multiple of dp x the per-rank batch); resume at a dp that divides {total}")
    cfg.data.global_batch, cfg.data.batch_size = total, fit[0] * dp
    return None


def resized(saved: dict, cfg: RunConfig) -> bool:
    return saved.get("dp") != cfg.parallel.dp


def summary(cfg: RunConfig) -> str:
    """'global batch 128 = 1 x 64 x 2 accumulation steps'."""
    a = accumulation(cfg)
    steps = f" x {a} accumulation steps" if a > 1 else ""
    return f"global batch {global_batch(cfg)} = {cfg.parallel.dp} x {cfg.data.batch_size // cfg.parallel.dp}{steps}"


def change(old_world: int, cfg: RunConfig) -> str:
    """What moved the run: an elastic run lost or regained nodes; another run was resumed at another dp."""
    if not cfg.parallel.elastic:
        return "resumed"
    return "node lost: continuing" if cfg.parallel.world < old_world else "nodes returned: continuing"


def world_line(old_world: int, cfg: RunConfig) -> str:
    """The console's line for an elastic run restarted at another world from an end-of-epoch checkpoint."""
    return f"{change(old_world, cfg)} at world {cfg.parallel.world} (dp {cfg.parallel.dp}); {summary(cfg)}"


def resumed_line(position: dict, cfg: RunConfig) -> str:
    """The console's line for a step checkpoint resumed at another dp."""
    saved = position["layout"]
    step = position["steps_done"] * saved["batch_size"] // saved_global(saved)  # optimiser steps
    return (f"{change(len(position['ranks']), cfg)} at world {cfg.parallel.world} (dp {cfg.parallel.dp}) from step "
            f"{step:,} of epoch {position['epoch'] + 1}; {summary(cfg)}")


def relayout(position: dict, cfg: RunConfig, stream, layout: dict) -> dict:
    """A step checkpoint's ``position``, taken at another dp, as the position of ``cfg``'s layout
    (``layout``: resume.layout(cfg)) over the training stream ``stream`` (any rank's: its sample count)."""
    saved, mp = position["layout"], cfg.parallel.mp
    old_batch, old_a = saved["batch_size"] // saved["dp"], saved_global(saved) // saved["batch_size"]
    optimiser_steps = stream.samples // saved_global(saved)
    old_workers, workers = max(saved["loader_workers"], 1), max(cfg.data.loader_workers, 1)
    a, batch = accumulation(cfg), cfg.data.batch_size // cfg.parallel.dp
    done = position["steps_done"] // old_a * a
    old_ranks = position["ranks"]
    readers = [ReaderPosition(*r) for d in range(saved["dp"]) for r in old_ranks[d * mp]["readers"]]
    deal = dealt.resize(position.get("deal"), readers, (saved["dp"], old_workers, old_batch, optimiser_steps * old_a),
                        (cfg.parallel.dp, workers, batch, optimiser_steps * a, done))
    starts = [r.as_list() for r in dealt.start(workers, done)]
    # the epoch's running sums so far: on dp rank 0 of each tower, the dp group's all-reduce adds them up
    sums = [[sum(old_ranks[d * mp + t]["sums"][k] for d in range(saved["dp"])) for k in range(3)] for t in range(mp)]
    ranks = [{"readers": starts, "sums": sums[r % mp] if r < mp else [0.0, 0.0, 0]} for r in range(cfg.parallel.world)]
    first = {"from_step": 0, "world": len(old_ranks), "dp": saved["dp"], "batch": old_batch, "accumulate": old_a}
    segments = [*(position.get("segments") or [first]), segment(cfg, position["steps_done"] // old_a)]
    return {**position, "steps_done": done, "layout": layout, "ranks": ranks, "deal": deal, "segments": segments}


def segment(cfg: RunConfig, from_step: int) -> dict:
    """An epoch segment at one world, for metrics.jsonl: from its optimiser step of the epoch."""
    return {"from_step": from_step, "world": cfg.parallel.world, "dp": cfg.parallel.dp,
            "batch": cfg.data.batch_size // cfg.parallel.dp, "accumulate": accumulation(cfg)}


def no_sync(model: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """While accumulating (``skip``): no gradient all-reduce in any DDP part of ``model``."""
    stack = contextlib.ExitStack()
    if skip:
        for part in model.modules():
            if isinstance(part, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(part.no_sync())
    return stack


class StepSizes:
    """The smallest and largest samples one optimiser step took on this rank, this epoch segment."""

    def __init__(self):
        self.low, self.high, self.current = None, None, 0

    def add(self, samples: int, last: bool) -> None:
        self.current += samples
        if last:
            self.low = self.current if self.low is None else min(self.low, self.current)
            self.high = max(self.high or 0, self.current)
            self.current = 0
