"""bench/cputime.py counts the CPU-seconds of a process tree: a known busy loop in this process and
in child processes (live, and exited and reaped) is counted, time asleep is not."""

from __future__ import annotations

import importlib.util
import multiprocessing
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cputime.py"


def _load():
    """bench/ is not a package: load the module by its path."""
    spec = importlib.util.spec_from_file_location("cputime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def busy(seconds: float) -> float:
    """Spin until this process has used ``seconds`` of CPU; returns what it used, by its own clock."""
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        sum(range(1000))
    return time.process_time() - t0


def _busy_then_wait(seconds: float, done, release) -> None:
    busy(seconds)
    done.set()
    release.wait(30)


def test_a_busy_loop_here_and_in_children_counts_and_sleep_does_not():
    cputime = _load()
    ctx = multiprocessing.get_context("fork")
    with cputime.CpuTimer() as t:
        own = busy(0.4)
        time.sleep(0.5)  # wall time, no CPU
        # one child busy and reaped before the block ends, one busy and still alive at its end
        reaped = ctx.Process(target=busy, args=(0.4,))
        reaped.start()
        reaped.join()
        done, release = ctx.Event(), ctx.Event()
        live = ctx.Process(target=_busy_then_wait, args=(0.4, done, release))
        live.start()
        assert done.wait(30)
    release.set()
    live.join()
    expected = own + 0.4 + 0.4
    assert expected - 0.1 <= t.seconds <= expected + 0.25, (t.seconds, expected)  # ticks of 10 ms, start-up of two forks
    assert t.wall >= 0.5 + own


def test_an_idle_block_costs_next_to_nothing():
    cputime = _load()
    with cputime.CpuTimer() as t:
        time.sleep(0.3)
    assert 0 <= t.seconds < 0.08 and t.wall >= 0.3
