"""A worker SIGKILLed by its pid mid-run: Ray Train restarts the workers from the newest checkpoint."""

import os
import signal
import threading
import time

import pytest

from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.metrics import read
from cnnctl.orchestrator.train import fit, run_dir

pytestmark = pytest.mark.timeout(600)


def _config(ray_cluster, fmnist_root, storage, name, max_failures):
    cfg = resolve("demo-fashion", None, [
        f"data.root={fmnist_root}", f"run.storage={storage}", f"run.name={name}", "schedule.epochs=4",
        "data.batch_size=64", "model.width=0.5", f"run.max_failures={max_failures}",
        f"parallel.address={ray_cluster.address}",
    ])
    cfg.model.num_classes = 10
    return cfg


def _kill_rank1_after_epoch(cfg, epoch: int, seen: dict) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = read(run_dir(cfg))
            if rows and rows[-1]["epoch"] >= epoch:
                seen["rows"] = rows
                seen["pid"] = rows[-1]["pid_of_rank"][1]
                os.kill(seen["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_worker_loss_resumes_from_the_last_checkpoint(ray_cluster, fmnist_root, tmp_path):
    cfg = _config(ray_cluster, fmnist_root, tmp_path, "survivor", max_failures=2)
    seen = {}
    watcher = _kill_rank1_after_epoch(cfg, 1, seen)
    result = fit(cfg)
    watcher.join(5)
    assert "pid" in seen, "the worker was never killed"
    assert result.error is None
    rows = read(run_dir(cfg))
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    # epoch 0 was not redone: its row is the one written before the kill
    assert rows[0] == seen["rows"][0]
    # the last epoch ran in new worker processes, the killed one among those replaced
    assert seen["pid"] not in rows[-1]["pid_of_rank"]


def test_more_failures_than_allowed_is_a_clear_error(ray_cluster, fmnist_root, tmp_path):
    cfg = _config(ray_cluster, fmnist_root, tmp_path, "fragile", max_failures=0)
    seen = {}
    watcher = _kill_rank1_after_epoch(cfg, 0, seen)
    try:
        result = fit(cfg)
        error = result.error
    except Exception as exc:  # noqa: BLE001 - whichever way Ray surfaces it, it must surface
        error = exc
    watcher.join(5)
    assert "pid" in seen
    assert error is not None
    assert [r["epoch"] for r in read(run_dir(cfg))][-1] < 3
