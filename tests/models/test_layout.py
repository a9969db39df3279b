"""models/layout.py: the sizes, the ranks and every rule of a layout, one message per rule."""

import subprocess
import sys

import pytest

from cnnctl.models.layout import NAMED, NAMED_HELP, Layout, Net, named

ALEXNET_1 = Net("alexnet-owt", alexnet=True, towers=1, fc_width=4096)
ALEXNET_2 = Net("alexnet-small", alexnet=True, towers=2, fc_width=512)
VGG = Net("vgg-a", alexnet=False, towers=1)


def test_sizes():
    hybrid = Layout(nodes=2, workers_per_node=4, mp=2)
    assert (hybrid.world, hybrid.dp, hybrid.fc, hybrid.replicas) == (8, 4, 1, 4)
    owt = Layout(nodes=2, workers_per_node=4, fc_split=4)
    assert (owt.world, owt.dp, owt.fc, owt.replicas) == (8, 8, 4, 2)
    assert Layout.of_world(6, mp=2) == Layout(1, 6, 2, None) and Layout.of_world(4, fc=2).fc_split == 2


def test_ranks_are_mp_inner_and_fc_inner():
    hybrid = Layout(1, 4, mp=2)
    assert hybrid.dp_ranks(0) == [0, 2] and hybrid.dp_ranks(1) == [1, 3]
    assert hybrid.mp_ranks(1) == [2, 3]
    assert [(hybrid.dp_rank(r), hybrid.mp_rank(r), hybrid.replica(r)) for r in range(4)] == \
        [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    owt = Layout(2, 2, fc_split=2)
    assert owt.fc_group_ranks(1) == [2, 3] and owt.fc_dp_ranks(1) == [1, 3]
    assert [(owt.fc_rank(r), owt.replica(r), owt.dp_rank(r)) for r in range(4)] == \
        [(0, 0, 0), (1, 0, 1), (0, 1, 2), (1, 1, 3)]
    assert Layout(1, 3).dp_ranks(0) == [0, 1, 2]  # mp=1: every rank reads its own data


def test_a_valid_layout_has_no_problem():
    assert Layout(2, 4, mp=2).problems(batch_size=128, net=ALEXNET_2) == []
    assert Layout(2, 4, fc_split=4).problems(batch_size=128, net=ALEXNET_1) == []
    assert Layout(1, 2).check() == Layout(1, 2)


@pytest.mark.parametrize("layout, batch_size, net, line", [
    (Layout(1, 2, mp=3), None, None,
     "parallel.mp: 3 is neither 1 nor 2 (the towers of an AlexNet split over a rank pair)"),
    (Layout(2, 1, mp=2), None, None,
     "parallel.workers_per_node: must be even when mp=2, so each tower pair stays on one node"),
    (Layout(1, 4, mp=2), 127, None, "data.batch_size: 127 is not divisible by dp=2"),
    (Layout(1, 2, mp=2), None, VGG,
     "parallel.mp: 2 splits a model's two towers over a rank pair; vgg-a is built with 1 "
     "(set model.towers=2 for an AlexNet, or parallel.mp=1)"),
    (Layout(1, 2, mp=2, fc_split=2), None, None,
     "parallel.fc: model slices a one-tower AlexNet's FC layers; mp=2 splits two towers "
     "(use one: --parallel owt sets mp=1)"),
    (Layout(1, 2, fc_split=2), None, VGG,
     "parallel.fc: model slices the FC layers of a one-tower AlexNet; vgg-a is not an AlexNet"),
    (Layout(1, 2, fc_split=2), None, ALEXNET_2,
     "parallel.fc: model slices the FC layers of a one-tower AlexNet; alexnet-small is built with 2 towers "
     "(set model.towers=1, or use alexnet-owt)"),
    (Layout(1, 2, fc_split=1), None, None, "parallel.fc_group: K=1 must be at least 2 and divide the world size 2"),
    (Layout(1, 2, fc_split=3), None, None, "parallel.fc_group: K=3 must be at least 2 and divide the world size 2"),
    (Layout(1, 3, fc_split=3), None, ALEXNET_1,
     "parallel.fc_group: K=3 must be at least 2 and divide the world size 3 and alexnet-owt's FC width 4096"),
])
def test_each_rule_has_one_line(layout, batch_size, net, line):
    assert layout.problems(batch_size, net) == [line]
    with pytest.raises(ValueError) as err:
        layout.check(batch_size, net)
    assert str(err.value) == line


def test_every_broken_rule_is_a_line():
    # an odd world has an odd node: both lines, as the config has always said
    assert Layout(3, 1, mp=2).problems() == [
        "parallel.mp: 2 does not divide the world size 3 (nodes x workers_per_node)",
        "parallel.workers_per_node: must be even when mp=2, so each tower pair stays on one node"]
    assert len(Layout(3, 1, mp=2).problems(batch_size=3, net=VGG)) == 3  # world, node, towers (dp=1 divides)
    assert len(Layout(1, 3, mp=2).problems(batch_size=7)) == 2


def test_the_named_layouts():
    assert {n: (v.mp, v.fc) for n, v in NAMED.items()} == \
        {"dp": (1, "data"), "mp": (2, "data"), "hybrid": (2, "data"), "owt": (1, "model")}
    assert NAMED_HELP.startswith("dp: data parallel (mp=1); mp: ") and NAMED_HELP.endswith("(mp=1, fc=model).")
    with pytest.raises(ValueError, match=r"^--parallel 'tp': dp, mp, hybrid or owt$"):
        named("tp")
    line = "--parallel {}: world {} gives dp={}; mp means dp=1 (world 2), hybrid dp>=2 (world >= 4)"
    assert named("mp").problem(Layout(1, 4, mp=2)) == line.format("mp", 4, 2)
    assert named("hybrid").problem(Layout(1, 2, mp=2)) == line.format("hybrid", 2, 1)
    assert named("mp").problem(Layout(1, 2, mp=2)) is None and named("hybrid").problem(Layout(2, 2, mp=2)) is None


def test_describe():
    assert Layout(2, 8, fc_split=8).describe() == \
        "2 node(s) x 8 worker(s) = world 16 (dp=16 x mp=1, FC split over 2 group(s) of K=8)"
    assert Layout(2, 2, mp=2).describe() == "2 node(s) x 2 worker(s) = world 4 (dp=2 x mp=2)"


def test_the_mesh_asks_the_layout():
    from cnnctl.models.parallel import Mesh

    mesh = Mesh(world=4, rank=3, mp=2)
    assert mesh.layout == Layout(1, 4, 2) and (mesh.dp, mesh.dp_rank, mesh.mp_rank, mesh.replica) == (2, 1, 1, 1)
    with pytest.raises(ValueError, match=r"^parallel.mp: 2 does not divide the world size 3"):
        Mesh(world=3, rank=0, mp=2)


def test_the_layout_imports_without_torch():
    code = "import sys; import models.layout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
