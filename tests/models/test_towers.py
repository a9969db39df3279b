"""Tower-parallel AlexNet (DESIGN.md §4) against the one-device grouped AlexNet, over gloo on loopback.

Each multi-process test runs its ranks with `run_local`, which kills them and fails after a join
timeout; `pytest.mark.timeout` backs it up. The ranks assert themselves (a failing rank fails the
call with its traceback) or hand tensors back through a file.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from cnnctl import models
from cnnctl.models.parallel import Mesh, apply_tower_split, canonical_state_dict
from cnnctl.orchestrator.local_ranks import run_local
from cnnctl.models.towers import TowerParallelAlexNet



def build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(name, num_classes=10, **overrides)


def small(seed: int = 0) -> torch.nn.Module:
    return build("alexnet-small", seed, width=0.5)


def batch(model, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = model.input_size
    return torch.randn(n, 3, s, s, generator=g), torch.randint(0, 10, (n,), generator=g)


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters()}


def close(actual: dict, expected: dict, rtol: float = 1e-5) -> None:
    assert list(actual) == list(expected)
    for key, want in expected.items():
        # atol scales with the tensor so that tiny entries of a large gradient are judged relatively.
        torch.testing.assert_close(actual[key], want, rtol=rtol, atol=rtol * float(want.abs().max()), msg=key)


# --- ranks -------------------------------------------------------------------------------------------

def _equivalence(rank: int, world: int, configs: list[tuple[str, dict, int]]) -> None:
    mesh = Mesh.init(mp=2)
    for name, overrides, n in configs:
        ref = build(name, **overrides).eval()  # eval: dropout off, the same on both sides
        split = apply_tower_split(ref, mesh).eval()
        assert isinstance(split, TowerParallelAlexNet) and split.tower == mesh.mp_rank
        n_fc8 = sum(p.numel() for p in ref.fcs[-1].parameters())
        n_split = sum(p.numel() for p in ref.parameters()) - n_fc8
        assert sum(p.numel() for p in split.parameters()) == n_split // 2 + n_fc8
        x, y = batch(ref, n)
        logits_ref = ref(x)
        F.cross_entropy(logits_ref, y).backward()
        logits = split(x)
        F.cross_entropy(logits, y).backward()
        scale = float(logits_ref.abs().max())
        torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-5 * scale, msg=f"{name} {overrides}")
        # A doubled (or halved) gradient at any crossing fails here, layer by layer.
        close(split.gather_canonical(grads(split)), grads(ref))


def _dropout(rank: int, world: int) -> None:
    mesh = Mesh.init(mp=2)
    ref = build("alexnet-small", width=0.5, dropout=0.5).train()
    split = apply_tower_split(ref, mesh).train()
    x, _ = batch(ref, 4)
    torch.manual_seed(7)
    logits_ref = ref(x)
    torch.manual_seed(7)
    logits = split(x)
    with torch.no_grad():
        assert not torch.allclose(ref.eval()(x), logits_ref)  # dropout really was on
    # The towers drew the one-device mask's two halves, not one mask twice.
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)


def _round_trip(rank: int, world: int, out: str) -> None:
    mesh = Mesh.init(mp=2)
    canonical = small()
    original = copy.deepcopy(canonical.state_dict())
    split = apply_tower_split(canonical, mesh)
    back = canonical_state_dict(split)
    assert list(back) == list(original)
    for key in original:
        assert torch.equal(back[key], original[key]), key
    # Train at mp=2, then hand the canonical state to the one-device model (in the test process).
    opt = torch.optim.SGD(split.parameters(), lr=0.1, momentum=0.9)
    x, y = batch(canonical, 8)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(split.train()(x), y).backward()
        opt.step()
    trained = canonical_state_dict(split)
    assert not torch.equal(trained["features.0.weight"], original["features.0.weight"])
    # ...and back into a differently initialised model, split after loading: the Trainer's mp=2 <- checkpoint path.
    other = small(seed=5)
    other.load_state_dict(trained)
    other = apply_tower_split(other, mesh)
    with torch.no_grad():
        logits = split.eval()(x)
        torch.testing.assert_close(other.eval()(x), logits, rtol=0, atol=0)
    if rank == 0:
        torch.save({"state": trained, "x": x, "logits": logits}, out)


# --- tests -------------------------------------------------------------------------------------------

@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(60)
def test_mp2_matches_grouped_alexnet_small():
    # width 0.3 leaves 5 conv1 maps per tower: odd halves, uneven against the LRN window.
    configs = [("alexnet-small", {"width": 0.5}, 8), ("alexnet-small", {"width": 0.3}, 4)]
    run_local(_equivalence, 2, configs, timeout_s=45)


@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(90)
def test_mp2_matches_grouped_alexnet_paper_size():
    # The paper's net at 227 px: 60,965,224 parameters, every crossing at full width.
    run_local(_equivalence, 2, [("alexnet", {}, 2)], timeout_s=75)


@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(60)
def test_tower_dropout_draws_independent_halves():
    run_local(_dropout, 2, timeout_s=45)


@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(60)
def test_canonical_round_trip_and_mp2_state_on_one_device(tmp_path):
    out = str(tmp_path / "mp2.pt")
    run_local(_round_trip, 2, out, timeout_s=45)
    saved = torch.load(out, weights_only=True)
    one_device = small(seed=3).eval()
    one_device.load_state_dict(saved["state"])  # a canonical state is the one-device model's own
    with torch.no_grad():
        torch.testing.assert_close(one_device(saved["x"]), saved["logits"], rtol=1e-5, atol=1e-6)


def test_mp1_returns_the_model_itself():
    model = small()
    assert apply_tower_split(model, Mesh(world=4, rank=1, mp=1)) is model
    assert canonical_state_dict(model).keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "name,overrides,match",
    [
        ("vgg-a", {}, r"parallel.mp: 2 splits a model's two towers over a rank pair; VGG is built with 1"),
        ("alexnet", {"towers": 1}, r"AlexNet is built with 1"),
        ("alexnet-owt", {}, r"AlexNet is built with 1"),
    ],
)
def test_mp2_refuses_a_model_without_towers(name, overrides, match):
    with torch.device("meta"):  # the refusal comes before any weight is touched
        model = models.build(name, **overrides)
    with pytest.raises(ValueError, match=match):
        apply_tower_split(model, Mesh(world=2, rank=0, mp=2))


def test_mp2_needs_the_pair_group():
    with pytest.raises(ValueError, match=r"Mesh.init"):
        apply_tower_split(small(), Mesh(world=2, rank=0, mp=2))


@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(30)
def test_a_hung_rank_fails_instead_of_hanging():
    with pytest.raises(TimeoutError, match="still running"):
        run_local(_hang, 2, timeout_s=3)


def _hang(rank: int, world: int) -> None:
    if rank == 0:
        torch.distributed.barrier()  # rank 1 never joins it
    else:
        time.sleep(120)
