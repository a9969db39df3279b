"""What `cnnctl cluster up --local` exposes on a shared machine: every port of every node on loopback,
its token and state readable by their owner only. (`cluster down` signalling only its own nodes:
tests/orchestrator/test_cluster.py; a `--dashboard` cluster's sockets: tests/e2e/test_jobs.py.)"""

from pathlib import Path

from tests.sockets import beyond_loopback, descendants, listening


def listens_on_loopback_only(cluster, extra_port: int | None = None) -> None:
    """Every TCP socket of every process of a 2-node ``cluster`` is on loopback; ``extra_port`` (the
    dashboard of a `cluster up --dashboard` one, tests/e2e/test_jobs.py) is among them."""
    sockets = listening(descendants(cluster.pids))
    names = [name for _, _, name in sockets]
    # Both nodes' servers are there (the head's GCS, a raylet per node), so the check saw the cluster.
    assert names.count("gcs_server") == 1 and names.count("raylet") >= 2 * 2, sorted(sockets)
    assert extra_port is None or extra_port in {port for _, port, _ in sockets}, sorted(sockets)
    assert not beyond_loopback(sockets), beyond_loopback(sockets)
    assert cluster.address.startswith("127.0.0.1:")


def test_a_local_cluster_listens_on_loopback_only(ray_cluster):
    listens_on_loopback_only(ray_cluster)


def test_a_local_clusters_token_and_state_are_its_owners_alone(ray_cluster):
    state = Path(ray_cluster.token_path).parent
    assert state.stat().st_mode & 0o777 == 0o700
    for secret in (Path(ray_cluster.token_path), state / "cluster.json"):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert not [p for p in state.iterdir() if ".tmp" in p.name]  # published by rename, nothing left
