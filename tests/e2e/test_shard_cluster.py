"""`cnnctl shard --address` on the 2-node test cluster, as a user runs it: its own process, which
connects as `cnnctl train --address` does (the cluster's token found through its state folder)."""

from pathlib import Path

import pytest

from tests.e2e.cnnctl_cli import clean_env, cli, run_cnnctl

pytestmark = pytest.mark.timeout(600)


def test_shard_on_the_cluster_writes_the_bytes_a_local_run_writes(ray_cluster, image_tree, tmp_path):
    state = str(Path(ray_cluster.token_path).parent)
    args = ["shard", str(image_tree), "--shard-size", "4", "--resize", "48", "--prefix", "tree"]
    rc, lines = run_cnnctl(args[0], args[1], str(tmp_path / "cluster"), *args[2:], "--address", ray_cluster.address,
                           env=clean_env(CNNCTL_CLUSTER_DIR=state))
    text = "\n".join(lines)
    assert rc == 0, text
    assert f"written by Ray tasks on 2 node(s) of {ray_cluster.address}" in text, text  # both nodes wrote shards
    cli(args[0], args[1], str(tmp_path / "local"), *args[2:], "--workers", "2")
    tars = sorted(p.name for p in (tmp_path / "local").glob("*.tar"))
    assert len(tars) == 15 and tars == sorted(p.name for p in (tmp_path / "cluster").glob("*.tar"))
    for name in tars:
        assert (tmp_path / "cluster" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_shard_without_the_clusters_token_is_one_clear_error(ray_cluster, image_tree, tmp_path):
    """A cluster that is not the one `cnnctl cluster up` recorded here: no token to find."""
    rc, lines = run_cnnctl("shard", str(image_tree), str(tmp_path / "o"), "--address", ray_cluster.address,
                           env=clean_env(CNNCTL_CLUSTER_DIR=str(tmp_path / "no-state")), timeout=120)
    assert rc != 0
    refusal = f"error: cannot join the Ray cluster at {ray_cluster.address}"
    assert any(line.startswith(refusal) and "CNNCTL_CLUSTER_DIR" in line for line in lines), "\n".join(lines)
    assert not list((tmp_path / "o").glob("*.manifest.json"))
