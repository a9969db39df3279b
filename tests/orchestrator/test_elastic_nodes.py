"""`cnnctl train --nodes MIN-MAX`: the range, the node counts an elastic run refuses before Ray starts,
Ray Train's elastic policy counting whole nodes, and a worker settling its config at the world Ray
Train started it with (orchestrator/resume.at_world). The runs themselves: tests/e2e/test_elastic.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cnnctl.orchestrator import elastic, resume
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import ConfigError, resolve, to_yaml
from cnnctl.orchestrator.ray_workers import whole_nodes_policy


def dry_run(*args: str):
    return CliRunner().invoke(app, ["train", "--preset", "demo-fashion", "--dry-run", *args])


def test_nodes_min_max_is_an_elastic_run_and_a_single_number_is_not():
    out = dry_run("--nodes", "1-3", "--workers-per-node", "2", "--set", "data.batch_size=96")
    assert out.exit_code == 0, out.output
    assert "min_nodes: 1" in out.output and "nodes: 3" in out.output
    assert "# cluster: elastic over 1 to 3 nodes, at most 3 node(s) x 2 worker(s) = world 6" in out.output
    fixed = dry_run("--nodes", "3", "--workers-per-node", "2", "--set", "data.batch_size=96")
    assert fixed.exit_code == 0 and "min_nodes: null" in fixed.output and "elastic" not in fixed.output


@pytest.mark.parametrize("nodes", ["0-2", "2-", "a-b", "1-2-3", "-2"])
def test_a_node_range_that_is_not_one_is_one_line(nodes):
    out = dry_run("--nodes", nodes)
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"error: --nodes {nodes!r}: a number of nodes (4) or a range MIN-MAX "
                                               "(2-4), each at least 1"]


def test_each_node_count_the_run_cannot_train_at_is_one_line():
    with pytest.raises(ConfigError) as exc:  # 2 workers a node: 128 splits over dp 4 and 8, not 6
        resolve("demo-fashion", None, ["parallel.nodes=4", "parallel.min_nodes=2", "parallel.workers_per_node=2",
                                       "data.batch_size=128", "data.global_batch=128"])
    assert exc.value.lines == [
        "parallel.min_nodes: the run cannot train on 3 node(s) (world 6): the global batch 128 does not split over "
        "dp=6"]
    with pytest.raises(ConfigError) as exc:  # OWT groups of 4 ranks: not on one node of 2 workers
        resolve("imagenet-alexnet-owt", None, ["parallel.fc=model", "parallel.nodes=2", "parallel.min_nodes=1",
                                               "parallel.workers_per_node=2", "parallel.fc_group=4"])
    assert exc.value.lines == [
        "parallel.min_nodes: the run cannot train on 1 node(s) (world 2): parallel.fc_group: K=4 must be at least 2 "
        "and divide the world size 2"]
    with pytest.raises(ConfigError) as exc:
        resolve("demo-fashion", None, ["parallel.nodes=2", "parallel.min_nodes=3"])
    assert exc.value.lines == ["parallel.min_nodes: 3 is more than parallel.nodes 2 (--nodes MIN-MAX)"]
    # tower pairs (mp=2) on nodes of 2 workers: any count of whole nodes holds whole pairs
    resolve("imagenet-alexnet", None, ["parallel.nodes=3", "parallel.min_nodes=1", "parallel.workers_per_node=2",
                                    "data.batch_size=96"])


def test_the_elastic_policy_counts_whole_nodes_only():
    import ray.train

    config = ray.train.ScalingConfig(num_workers=(2, 6), resources_per_worker={"CPU": 1})
    policy = whole_nodes_policy(workers_per_node=2, settle_s=0)(config)
    # room for 3, 2 and 1 workers: a node gives its workers two at a time, so 2 + 2 + 0
    assert policy._count_possible_workers({"a": {"CPU": 3}, "b": {"CPU": 2}, "c": {"CPU": 1}}) == 4
    assert policy._count_possible_workers({n: {"CPU": 4} for n in "abc"}) == 6  # never more than the most
    one_each = whole_nodes_policy(workers_per_node=1, settle_s=0)(config)
    assert one_each._count_possible_workers({"a": {"CPU": 3}, "b": {"CPU": 2}, "c": {"CPU": 1}}) == 6


def elastic_run(**more):
    sets = {"parallel.nodes": 2, "parallel.min_nodes": 1, "parallel.workers_per_node": 1, "data.batch_size": 8, **more}
    return resolve("demo-fashion", None, [f"{k}={v}" for k, v in sets.items()])


def checkpoint(folder, cfg, meta):
    """The two files of a checkpoint that a worker reads before it builds its Trainer."""
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(cfg))
    (folder / "meta.json").write_text(json.dumps(meta))
    return str(folder)


def test_a_worker_started_at_fewer_nodes_keeps_the_global_batch_of_the_run(tmp_path):
    cfg = elastic_run()  # 2 nodes x 1 worker: dp 2 x 4 a step
    assert resume.at_world(cfg, 1, None) is None  # a first start at one node: nothing happened to say
    assert (cfg.parallel.nodes, cfg.data.batch_size, elastic.global_batch(cfg)) == (1, 4, 8)
    assert elastic.summary(cfg) == "global batch 8 = 1 x 4 x 2 accumulation steps"

    at_two = elastic_run()
    end_of_epoch = checkpoint(tmp_path / "checkpoint_a", at_two, {"epoch": 2, "step": 150, "metrics": {}})
    cfg = elastic_run()
    assert resume.at_world(cfg, 1, end_of_epoch) == (
        "node lost: continuing at world 1 (dp 1); global batch 8 = 1 x 4 x 2 accumulation steps")
    back = elastic_run()
    assert resume.at_world(back, 2, checkpoint(tmp_path / "checkpoint_b", cfg, {"epoch": 3, "step": 200,
                                                                             "metrics": {}})) == (
        "nodes returned: continuing at world 2 (dp 2); global batch 8 = 2 x 4")
    assert resume.at_world(elastic_run(), 2, end_of_epoch) is None  # the world it trained at


def test_a_world_the_global_batch_does_not_split_over_stops_the_worker_in_one_line():
    cfg = elastic_run(**{"parallel.nodes": 3, "parallel.min_nodes": 3, "data.batch_size": 9})  # dp 3 x 3
    cfg.parallel.min_nodes = 1  # past the driver's check (test_each_node_count_...): the worker's own
    with pytest.raises(ValueError, match=r"^parallel.nodes 2: the global batch 9 does not split over dp 2"):
        resume.at_world(cfg, 2, None)
