"""Connecting to Ray: a local instance for the run, or an existing cluster (`--address`)."""

from __future__ import annotations

import os


def connect(address: str | None, cpus_needed: float = 0) -> None:
    """Start (or join) Ray once per process.

    A local Ray gets at least the CPUs the run asks for, so a small machine oversubscribes its cores
    rather than waiting forever for resources that will never appear.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, int(-(-cpus_needed // 1)))
    local_only()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)


def local_only() -> None:
    """Keep a single-node local Ray on loopback.

    Ray otherwise swaps 127.0.0.1 for the machine's routable address; with multi-node support off
    (a local Ray for one run is one node) it keeps the loopback address for the node and its workers.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
