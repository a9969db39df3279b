"""The real job workflow on a laptop: `cnnctl cluster up --local --dashboard`, then Ray's own job
client (`ray job submit`, `ray job status`, `ray job logs`) runs `cnnctl train` on it, as on a real
cluster. The cluster is this module's own (its ports, its state folder), stopped by its pids."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.cnnctl_cli import cli, sets
from tests.e2e.test_security import listens_on_loopback_only

pytestmark = pytest.mark.timeout(600)

BIN = Path(sys.executable).parent  # `ray` and `cnnctl` of this environment


@pytest.fixture(scope="module")
def dashboard_cluster(tmp_path_factory):
    from cnnctl.orchestrator import cluster

    state = tmp_path_factory.mktemp("jobs-cluster")
    up = cli("cluster", "up", "--local", "--dashboard", "--nodes", "2", "--cpus-per-node", "2",
             "--state-dir", str(state))
    c = cluster.load(state)
    try:
        assert c.dashboard and c.dashboard.startswith("http://127.0.0.1:"), up
        assert f"ray job submit --address {c.dashboard} -- cnnctl train" in up, up
        assert f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path}" in up, up
        assert f"dashboard {c.dashboard}" in cli("cluster", "status", "--state-dir", str(state))
        yield c
    finally:
        cluster.down(state)
        assert not any(cluster.alive(pid) for pid in c.pids)


def ray_job(*args: str, token: str | None, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray job ARGS...` as a user types it: with the cluster's token env, or (``token`` None) none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    if token:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    return subprocess.run([str(BIN / "ray"), "job", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_dashboard_cluster_listens_on_loopback_only(dashboard_cluster):
    listens_on_loopback_only(dashboard_cluster, extra_port=int(dashboard_cluster.dashboard.rsplit(":", 1)[1]))


def test_ray_job_submit_runs_cnnctl_train_on_the_local_cluster(dashboard_cluster, fmnist_root, tmp_path):
    c, home = dashboard_cluster, tmp_path / "home"
    home.mkdir()
    address = ["--address", c.dashboard]
    train = [str(BIN / "cnnctl"), "train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", "job",
             "--epochs", "1", *sets(f"run.storage={tmp_path}", "data.batch_size=32", "model.width=0.5")]
    submit = ray_job("submit", *address, "--submission-id", "cnnctl-job", "--no-wait", "--", *train,
                     token=c.token_path, home=home)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline, status = time.monotonic() + 400, ""
    while time.monotonic() < deadline:
        out = ray_job("status", *address, "cnnctl-job", token=c.token_path, home=home)
        status = out.stdout + out.stderr  # Ray's CLI logs part of what it prints to stderr
        if re.search(r"Job 'cnnctl-job' (succeeded|failed|was stopped)", status):
            break
        time.sleep(3)
    out = ray_job("logs", *address, "cnnctl-job", token=c.token_path, home=home)
    logs = out.stdout + out.stderr
    assert "Job 'cnnctl-job' succeeded" in status, status + logs
    done = [line for line in logs.splitlines() if line.startswith("done: epoch 0 val_top1 ")]
    assert len(done) == 1, logs
    assert (tmp_path / "job").is_dir()
    # The dashboard, its agents, and the job's supervisor and driver: all on loopback.
    listens_on_loopback_only(c, extra_port=int(c.dashboard.rsplit(":", 1)[1]))


def test_a_job_client_without_the_token_is_refused(dashboard_cluster, tmp_path):
    listed = ray_job("list", "--address", dashboard_cluster.dashboard, token=None, home=tmp_path)
    assert listed.returncode != 0 and "Authentication required" in listed.stdout + listed.stderr, listed
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    listed = ray_job("list", "--address", dashboard_cluster.dashboard, token=str(wrong), home=tmp_path)
    assert listed.returncode != 0, listed
