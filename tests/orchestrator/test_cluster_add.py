"""`cnnctl cluster add`: one more node joins a running local cluster, as `cluster up` starts its nodes, to
bring a lost node back or grow an elastic run. A cluster of its own (never the session's `ray_cluster`,
whose nodes this test must not kill), probed from subprocesses (this process may be joined to that one)."""

import json
import os
import signal
import time

import pytest
from typer.testing import CliRunner

from cnnctl.orchestrator import cluster
from cnnctl.orchestrator.cli import app
from tests.sockets import beyond_loopback, descendants, listening


def cnnctl(*args: str):
    return CliRunner().invoke(app, ["cluster", *args])


def test_cluster_add_without_a_cluster_is_one_line(tmp_path):
    res = cnnctl("add", "--state-dir", str(tmp_path))
    assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
        f"error: no local cluster is up in {tmp_path} (cnnctl cluster up --local)"], res.output


def test_cluster_add_to_a_dead_head_is_one_line(tmp_path):
    """A state file whose head is gone (the pid's start time is not the recorded one)."""
    record = {"address": "127.0.0.1:1", "token_path": str(tmp_path / "auth_token"), "temp_dir": str(tmp_path),
              "pids": [os.getpid()], "nodes": 1, "cpus_per_node": 1, "started": [cluster.start_time(os.getpid()) - 1]}
    (tmp_path / "cluster.json").write_text(json.dumps(record))
    res = cnnctl("add", "--state-dir", str(tmp_path))
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert f"head of the local cluster at 127.0.0.1:1 (pid {os.getpid()}) is not alive" in res.stderr
    assert json.loads((tmp_path / "cluster.json").read_text()) == record  # nothing started, nothing recorded


@pytest.mark.slow
def test_a_node_added_killed_and_added_again(tmp_path):
    state = str(tmp_path / "cluster")
    up = cnnctl("up", "--local", "--nodes", "1", "--cpus-per-node", "1", "--state-dir", state)
    assert up.exit_code == 0, up.output
    try:
        c = cluster.load(state)
        added = cnnctl("add", "--state-dir", state)
        assert added.exit_code == 0 and added.stdout == f"node 1 joined {c.address} (2 nodes alive)\n", added.output
        c = cluster.load(state)
        assert len(c.pids) == c.nodes == 2 and cluster.node_alive(c.pids[1], c.started[1])
        status = cnnctl("status", "--state-dir", state)
        assert status.exit_code == 0 and "nodes 2/2 alive" in status.output, status.output
        assert cluster.live_nodes(c) == [0, 1]  # Ray's own view, from a driver of its own
        # The new node's servers (its raylet among them) listen on loopback only, as `up`'s nodes do.
        sockets = listening(descendants([c.pids[1]]))
        assert "raylet" in {name for _, _, name in sockets} and not beyond_loopback(sockets), sorted(sockets)

        os.killpg(c.pids[1], signal.SIGKILL)  # the node's session: `ray start`, its raylet and agents
        deadline = time.monotonic() + 10
        while cluster.alive(c.pids[1]) and time.monotonic() < deadline:
            time.sleep(0.1)
        status = cnnctl("status", "--state-dir", state)
        assert status.exit_code == 1 and "nodes 1/2 alive" in status.output, status.output
        assert f"node 1: pid {c.pids[1]} dead" in status.output, status.output

        # Back at once: `add` waits until Ray too holds node 1 dead and node 2 alive.
        again = cnnctl("add", "--cpus-per-node", "2", "--state-dir", state)
        assert again.exit_code == 0 and again.stdout == f"node 2 joined {c.address} (2 nodes alive)\n", again.output
        assert cluster.live_nodes(c) == [0, 2]
        c = cluster.load(state)
        assert len(c.pids) == c.nodes == 3 and (tmp_path / "cluster" / "logs" / "node-2.log").exists()
        assert "--num-cpus=2" in open(f"/proc/{c.pids[2]}/cmdline").read().split("\0")
    finally:
        down = cnnctl("down", "--state-dir", state)
    assert down.exit_code == 0 and down.stdout == "stopped 2 node(s)\n", down.output
    assert not any(cluster.alive(pid) for pid in c.pids)
    assert not (tmp_path / "cluster" / "cluster.json").exists()
