"""`run.tracker=mlflow`: a real `mlflow server` (SQLite backend) on 127.0.0.1, started here and
stopped by its process id; `cnnctl train` on the session's cluster logs the resolved config, each
epoch's rank-0 metrics and the final checkpoint into it. A tracker that is down, and tracking off:
tests/orchestrator/test_tracking_without_server.py."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cnnctl.orchestrator.cluster import free_port
from cnnctl.orchestrator.config import resolve
from tests.e2e.cnnctl_cli import cli, sets

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = ["data.limit=64", "data.batch_size=32", "model.width=0.25", "run.log_every=1000"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="the extra `track` (make setup installs it)")
    tmp = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                             "--default-artifact-root", str(tmp / "artifacts")],
                            stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its own workers: the session it leads
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_run_is_logged_to_mlflow(mlflow_server, ray_cluster, fmnist_root, tmp_path):
    from mlflow.tracking import MlflowClient

    out = cli("train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", "tracked", "--epochs", "2",
              "--address", ray_cluster.address,
              *sets(f"run.storage={tmp_path}", *SMALL, "run.tracker=mlflow", f"run.tracker_uri={mlflow_server}",
                    "run.tracker_experiment=cnnctl-test"))
    assert "warning" not in out, out
    done = re.search(r"done: epoch 1 val_top1 ([\d.]+) \| checkpoint (\S+)", out)
    assert done, out
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("cnnctl-test")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    params = run.data.params
    assert params["model.name"] == resolve(preset="demo-fashion").model.name
    assert params["model.num_classes"] == "10" and params["data.limit"] == "64" and params["run.tracker"] == "mlflow"
    assert params["data.mean"].startswith("[0.28")  # settled from the manifest before training
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value == pytest.approx(float(done.group(1)), abs=5e-4)
    assert {"train_loss", "train_top1", "val_loss", "val_top5", "lr", "images_per_sec"} <= set(run.data.metrics)
    assert run.data.tags["cnnctl.checkpoint"] == str(tmp_path / "tracked" / Path(done.group(2)).name)
    assert run.data.tags["cnnctl.run_dir"] == str(tmp_path / "tracked")


def test_a_sweep_logs_one_run_per_trial_grouped_by_configuration(mlflow_server, ray_cluster, fmnist_root, tmp_path):
    """2 configurations x 2 seeds, 1 epoch: 4 runs under one experiment, tagged with the configuration
    (cnnctl.cell) and the seed, each with its config, its epoch's metrics and Tune's final checkpoint."""
    from mlflow.tracking import MlflowClient

    grid = tmp_path / "lr-grid.yaml"
    grid.write_text("space:\n  optim.lr: {grid: [0.01, 0.02]}\n")
    storage = tmp_path / "runs"
    out = cli("tune", "--preset", "demo-fashion", "--data", fmnist_root, "--search", str(grid), "--seeds", "2",
              "--max-concurrent", "2", "--epochs", "1", "--name", "tracked-sweep", "--address", ray_cluster.address,
              *sets(f"run.storage={storage}", *SMALL, "schedule.warmup_epochs=0", "run.tracker=mlflow",
                    f"run.tracker_uri={mlflow_server}", "run.tracker_experiment=cnnctl-sweep"))
    assert "warning" not in out, out
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("cnnctl-sweep").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs), [r.info for r in runs]
    groups: dict[str, list] = {}
    for run in runs:
        tags, params = run.data.tags, run.data.params
        groups.setdefault(tags["cnnctl.cell"], []).append(run)
        assert tags["cnnctl.sweep"] == str(storage / "tracked-sweep") and tags["cnnctl.trial"] == run.info.run_name
        assert params["run.seed"] == tags["cnnctl.seed"] and params["model.num_classes"] == "10"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_top1")] == [0]
        checkpoint = Path(tags["cnnctl.checkpoint"])
        assert checkpoint.parent.name == f"trial_{run.info.run_name}", checkpoint
        assert (checkpoint / "meta.json").exists(), checkpoint
    assert sorted(groups) == ["c0", "c1"]
    for members in groups.values():  # one configuration: its two seeds, one learning rate
        assert len({r.data.params["optim.lr"] for r in members}) == 1
        assert len({r.data.tags["cnnctl.seed"] for r in members}) == 2


def test_a_sweep_whose_tracker_is_down_trains_its_trials(ray_cluster, fmnist_root, tmp_path):
    """Each trial's process says it once (Ray forwards it to the driver's console) and trains on."""
    from tests.e2e.cnnctl_cli import run_cnnctl

    pytest.importorskip("mlflow", reason="the extra `track`")
    down = f"http://127.0.0.1:{free_port()}"
    grid = tmp_path / "lr-grid.yaml"
    grid.write_text("space:\n  optim.lr: {grid: [0.01, 0.02]}\n")
    storage = tmp_path / "runs"
    rc, lines = run_cnnctl("tune", "--preset", "demo-fashion", "--data", fmnist_root, "--search", str(grid),
                           "--max-concurrent", "2", "--epochs", "1", "--name", "down", "--address", ray_cluster.address,
                           *sets(f"run.storage={storage}", *SMALL, "run.tracker=mlflow", f"run.tracker_uri={down}"))
    assert rc == 0, "\n".join(lines)
    # one line a trial at most (both of the test cluster's nodes run on this machine: Ray may forward a
    # worker's line twice, once per node's log monitor)
    warned = {line for line in lines if "warning: tracker mlflow" in line}
    assert len(warned) <= 2 and all("starting a run failed" in w for w in warned), "\n".join(lines)
    with open(storage / "down" / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert [t["status"] for t in trials] == ["done", "done"], trials
