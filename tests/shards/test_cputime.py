"""bench/cputime.py counts the CPU-seconds of a process tree: a known busy loop in this process and
in child processes (live, and exited and reaped) is counted, time asleep is not.

Each case runs in a fresh Python process: the test session's own tree holds a Ray cluster and an S3
server whose background work would count too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CASE = r"""
import json, multiprocessing, time
from bench.cputime import CpuTimer  # the repository is the working folder: `python -c` puts it on the path

def busy(seconds):
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        sum(range(1000))
    return time.process_time() - t0

def busy_then_wait(seconds, done, release):
    busy(seconds)
    done.set()
    release.wait(30)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    with CpuTimer() as t:
        own = busy(0.4)
        time.sleep(0.5)  # wall time, no CPU
        # one child busy and reaped before the block ends, one busy and still alive at its end
        reaped = ctx.Process(target=busy, args=(0.4,))
        reaped.start()
        reaped.join()
        done, release = ctx.Event(), ctx.Event()
        live = ctx.Process(target=busy_then_wait, args=(0.4, done, release))
        live.start()
        assert done.wait(30)
    release.set()
    live.join()
    with CpuTimer() as idle:
        time.sleep(0.3)
    print(json.dumps({"own": own, "seconds": t.seconds, "wall": t.wall, "idle": idle.seconds, "idle_wall": idle.wall}))
"""


def test_a_busy_loop_here_and_in_children_counts_and_sleep_does_not():
    out = subprocess.run([sys.executable, "-c", CASE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = got["own"] + 0.4 + 0.4
    # ticks of 10 ms per process, and the start-up of two forks
    assert expected - 0.1 <= got["seconds"] <= expected + 0.25, (got, expected)
    assert got["wall"] >= 0.5 + got["own"]
    assert 0 <= got["idle"] < 0.08 and got["idle_wall"] >= 0.3, got
