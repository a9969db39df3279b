"""Ranks as local processes over a gloo group on loopback, without Ray: `run_local`, for tests and
bench/ (the parallel layouts checked against one process, communication costs)."""

from __future__ import annotations

import os
import time
from typing import Callable

from cnnctl.orchestrator.cluster import free_port


def _local_rank(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # `world` processes share the cores; oversubscription is far slower
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_local(fn: Callable, world: int, *args, timeout_s: float = 60.0) -> None:
    """Run `fn(rank, world, *args)` in `world` spawned processes over a gloo group on loopback,
    without Ray (tests and bench/).

    A rank that raises fails the call with its traceback; if the ranks have not all finished after
    `timeout_s` (a collective hang), they are killed and TimeoutError is raised.
    """
    import torch.multiprocessing as tmp

    ctx = tmp.start_processes(_local_rank, args=(fn, world, free_port(), args), nprocs=world, join=False,
                              start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.01)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{world} local ranks still running after {timeout_s:.0f} s (a hung collective?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
