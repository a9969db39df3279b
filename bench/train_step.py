"""Ray Train loop vs a bare PyTorch loop: same model, batch, data and thread count, in one run.

Prints the CPU-seconds per image of each (the bare loop's process tree; the Ray worker's own, from its
metrics) and img/s, per round and as the median ratio with its spread (goal >= 0.97), and the time
from `cnnctl train` to its first training step with a local Ray (goal <= 10 s), with a timeline of
where the seconds go and Ray's own floor. Needs the demo shards:
    cnnctl shard fashion-mnist data/fashion-mnist --shard-size 5000
Run: .venv/bin/python bench/train_step.py [--samples 12800] [--first-step-runs 3] [--first-step-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cnnctl.orchestrator.cluster import connect  # noqa: E402
from cnnctl.orchestrator.config import resolve  # noqa: E402
from cputime import CpuTimer  # noqa: E402  (bench/cputime.py)
from cnnctl.orchestrator.data import make_loader, train_stream  # noqa: E402
from cnnctl.orchestrator.device_batch import device_batch  # noqa: E402
from cnnctl.orchestrator.metrics import read  # noqa: E402
from cnnctl.orchestrator.modeling import build_model  # noqa: E402
from cnnctl.orchestrator.train import fit, run_dir  # noqa: E402
from cnnctl.shards.reader import Split  # noqa: E402


def config(args, name):
    return resolve("demo-fashion", None, [
        f"data.root={ROOT / 'data/fashion-mnist'}", f"data.limit={args.samples}", "schedule.epochs=2",
        f"run.storage={args.storage}", f"run.name={name}", "parallel.workers_per_node=1", "run.log_every=1000",
    ])


def bare(args) -> tuple[float, float]:
    """The same work without Ray: stream -> normalise -> forward/backward/SGD, one thread; img/s and
    CPU-s per image (this process and its loader workers) of the second epoch."""
    cfg = config(args, "bare")
    torch.set_num_threads(cfg.parallel.threads_per_worker)
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    if cfg.parallel.channels_last:  # as the Trainer runs it
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    stream = train_stream(cfg, Split())
    norm = device_batch(cfg, stream.manifest)  # the Trainer's device stage (no lighting in this preset)
    rate = cpu = 0.0
    for epoch in range(2):  # the first epoch warms up; the second is timed, as in the Ray run
        stream.set_epoch(epoch)
        seen = 0
        with CpuTimer() as t:
            for images, labels in make_loader(cfg, stream):
                loss = F.cross_entropy(model(norm(images)), labels, label_smoothing=cfg.optim.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(labels)
        rate, cpu = seen / t.wall, t.seconds / seen
    stream.close()
    return rate, cpu


def bare_alone(args) -> tuple[float, float]:
    """`bare` in a fresh process: once this one has started a local Ray, its daemons are this
    process's children, and their CPU would count as the bare loop's."""
    out = subprocess.run([sys.executable, __file__, "--bare-only", "--samples", str(args.samples),
                          "--storage", args.storage],
                         capture_output=True, text=True, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def ray_loop(args, name) -> tuple[float, float]:
    """img/s and CPU-s per image of the second epoch, as the worker measured them (its metrics)."""
    cfg = config(args, name)
    connect(cfg.parallel.address, cpus_needed=cfg.parallel.world * cfg.parallel.cpus_per_worker)  # as preflight does
    fit(cfg)
    last = read(run_dir(cfg))[-1]
    return last["images_per_sec"], last["train_cpu_s_per_image"]


# The timeline of a start: the first line of `cnnctl train --verbose` that shows each phase is over
# (Ray forwards workers' lines within a fraction of a second, so a phase may look that much longer).
PHASES = [
    ("local Ray up", "Started a local Ray instance"),
    ("config, data checked, Ray connected", "training "),
    ("Train controller asks for workers", "Requesting resources"),
    ("worker group started", "Started training worker group"),
    ("torch process group", "Setting up process group"),
    ("first step (model, data, step 1)", " step 1/"),
]


def time_to_first_step(args) -> tuple[float, dict]:
    """Seconds from `cnnctl train` to its first training step, and when each phase ended."""
    cmd = [str(ROOT / ".venv/bin/cnnctl"), "train", "--verbose", "--preset", "demo-fashion", "--name", "first-step",
           "--set", f"run.storage={args.storage}", "--set", "run.log_every=1", "--set", "data.limit=2560",
           "--epochs", "1", "--data", str(ROOT / "data/fashion-mnist")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    seen = {}
    for line in proc.stdout:
        for phase, marker in PHASES:
            if phase not in seen and marker in line:
                seen[phase] = time.perf_counter() - t0
    proc.wait()
    return seen.get(PHASES[-1][0], float("nan")), seen


# Ray's floor: a fresh process that starts a local Ray and a 2-worker TorchTrainer (gloo) whose
# training function only prints; no cnnctl, no model, no data.
FLOOR = """
import os, sys, time
t0 = time.perf_counter()
import ray
ray.init(num_cpus=max(2, len(os.sched_getaffinity(0))), include_dashboard=False, logging_level="ERROR")
print("ray up", flush=True)
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer
def loop(config):
    if ray.train.get_context().get_world_rank() == 0:
        print(" step 1/1", flush=True)
