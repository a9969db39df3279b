"""What a lost node costs an elastic run: the seconds from the node's SIGKILL to the first training
step at the smaller world, against a plain restart at the same world, in the same run.

A 2-node local cluster of the bench's own (`cnnctl cluster up --local`, 2 CPUs a node, one worker a
node), alexnet-small at half width on Fashion-MNIST shards written here (400 samples an epoch, batches
of 8, a step checkpoint every 10 steps), each run through the real `cnnctl train` in its own process:

- elastic: `--nodes 1-2`. Once the step checkpoint at step 20 of epoch 2 is saved, one node's
  processes (its raylet and its worker) are SIGKILLed. Timed to the first step line after
  "node lost: continuing at world 1": Ray marks the node dead (its health checks), the run waits
  parallel.node_loss_settle_s (--settle), then starts one worker that resumes the step checkpoint
  and deals the epoch's rest to its reader. The node is added back (`cnnctl cluster add`) after.
- plain restart: `--nodes 1`. Its worker alone is SIGKILLed at the same point; Ray Train restarts
  it at the same world from the same step checkpoint (run.max_failures). Timed to the first step
  line after "resuming epoch 2".

The step lines come from rank 0 through the driver's console (run.log_every=1), as a user sees them.
Every round is printed; medians and spreads [min-max], and their ratio.

--curves PNG instead trains the demo (demo-fashion, all of Fashion-MNIST, batches of 128, one
worker a node) for --epochs epochs twice on the same cluster: uninterrupted at --nodes 2, and at
--nodes 1-2 losing a node after the step checkpoint at step 200 of epoch 2 and getting it back after
the one at step 100 of epoch 3; prints both runs' epochs and draws them with `cnnctl report`.

Usage: python bench/elastic.py [--rounds 3] [--settle 5]
       python bench/elastic.py --curves docs/figures/elastic-loss.png [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CNNCTL = Path(sys.executable).with_name("cnnctl")
SETTINGS = ["data.batch_size=8", "data.limit=400", "model.width=0.5", "run.log_every=1", "parallel.cpus_per_worker=2",
            "data.loader_workers=1", "parallel.workers_per_node=1", "run.checkpoint_every_steps=10",
            "run.keep_checkpoints=30", "parallel.resize_check_s=3"]


class Train:
    """`cnnctl train ...` in its own process; its lines as they come, each with the time it came."""

    def __init__(self, state: Path, *args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen([str(CNNCTL), "train", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**env, "CNNCTL_CLUSTER_DIR": str(state)})
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> float:
        """When the line holding ``text`` came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen := [t for t, line in self.lines if text in line]:
                return seen[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"cnnctl train exited before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise TimeoutError(f"no {text!r} within {timeout:.0f} s:\n{self.output()}")

    def first_step_after(self, text: str) -> float:
        """When the first training step line after the line holding ``text`` came."""
        after = self.wait_for(text)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if seen := [t for t, line in self.lines if t >= after and " step " in line and "loss" in line]:
                return seen[0]
            time.sleep(0.05)
        raise TimeoutError(f"no step after {text!r}:\n{self.output()}")

    def finish(self, timeout: float = 300) -> str:
        try:
            if self.proc.wait(timeout):
                raise RuntimeError(f"cnnctl train failed:\n{self.output()}")
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)
        return self.output()


def step_checkpoint_at(run: Path, epoch: int, step: int) -> bool:
    """Whether the run folder holds a complete step checkpoint of ``epoch`` at ``step`` or later."""
    from cnnctl.orchestrator import checkpoint as ckpt

    for folder in run.glob("checkpoint_*"):
        if folder.is_dir() and ckpt.is_complete(str(folder)):
            meta = json.loads((folder / "meta.json").read_text())
            if meta["epoch"] == epoch and meta.get("mid_epoch") and meta["metrics"]["step_in_epoch"] >= step:
                return True
    return False


def wait_for_checkpoint(run: Train, folder: Path, epoch: int = 1, step: int = 20) -> None:
    deadline = time.monotonic() + 240
    while not step_checkpoint_at(folder, epoch, step):
        if time.monotonic() > deadline or run.proc.poll() is not None:
            raise RuntimeError(f"no step checkpoint at step {step} of epoch {epoch + 1}:\n{run.output()}")
        time.sleep(0.05)


def cnnctl(*args: str) -> str:
    return subprocess.run([str(CNNCTL), *args], check=True, capture_output=True, text=True).stdout


def elastic_round(state: Path, data: Path, storage: Path, name: str, settle: float) -> float:
    from cnnctl.orchestrator import cluster

    c = cluster.load(state)
    run = Train(state, "--preset", "demo-fashion", "--data", str(data), "--name", name, "--epochs", "3", "--address",
                c.address, "--nodes", "1-2", *sum((["--set", s] for s in
                                                  [f"run.storage={storage}", *SETTINGS,
                                                   f"parallel.node_loss_settle_s={settle}"]), []))
    wait_for_checkpoint(run, storage / name)
    os.killpg(c.pids[-1], signal.SIGKILL)  # the newest node: its raylet and its worker
    killed = time.monotonic()
    first = run.first_step_after("node lost: continuing at world 1")
    run.finish()
    cnnctl("cluster", "add", "--state-dir", str(state))  # the node comes back for the next round
    return first - killed


