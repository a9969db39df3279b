"""A step checkpoint taken at 2 Ray Train workers resumes through the real `cnnctl train` at 1 worker:
the rest of the epoch is dealt to the one reader left, so the epoch trains the samples of the
uninterrupted 2-worker run, each once (count and digest of their keys), and every optimiser step
still takes the global batch of 8 (2 x 4 before, 1 x 4 x 2 accumulation steps after).

The run is stopped where a lost node leaves it: its newest checkpoint a step checkpoint (here the
uninterrupted run's step checkpoint after step 20 of 50, copied into a run folder of its own, rather than a
worker killed at a moment a thread guesses). Fashion-MNIST in uneven shards (170, 170, 170, 90), 400 of
them, 2 loader workers per rank before and 1 after: each of the 4 readers takes 100 samples of its
shard, so the reader of the 90-sample shard wraps round."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.metrics import read
from cnnctl_cli import cli, sets

pytestmark = pytest.mark.timeout(600)

SETTINGS = ["data.batch_size=8", "data.limit=400", "model.width=0.5", "run.checkpoint_every_steps=10",
            "run.keep_checkpoints=10", "run.log_every=1000"]


def train(ray_cluster, root: str, storage: Path, name: str, workers: int) -> str:
    return cli("train", "--preset", "demo-fashion", "--data", root, "--name", name, "--epochs", "1",
               "--address", ray_cluster.address,
               *sets(f"run.storage={storage}", *SETTINGS, f"parallel.workers_per_node={workers}",
                     f"data.loader_workers={workers}"))


def test_a_step_checkpoint_at_2_workers_resumes_at_1_with_the_epochs_samples_and_global_batch(
        ray_cluster, uneven_fmnist_root, tmp_path):
    train(ray_cluster, uneven_fmnist_root, tmp_path, "whole", 2)
    [reference] = read(str(tmp_path / "whole"))
    step20 = next(f for f in (tmp_path / "whole").glob("checkpoint_*")
                  if ckpt.load_meta(str(f)).get("metrics", {}).get("step_in_epoch") == 20)
    shutil.copytree(step20, tmp_path / "resized" / step20.name)

    out = train(ray_cluster, uneven_fmnist_root, tmp_path, "resized", 1)
    assert "resumed at world 1 (dp 1) from step 20 of epoch 1; global batch 8 = 1 x 4 x 2 accumulation steps" in out
    [row] = read(str(tmp_path / "resized"))
    assert row["samples_trained"] == reference["samples_trained"] == 50 * 8
    assert row["samples_digest"] == reference["samples_digest"]  # the same keys: none twice, none skipped
    assert row["global_batch"] == reference["global_batch"] == [8, 8]  # every optimiser step, before and after
    assert [(s["world"], s["from_step"], s["batch"], s["accumulate"]) for s in row["segments"]] == [(2, 0, 4, 1),
                                                                                                  (1, 20, 4, 2)]
    assert row["steps_per_rank"] == [100] and row["resumed_at_step"] == 40  # batches of 4 at the new layout
    data = yaml.safe_load((tmp_path / "resized" / "config.yaml").read_text())["data"]
    assert (data["batch_size"], data["global_batch"]) == (4, 8)


@pytest.mark.parametrize("layout", [sets("parallel.mp=2"),
                                    ["--parallel", "owt", *sets("model.towers=1", "parallel.fc_group=2")]],
                         ids=["hybrid-tower-pairs", "owt-groups"])
def test_tower_pairs_and_owt_groups_resume_on_fewer_nodes_whole(ray_cluster, uneven_fmnist_root, tmp_path, layout):
    """2 nodes x 2 workers (hybrid: 2 tower pairs; OWT: 2 groups of K=2) -> 1 node x 2 (one pair, one
    group): mp and K stay, dp halves, the epoch's rest is dealt and each sample trained once."""
    def run(name: str, nodes: str) -> str:
        return cli("train", "--preset", "demo-fashion", "--data", uneven_fmnist_root, "--name", name, "--epochs", "1",
                   "--address", ray_cluster.address, "--nodes", nodes, "--workers-per-node", "2", *layout,
                   *sets(f"run.storage={tmp_path}", *SETTINGS, "data.loader_workers=1"))

    run("whole", "2")
    [reference] = read(str(tmp_path / "whole"))
    step20 = next(f for f in (tmp_path / "whole").glob("checkpoint_*")
                  if ckpt.load_meta(str(f)).get("metrics", {}).get("step_in_epoch") == 20)
    shutil.copytree(step20, tmp_path / "resized" / step20.name)
    dp = reference["segments"][0]["dp"]
    out = run("resized", "1")
    assert f"resumed at world 2 (dp {dp // 2}) from step 20 of epoch 1" in out
    [row] = read(str(tmp_path / "resized"))
    assert row["samples_trained"] == reference["samples_trained"] == 50 * 8
    assert row["samples_digest"] == reference["samples_digest"]
    assert row["global_batch"] == reference["global_batch"] == [8, 8]
    assert [(s["world"], s["dp"], s["accumulate"]) for s in row["segments"]] == [(4, dp, 1), (2, dp // 2, 2)]