TorchTrainer(loop, torch_config=TorchConfig(backend="gloo"), scaling_config=ray.train.ScalingConfig(num_workers=2),
             run_config=ray.train.RunConfig(storage_path=sys.argv[1], name="floor")).fit()
"""


def ray_floor(args) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, args.storage], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = float("nan")
    for line in proc.stdout:
        if first != first and " step 1/" in line:
            first = time.perf_counter() - t0
    proc.wait()
    return first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=12800, help="training samples per epoch")
    ap.add_argument("--storage", default="/tmp/cnnctl-bench-runs")
    ap.add_argument("--first-step-runs", type=int, default=3,
                    help="time to first step: runs (the median is the figure)")
    ap.add_argument("--first-step-only", action="store_true", help="skip the throughput comparison")
    ap.add_argument("--rounds", type=int, default=3, help="bare / Ray / bare rounds (the median ratio is the figure)")
    # one bare run, as JSON (see bare_alone)
    ap.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_only:
        return print(json.dumps(bare(args)))
    subprocess.run(["rm", "-rf", args.storage], check=True)
    if not args.first_step_only:
        ratios, walls = [], []
        for r in range(args.rounds):  # bare, Ray, bare: each Ray run against the mean of the bare runs around it
            (b1, c1), (ray_rate, ray_cpu), (b2, c2) = bare_alone(args), ray_loop(args, f"ray{r}"), bare_alone(args)
            ratios.append((c1 + c2) / 2 / ray_cpu)
            walls.append(ray_rate / ((b1 + b2) / 2))
            print(f"round {r + 1}: bare {c1 * 1e3:.3f} / {c2 * 1e3:.3f} ms CPU/img ({b1:.0f} / {b2:.0f} img/s), "
                  f"Ray Train {ray_cpu * 1e3:.3f} ms CPU/img ({ray_rate:.0f} img/s)")
        print(f"Ray Train step / bare loop (1 worker, same model, batch, data and 1 thread): "
              f"{statistics.median(ratios):.3f}x in CPU-s per image [{min(ratios):.3f}-{max(ratios):.3f}], "
              f"{statistics.median(walls):.3f}x wall-clock [{min(walls):.3f}-{max(walls):.3f}]  (goal >= 0.97)")
        import ray

        ray.shutdown()
    times, timelines, floors = [], [], []
    for i in range(args.first_step_runs):  # each a fresh `cnnctl train`, so a fresh local Ray; Ray's floor in turn
        subprocess.run(["rm", "-rf", f"{args.storage}/first-step", f"{args.storage}/floor"], check=True)
        first, seen = time_to_first_step(args)
        times.append(first)
        timelines.append(seen)
        floors.append(ray_floor(args))
    if not times:
        return
    print("timeline of each start (s since `cnnctl train`; the phase ended when its line appeared):")
    print(f"  {'phase':<38}" + "".join(f"{'run ' + str(i + 1):>8}" for i in range(len(timelines))) + f"{'median':>8}")
    for phase, _ in PHASES:
        at = [t.get(phase, float("nan")) for t in timelines]
        print(f"  {phase:<38}" + "".join(f"{v:8.1f}" for v in at) + f"{statistics.median(at):8.1f}")
    print(f"cnnctl train -> first step, local Ray: median {statistics.median(times):.1f} s of "
          f"{', '.join(f'{t:.1f}' for t in times)}  (goal <= 10 s)")
    print(f"Ray's floor (local Ray + 2-worker TorchTrainer, a print as the step): "
          f"median {statistics.median(floors):.1f} s of {', '.join(f'{t:.1f}' for t in floors)}; "
          f"cnnctl / floor {statistics.median(times) / statistics.median(floors):.2f}")


if __name__ == "__main__":
    main()