def plain_round(state: Path, data: Path, storage: Path, name: str) -> float:
    from cnnctl.orchestrator import cluster
    from cnnctl.orchestrator.metrics import read

    run = Train(state, "--preset", "demo-fashion", "--data", str(data), "--name", name, "--epochs", "3", "--address",
                cluster.load(state).address, "--nodes", "1",
                *sum((["--set", s] for s in [f"run.storage={storage}", *SETTINGS]), []))
    wait_for_checkpoint(run, storage / name)
    os.kill(read(str(storage / name))[-1]["pid_of_rank"][0], signal.SIGKILL)  # the one worker
    killed = time.monotonic()
    first = run.first_step_after("resuming epoch 2")
    run.finish()
    return first - killed


def curves(state: Path, work: Path, png: str, epochs: int, settle: float) -> None:
    from cnnctl.orchestrator import cluster
    from cnnctl.orchestrator.metrics import read

    data, storage = work / "fashion-mnist", work / "curves"
    cnnctl("shard", "pack", "fashion-mnist", str(data), "--shard-size", "5000")
    demo = ["--preset", "demo-fashion", "--data", str(data), "--epochs", str(epochs), "--address",
            cluster.load(state).address, "--workers-per-node", "1",
            *sum((["--set", s] for s in [f"run.storage={storage}", "parallel.cpus_per_worker=2", "run.log_every=50",
                                         "run.checkpoint_every_steps=100", "parallel.resize_check_s=5",
                                         f"parallel.node_loss_settle_s={settle}"]), [])]
    Train(state, *demo, "--name", "uninterrupted", "--nodes", "2").finish(timeout=3600)
    run = Train(state, *demo, "--name", "elastic", "--nodes", "1-2")
    wait_for_checkpoint(run, storage / "elastic", epoch=1, step=200)
    os.killpg(cluster.load(state).pids[-1], signal.SIGKILL)
    run.wait_for("node lost: continuing")
    wait_for_checkpoint(run, storage / "elastic", epoch=2, step=100)
    cnnctl("cluster", "add", "--state-dir", str(state))
    run.wait_for("nodes returned: continuing")
    run.finish(timeout=3600)
    for name in ("uninterrupted", "elastic"):
        for r in read(str(storage / name)):
            worlds = "+".join(str(s["world"]) for s in r["segments"])
            print(f"{name} epoch {r['epoch'] + 1}: worlds {worlds}, train loss {r['train_loss']:.4f}, val loss "
                  f"{r['val_loss']:.4f}, val top-1 {r['val_top1']:.4f}, samples {r['samples_trained']}, "
                  f"global batch {r['global_batch']}")
    print(cnnctl("report", str(storage / "uninterrupted"), str(storage / "elastic"), "--out", png).strip())


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s [{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="parallel.node_loss_settle_s of the elastic runs")
    parser.add_argument("--curves", help="PNG: draw the demo's loss curves, uninterrupted and resized, instead")
    parser.add_argument("--epochs", type=int, default=4, help="--curves: the demo's epochs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnctl-bench-elastic-"))
    data, state, storage = work / "data", work / "cluster", work / "runs"
    print(cnnctl("cluster", "up", "--local", "--nodes", "2", "--cpus-per-node", "2", "--state-dir",
                 str(state)).splitlines()[0])
    try:
        if args.curves:
            curves(state, work, str(Path(args.curves).resolve()), args.epochs, args.settle)
        else:
            restarts(state, data, storage, args.rounds, args.settle)
    finally:
        cnnctl("cluster", "down", "--state-dir", str(state))


def restarts(state: Path, data: Path, storage: Path, rounds: int, settle: float) -> None:
    for split, limit, size in (("train", "60", "170"), ("test", "10", "100")):
        cnnctl("shard", "pack", "fashion-mnist", str(data), "--split", split, "--per-class-limit", limit,
               "--shard-size", size)
    elastic, plain = [], []
    for i in range(rounds):  # interleaved, so a slower minute of the machine hits both
        elastic.append(elastic_round(state, data, storage, f"elastic-{i}", settle))
        print(f"round {i + 1}: elastic, node lost -> first step at world 1: {elastic[-1]:.1f} s", flush=True)
        plain.append(plain_round(state, data, storage, f"plain-{i}"))
        print(f"round {i + 1}: plain restart, worker lost -> first step at world 1: {plain[-1]:.1f} s", flush=True)
    print(f"elastic (node lost, settle {settle:g} s): {spread(elastic)}")
    print(f"plain restart (worker lost, same world): {spread(plain)}")
    print(f"ratio elastic / plain: {statistics.median(elastic) / statistics.median(plain):.2f}x")

if __name__ == "__main__":
    main()
