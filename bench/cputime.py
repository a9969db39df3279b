"""CPU-seconds of a piece of work done by this process and any processes it starts: user + sys of
this process and every live descendant (from /proc/<pid>/stat, each with its reaped children's
times), so DataLoader workers, process pools and their exited children all count. Unlike a
wall-clock rate, the figure barely moves when other jobs share the machine: a contender pays for
the cycles it uses, not for the ones it waits for.

    with CpuTimer() as t:
        work()
    t.seconds  # CPU-seconds of the tree during the block; t.wall: wall seconds

``Rounds`` keeps each contender's rounds of a benchmark and prints medians, spreads and ratios.

Linux only (/proc). Resolution: one clock tick (10 ms) per process. The /proc reading itself is
orchestrator.metrics.tree_cpu_seconds, which training runs record per epoch too.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, when run as a script

from cnnctl.orchestrator.metrics import tree_cpu_seconds  # noqa: E402  (the project's one /proc reader)


class CpuTimer:
    """CPU-seconds (``seconds``) and wall seconds (``wall``) of the process tree over a ``with`` block.
    A process that starts and exits inside the block counts once its parent has reaped it (a
    DataLoader or a process pool reaps its workers when it shuts down)."""

    def __enter__(self) -> CpuTimer:
        self._cpu0, self._wall0 = tree_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = tree_cpu_seconds() - self._cpu0
        self.wall = time.perf_counter() - self._wall0


class Rounds:
    """Each contender's rounds: CPU-seconds per image (the whole process tree: bench/cputime.py) and
    img/s, reported as the median and the spread [min-max] over rounds, never the best one."""

    def __init__(self):
        self.cpu: dict[str, list[float]] = {}
        self.rate: dict[str, list[float]] = {}

    def run(self, name: str, fn, *args) -> None:
        """One round of contender ``name``: ``fn(*args)`` returns the images it handled."""
        with CpuTimer() as t:
            n = fn(*args)
        self.cpu.setdefault(name, []).append(t.seconds / n)
        self.rate.setdefault(name, []).append(n / t.wall)

    def line(self, name: str, what: str) -> str:
        c, r = self.cpu[name], self.rate[name]
        return (f"{what:<58} {statistics.median(c) * 1e3:6.3f} ms CPU/img [{min(c) * 1e3:.3f}-{max(c) * 1e3:.3f}]"
                f"  {statistics.median(r):7.1f} img/s [{min(r):.0f}-{max(r):.0f}]")

    def ratio(self, a: str, b: str, label: str) -> str:
        """b's CPU per image over a's, per round: how many of a's images one of b's costs (> 1: a is cheaper)."""
        cpu = [y / x for x, y in zip(self.cpu[a], self.cpu[b])]
        wall = [x / y for x, y in zip(self.rate[a], self.rate[b])]
        return (f"{label}: {statistics.median(cpu):.2f}x in CPU-s per image [{min(cpu):.2f}-{max(cpu):.2f}], "
                f"{statistics.median(wall):.2f}x wall-clock [{min(wall):.2f}-{max(wall):.2f}]; rounds: "
                + " ".join(f"{v:.2f}" for v in cpu))
