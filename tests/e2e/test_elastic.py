"""`cnnctl train --nodes 1-2` on a 2-node local cluster of its own (real `ray start` nodes; the real
command in its own process, as a user runs it): one node's processes SIGKILLed mid-epoch, the run
continues at world 1 from its newest step checkpoint; a node added back (`cnnctl cluster add`), it
grows to world 2 at the next resize check.

Every epoch trains its 400 samples, each once, and every optimiser step takes the global batch of 8
(2 x 4, or 1 x 4 x 2 accumulation steps). An epoch resized midway trains the samples of the same epoch
of an uninterrupted run at the world it started at (reference runs at a fixed --nodes 2 and 1): the
same count and the same digest of their keys. The cluster is this module's own: the session's must not
lose a node."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench.elastic import Train, wait_for_checkpoint
from cnnctl.orchestrator import cluster as clusters
from cnnctl.orchestrator.metrics import read
from cnnctl_cli import cli, sets

pytestmark = pytest.mark.timeout(900)

EPOCHS = 6
SETTINGS = ["data.batch_size=8", "data.limit=400", "model.width=0.5", "run.log_every=5", "parallel.cpus_per_worker=2",
            "data.loader_workers=1", "parallel.workers_per_node=1"]
ELASTIC = ["run.checkpoint_every_steps=10", "run.keep_checkpoints=30", "parallel.resize_check_s=3",
           "parallel.node_loss_settle_s=5"]


@pytest.fixture(scope="module")
def elastic_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("elastic-cluster")
    cli("cluster", "up", "--local", "--nodes", "2", "--cpus-per-node", "2", "--state-dir", str(state))
    try:
        yield state
    finally:
        cli("cluster", "down", "--state-dir", str(state))


def train(state: Path, root: str, storage: Path, name: str, nodes: str, *more: str) -> Train:
    address = clusters.load(state).address
    return Train(state, "--preset", "demo-fashion", "--data", root, "--name", name, "--epochs", str(EPOCHS),
                 "--address", address, "--nodes", nodes, *sets(f"run.storage={storage}", *SETTINGS, *more))


def test_a_run_loses_a_node_mid_epoch_continues_at_world_1_and_grows_back_when_a_node_returns(
        elastic_cluster, uneven_fmnist_root, tmp_path):
    state = elastic_cluster
    # the uninterrupted epochs at each world, world 1 with the elastic run's batches there (4, twice a step)
    for nodes, batch in (("2", []), ("1", ["data.batch_size=4", "data.global_batch=8"])):
        train(state, uneven_fmnist_root, tmp_path, f"fixed-{nodes}", nodes, *batch).finish()
    reference = {w: read(str(tmp_path / f"fixed-{w}")) for w in (2, 1)}

    run = train(state, uneven_fmnist_root, tmp_path, "elastic", "1-2", *ELASTIC)
    run.wait_for("elastic over 1 to 2 nodes")
    wait_for_checkpoint(run, tmp_path / "elastic", epoch=1, step=20)  # epoch 2, step 20 of 50 saved
    lost = clusters.load(state).pids[1]
    os.killpg(lost, signal.SIGKILL)  # the node's raylet and its worker
    killed = time.monotonic()

    run.wait_for("node lost: continuing at world 1 (dp 1) from step")
    print(f"node lost -> first step at world 1: {run.first_step_after('node lost') - killed:.1f} s")
    joined = cli("cluster", "add", "--state-dir", str(state))
    assert "joined" in joined
    run.wait_for("nodes returned: continuing at world 2 (dp 2)")
    assert "done: epoch 5" in run.finish()

    rows = read(str(tmp_path / "elastic"))
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    worlds = [[s["world"] for s in r["segments"]] for r in rows]
    assert worlds[0] == [2] and worlds[-1][-1] == 2 and 1 in sum(worlds, [])
    assert worlds[1] == [2, 1]  # the node was lost in epoch 2, after its step checkpoint at step 20 or later
    for row in rows:
        assert row["samples_trained"] == 400  # every epoch: each sample once, none skipped
        assert row["global_batch"] == [8, 8]  # every optimiser step, at either world
        if len(row["segments"]) > 1:  # resized midway: the samples of the uninterrupted epoch
            started_at = row["segments"][0]["world"]
            assert row["samples_digest"] == reference[started_at][row["epoch"]]["samples_digest"], (
                row["epoch"], row["segments"], [(r["samples_digest"], r["segments"]) for r in rows], reference)
    assert (tmp_path / "elastic" / "config.yaml").read_text().count("min_nodes: 1") == 1
