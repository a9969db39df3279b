"""`cnnctl eval --workers N` on the real 2-node Ray cluster: the workers' summed parts equal one
process's evaluation (top-1/top-5 exactly, the loss to float64 rounding) for every TTA and a fused
pair, and on uneven shards at 1, 2 and 3 workers; a cluster that cannot hold the workers is one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import RunConfig

pytestmark = pytest.mark.timeout(300)

runner = CliRunner()


def _checkpoint(root: str, folder, seed: int):
    """alexnet-small (28 px, width 0.25) with random weights, saved the way training saves it."""
    torch.manual_seed(seed)
    cfg = RunConfig()
    cfg.data.root, cfg.model.num_classes, cfg.model.width = root, 10, 0.25
    model = models.build("alexnet-small", num_classes=10, width=0.25)
    state = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "epoch": 0, "step": 0}
    ckpt.save(folder, model.state_dict(), cfg, state, {"epoch": 0})
    return str(folder)


@pytest.fixture(scope="module")
def pair(fmnist_root, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("ckpts")
    return [_checkpoint(fmnist_root, base / f"m{seed}" / "checkpoint_000000", seed) for seed in (0, 1)]


def _eval(tmp_path, *args) -> dict:
    out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}.json"
    res = runner.invoke(app, ["eval", *args, "--out", str(out), "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    written = json.loads(out.read_text())
    assert json.loads(res.output) == {**written, "written_to": str(out)}  # --json: the JSON alone, no progress
    return written


def _same(dist: dict, one: dict) -> None:
    assert (dist["count"], dist["top1"], dist["top5"]) == (one["count"], one["top1"], one["top5"])
    assert dist["loss"] == pytest.approx(one["loss"], rel=1e-9)


@pytest.mark.parametrize("views, fused", [
    (["--tta", "center"], False),
    (["--tta", "ten-crop"], False),
    (["--tta", "dense", "--scales", "28,36", "--flip"], False),
    (["--tta", "center", "--flip"], True),
], ids=["center", "ten-crop", "dense-multiscale-flip", "fused-pair"])
def test_two_workers_on_two_nodes_equal_one_process(ray_cluster, pair, tmp_path, views, fused):
    ckpts = pair if fused else pair[:1]
    one = _eval(tmp_path, *ckpts, *views)
    dist = _eval(tmp_path, *ckpts, *views, "--workers", "2", "--nodes", "2", "--address", ray_cluster.address)
    assert one["count"] == 200 and one["workers"] == 1 and "merge_s" not in one
    assert (dist["workers"], dist["nodes"], dist["worker_counts"]) == (2, 2, [100, 100]) and dist["merge_s"] >= 0
    _same(dist, one)


def test_uneven_shards_at_one_two_and_three_workers(ray_cluster, pair, uneven_fmnist_root, tmp_path):
    """The train split of the uneven root: 600 images in shards of 170, 170, 170 and 90, so the
    workers' parts differ in size (3 workers: 260, 170, 170)."""
    args = [pair[0], "--data", uneven_fmnist_root, "--split", "train", "--tta", "ten-crop"]
    one = _eval(tmp_path, *args)
    assert one["count"] == 600
    for n, parts in ((1, [600]), (2, [340, 260]), (3, [260, 170, 170])):  # every n-th shard
        dist = _eval(tmp_path, *args, "--workers", str(n), "--address", ray_cluster.address)
        assert dist["worker_counts"] == parts
        _same(dist, one)


def test_the_table_names_the_workers(ray_cluster, pair, tmp_path):
    out = tmp_path / "e.json"
    res = runner.invoke(app, ["eval", pair[0], "--nodes", "2", "--workers-per-node", "1", "--threads", "1",
                              "--address", ray_cluster.address, "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].endswith("on 2 Ray worker(s), 2 node(s)") and lines[-1] == f"wrote {out}"
    assert lines[3].split()[:2] == ["test", "200"]


@pytest.mark.parametrize("args, message", [
    (["--nodes", "3"],
     "error: the cluster has 2 live node(s), 2 with 1 CPU free for 1 worker(s) each; --nodes 3 needs 3"),
    (["--workers", "5"],
     "error: the cluster has 2 live node(s), holding 4 worker(s) of 1 CPU between them; --workers 5 needs 5"),
    (["--workers", "2", "--threads", "3"],
     "error: the cluster has 2 live node(s), holding 0 worker(s) of 3 CPU between them; --workers 2 needs 2"),
], ids=["nodes", "workers", "cpus"])
def test_a_cluster_that_cannot_hold_the_workers_is_one_line(ray_cluster, pair, args, message):
    args = ["--threads", "1", *args] if "--threads" not in args else args
    res = runner.invoke(app, ["eval", pair[0], *args, "--address", ray_cluster.address])
    assert res.exit_code == 1 and res.output.splitlines() == [message], res.output
