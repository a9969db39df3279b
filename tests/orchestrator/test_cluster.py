"""orchestrator/cluster.py without a cluster: `cluster down` signals only the processes it started, and
a local Ray's token is its owner's alone. (tests/e2e/test_security.py checks a running cluster.)"""

import json
import subprocess
import time

import pytest

from cnnctl.orchestrator import cluster, ray_security


def test_cluster_down_leaves_a_process_that_reused_a_recorded_pid_alone(tmp_path):
    """A state file outlives its cluster (a reboot, a crash): its pids may name other processes now."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a group leader, as a node was
    try:
        started = cluster.start_time(other.pid)
        state = tmp_path / "stale"
        state.mkdir()
        record = {"address": "127.0.0.1:1", "token_path": str(state / "auth_token"), "temp_dir": str(tmp_path),
                  "pids": [other.pid], "nodes": 1, "cpus_per_node": 1, "started": [started - 1]}
        (state / "cluster.json").write_text(json.dumps(record))
        assert cluster.down(state, grace=1) == []
        time.sleep(0.2)
        assert other.poll() is None, "cluster down signalled a process it did not start"
        assert not (state / "cluster.json").exists()
        # The same pid recorded with its own start time is the node, and is stopped.
        (state / "cluster.json").write_text(json.dumps({**record, "started": [started]}))
        assert cluster.down(state, grace=5) == [other.pid]
        assert other.poll() is not None
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


@pytest.mark.parametrize("mode", [None, 0o644])
def test_a_local_rays_token_is_written_or_tightened_to_0600(tmp_path, monkeypatch, mode):
    """Ray writes ~/.ray/auth_token with the umask's mode; cnnctl writes it first (or tightens it)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    if mode:
        token.parent.mkdir(mode=0o755)
        token.write_text("a" * 64)
        token.chmod(mode)
    ray_security.ensure_private_token()
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700
    assert len(token.read_text()) == 64 and (mode is None or token.read_text() == "a" * 64)
