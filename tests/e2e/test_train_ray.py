"""A real 2-worker Ray Train run on a real Fashion-MNIST subset, then `cnnctl eval` on its checkpoint."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.metrics import read
from cnnctl.orchestrator.train import fit, run_dir

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def trained(ray_cluster, fmnist_root, tmp_path_factory):
    """The real `cnnctl train` command (in-process through Typer) on the shared cluster."""
    storage = tmp_path_factory.mktemp("runs")
    sets = [f"run.storage={storage}", "data.batch_size=64", "model.width=0.5", "run.log_every=2"]
    args = ["train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", "e2e", "--epochs", "2",
            "--address", ray_cluster.address]
    res = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    assert "done: epoch 1 val_top1" in res.output
    cfg = resolve("demo-fashion", None, sets + [f"data.root={fmnist_root}", "run.name=e2e", "schedule.epochs=2",
                                                f"parallel.address={ray_cluster.address}"])
    return cfg, None


def test_both_ranks_step_equally_and_checkpoints_exist(trained):
    cfg, _ = trained
    rows = read(run_dir(cfg))
    assert [r["epoch"] for r in rows] == [0, 1]
    steps = 600 // 2 // 32  # 600 training images, dp=2, 32 per rank
    assert all(r["steps_per_rank"] == [steps, steps] for r in rows)
    assert all(r["val_count"] == 200 for r in rows)
    assert len(set(rows[0]["node_of_rank"])) == 1  # nodes=1: both workers on one Ray node
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec", "epoch_time_s"):
        assert key in rows[-1]
    path = ckpt.find(run_dir(cfg))
    assert (Path(path) / "model.safetensors").exists() and ckpt.is_complete(path)
    assert ckpt.load_state(path)["epoch"] == 1
    assert ckpt.load_config(path).run.name == "e2e"
    assert (Path(run_dir(cfg)) / "config.yaml").exists()
    assert list((Path(run_dir(cfg)) / "tensorboard").glob("events.out.tfevents.*"))


def test_eval_cli_reproduces_the_final_val_accuracy(trained, tmp_path):
    cfg, result = trained
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", run_dir(cfg), "--split", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert written["count"] == 200
    # the same weights on the same split: eval equals what the last epoch reported
    # batch-size rounding may flip a near tie
    assert written["top1"] == pytest.approx(read(run_dir(cfg))[-1]["val_top1"], abs=1.5 / 200)
    assert 0 <= written["top1"] <= written["top5"] <= 1


def test_rerunning_a_finished_run_resumes_instead_of_restarting(trained):
    cfg, _ = trained
    before = read(run_dir(cfg))
    result = fit(cfg)  # same name: Ray restores the run; nothing is left to train
    assert result.error is None
    assert read(run_dir(cfg)) == before


def test_two_nodes_data_parallel(ray_cluster, fmnist_root, tmp_path):
    cfg = resolve("demo-fashion", None, [
        f"data.root={fmnist_root}", f"run.storage={tmp_path}", "run.name=two-nodes", "schedule.epochs=1",
        "data.batch_size=64", "model.width=0.5", "parallel.nodes=2", "parallel.workers_per_node=1",
        f"parallel.address={ray_cluster.address}",
    ])
    cfg.model.num_classes = 10
    assert fit(cfg).error is None
    (row,) = read(run_dir(cfg))
    assert len(set(row["node_of_rank"])) == 2  # the two workers ran on two different Ray nodes
    assert row["steps_per_rank"] == [9, 9]


def test_more_nodes_than_the_cluster_has_fails_fast(ray_cluster, fmnist_root, tmp_path):
    from cnnctl.orchestrator.cluster import ClusterError

    cfg = resolve("demo-fashion", None, [f"data.root={fmnist_root}", f"run.storage={tmp_path}", "parallel.nodes=3",
                                         "data.batch_size=96", "parallel.workers_per_node=1",
                                         f"parallel.address={ray_cluster.address}"])
    with pytest.raises(ClusterError, match="--nodes 3 needs 3"):
        fit(cfg)


def test_hybrid_on_two_nodes_and_the_checkpoint_evaluates_at_mp1(ray_cluster, fmnist_root, tmp_path):
    """dp=2 x mp=2 over 4 workers on 2 Ray nodes; each tower pair shares a node; the canonical
    checkpoint then evaluates in one process (mp=1) to the same accuracy."""
    cfg = resolve("demo-fashion", None, [
        f"data.root={fmnist_root}", f"run.storage={tmp_path}", "run.name=hybrid", "schedule.epochs=1",
        "data.batch_size=64", "model.width=0.5", "parallel.nodes=2", "parallel.workers_per_node=2", "parallel.mp=2",
        f"parallel.address={ray_cluster.address}",
    ])
    cfg.model.num_classes = 10
    assert fit(cfg).error is None
    (row,) = read(run_dir(cfg))
    nodes = row["node_of_rank"]
    assert (row["dp"], row["mp"]) == (2, 2) and len(set(nodes)) == 2
    assert nodes[0] == nodes[1] and nodes[2] == nodes[3]  # tower pairs (2i, 2i+1) share a node
    assert row["steps_per_rank"] == [9, 9, 9, 9]
    res = CliRunner().invoke(app, ["eval", run_dir(cfg), "--split", "test", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(row["val_top1"], abs=1.5 / 200)


def test_owt_on_two_nodes_and_the_checkpoint_evaluates_at_mp1(ray_cluster, fmnist_root, tmp_path):
    """`cnnctl train --parallel owt`: 2 nodes x 2 workers, one OWT group of K=2 per node (each holds
    half of fc6/fc7/fc8), the groups data parallel to each other, bf16 gradient compression; the
    canonical checkpoint then evaluates in one process (mp=1) to the accuracy the run reported."""
    args = ["train", "--preset", "demo-fashion", "--parallel", "owt", "--nodes", "2", "--workers-per-node", "2",
            "--data", fmnist_root, "--name", "owt", "--epochs", "1", "--address", ray_cluster.address]
    sets = [f"run.storage={tmp_path}", "data.batch_size=64", "model.width=0.5", "model.towers=1",
            "parallel.grad_compression=bf16"]
    res = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    assert "FC split over 2 group(s) of K=2" in res.output
    cfg = resolve("demo-fashion", None, sets + [f"data.root={fmnist_root}", "run.name=owt"])
    (row,) = read(run_dir(cfg))
    nodes = row["node_of_rank"]
    assert (row["dp"], row["mp"], row["fc"]) == (4, 1, 2) and len(set(nodes)) == 2
    assert nodes[0] == nodes[1] and nodes[2] == nodes[3]  # OWT groups (2g, 2g+1) share a node
    assert row["steps_per_rank"] == [9, 9, 9, 9]  # every rank reads its own 16 images a step
    assert row["val_count"] == 200  # each test image once, though both ranks of a group evaluate it
    weights = ckpt.load_weights(ckpt.find(run_dir(cfg)))
    assert weights["classifier.0.weight"].shape == (256, 32 * 2 * 2)  # canonical fc6, both slices (width 0.5)
    res = CliRunner().invoke(app, ["eval", run_dir(cfg), "--split", "test", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(row["val_top1"], abs=1.5 / 200)
