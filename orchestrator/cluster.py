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
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1")
