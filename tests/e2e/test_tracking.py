"""`run.tracker=mlflow`: a real `mlflow server` (SQLite backend) on 127.0.0.1, started here and
stopped by its process id; `cnnctl train` on the session's cluster logs the resolved config, each
epoch's rank-0 metrics and the final checkpoint into it. A tracker that is down, and tracking off:
tests/orchestrator/test_tracking_without_server.py."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.cluster import free_port
from orchestrator.config import resolve
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
