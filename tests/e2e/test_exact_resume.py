"""Exact mid-epoch resume through the real `cnnctl train` on the session's Ray cluster.

The reference: 2 dp ranks x 2 loader workers (and a tower pair, mp=2), 3 epochs of 75 steps on
Fashion-MNIST shards of uneven sizes (170, 170, 170, 90), a step checkpoint every 5 steps. Then the
same run with a Ray Train worker SIGKILLed by its pid, or the driver SIGKILLed and the command run
again, just after the first step checkpoint of the second epoch: it must end with weights bitwise
equal to the reference's, and every epoch's metrics must show the same samples trained (count and
digest of their keys), resumed mid-epoch where it was killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.metrics import read
from cnnctl_cli import cli, sets

pytestmark = pytest.mark.timeout(900)

STEPS = 600 // 8  # 600 training images, a global batch of 8
SETTINGS = ["data.batch_size=8", "model.width=0.5", "data.loader_workers=2", "run.checkpoint_every_steps=5",
            "run.keep_checkpoints=4", "run.log_every=1000", "run.max_failures=2"]
LAYOUTS = {"dp2": ["parallel.workers_per_node=2"], "mp2": ["parallel.workers_per_node=2", "parallel.mp=2"]}


def train_args(ray_cluster, root: str, storage: Path, name: str, layout: str) -> list[str]:
    return ["train", "--preset", "demo-fashion", "--data", root, "--name", name, "--epochs", "3",
            "--address", ray_cluster.address, *sets(f"run.storage={storage}", *SETTINGS, *LAYOUTS[layout])]


@pytest.fixture(scope="module")
def reference(ray_cluster, uneven_fmnist_root, tmp_path_factory):
    """layout -> the run folder of the uninterrupted run."""
    storage = tmp_path_factory.mktemp("reference")
    out = {}
    for layout in LAYOUTS:
        cli(*train_args(ray_cluster, uneven_fmnist_root, storage, layout, layout))
        out[layout] = storage / layout
    return out


def step_checkpoints(run: Path, epoch: int) -> list[Path]:
    found = []
    for folder in run.glob("checkpoint_*"):
        try:
            meta = ckpt.load_meta(str(folder))
        except (OSError, ValueError):
            continue
        if ckpt.is_complete(str(folder)) and meta.get("mid_epoch") and meta["epoch"] == epoch:
            found.append(folder)
    return found


def wait_for(what, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := what():
            return value
        assert proc is None or proc.poll() is None, "the run ended first"
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s")


def same_as_reference(run: Path, ref: Path) -> list[dict]:
    """The run's rows, once checked against the reference's: same samples, losses and final weights."""
    rows, ref_rows = read(str(run)), read(str(ref))
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for row, want in zip(rows, ref_rows):
        assert row["samples_trained"] == want["samples_trained"] == STEPS * 8  # every rank pair, every step
        assert row["samples_digest"] == want["samples_digest"]  # the same keys: none twice, none skipped
        losses = ("train_loss", "val_loss", "val_top1")
        assert [row[k] for k in losses] == [want[k] for k in losses]
    final, expected = ckpt.load_weights(ckpt.find(str(run))), ckpt.load_weights(ckpt.find(str(ref)))
    assert final.keys() == expected.keys()
    unequal = [k for k in final if not torch.equal(final[k], expected[k])]
    assert not unequal, f"weights differ from the uninterrupted run's: {unequal}"
    return rows


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_worker_killed_mid_epoch_ends_with_the_uninterrupted_weights(ray_cluster, uneven_fmnist_root, reference,
                                                                       tmp_path, layout):
    run = tmp_path / "worker-loss"
    seen = {}

    def kill_rank1():
        first = wait_for(lambda: step_checkpoints(run, 1), 300)
        seen["after"] = ckpt.load_meta(str(first[0]))["metrics"]["step_in_epoch"]
        seen["pid"] = read(str(run))[0]["pid_of_rank"][1]
        os.kill(seen["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank1, daemon=True)
    killer.start()
    cli(*train_args(ray_cluster, uneven_fmnist_root, tmp_path, "worker-loss", layout))
    killer.join(5)
    assert "pid" in seen, "the worker was never killed"
    rows = same_as_reference(run, reference[layout])
    assert rows[0]["resumed_at_step"] is None and rows[2]["resumed_at_step"] is None
    assert 0 < rows[1]["resumed_at_step"] < STEPS // 2  # epoch 2 went on from a step checkpoint of its own
    assert rows[1]["resumed_at_step"] % 5 == 0 and rows[1]["resumed_at_step"] >= seen["after"]
    assert seen["pid"] not in rows[1]["pid_of_rank"]  # in new worker processes


def test_a_killed_driver_rerun_skips_a_torn_checkpoint_and_ends_with_the_uninterrupted_weights(
        ray_cluster, uneven_fmnist_root, reference, tmp_path):
    """The driver SIGKILLed mid-epoch, its newest step checkpoint then torn (as an upload cut short
    leaves it: no COMPLETE marker), a rerun at another loader-worker count refused, then the same
    command again: it resumes from the step checkpoint before the torn one."""
    exe = str(Path(sys.executable).with_name("cnnctl"))
    env = {**os.environ, "CNNCTL_CLUSTER_DIR": str(Path(ray_cluster.token_path).parent)}
    run = tmp_path / "driver-loss"
    args = train_args(ray_cluster, uneven_fmnist_root, tmp_path, "driver-loss", "dp2")
    proc = subprocess.Popen([exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(step_checkpoints(run, 1)) >= 2, 300, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    workers = read(str(run))[0]["pid_of_rank"]
    wait_for(lambda: not any(_alive(pid) for pid in workers), 120)  # Ray ends a dead driver's workers
    newest = max((f for f in run.glob("checkpoint_*") if ckpt.is_complete(str(f))), key=lambda f: ckpt._order(str(f)))
    torn_at = ckpt.load_meta(str(newest))["step"]
    (newest / ckpt.MARKER).unlink()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = ckpt.load_meta(ckpt.find(str(run)))
    assert before["mid_epoch"] and before["step"] < torn_at

    refused = subprocess.run([exe, *args, "--set", "data.loader_workers=1"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0
    assert "data.loader_workers 2 -> 1" in refused.stderr and "mid-epoch checkpoint" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (run / "config.yaml").read_text().count("loader_workers: 1")  # nothing of the refused run was written

    rerun = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed_step = before["metrics"]["step_in_epoch"]
    assert f"resuming epoch {before['epoch'] + 1} after its step {resumed_step}" in rerun.stdout + rerun.stderr
    rows = same_as_reference(run, reference["dp2"])
    assert rows[before["epoch"]]["resumed_at_step"] == resumed_step


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
