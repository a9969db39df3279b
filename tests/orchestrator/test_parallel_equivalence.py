"""Synchronous data parallelism gives the one-device result (VGG §3.3), alone, with the tower split
and with the one-weird-trick FC split (Krizhevsky 2014).

Wrapped the way orchestrator/train.py wraps the model: tower split / FC split -> DDP
(`apply_data_parallel`), the optimizer on the split model's parameters, each batch chosen by dp_rank.
The single-process reference runs in the test process; the ranks hand back their canonical weights
through files. Dropout is 0 because a rank's mask cannot match the one-device mask over a different
batch size.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnctl import models
from cnnctl.models.parallel import (Mesh, apply_data_parallel, apply_fc_split, apply_tower_split, canonical_names,
                                    canonical_optimizer_state, canonical_state_dict, load_canonical_optimizer, unwrap)
from cnnctl.orchestrator.local_ranks import run_local

pytestmark = pytest.mark.slow  # gloo process groups of 2-4 ranks

BATCH, STEPS = 8, 3


def build(towers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)  # identical init on every rank, as the Trainer does
    return models.build("alexnet-small", num_classes=10, width=0.5, dropout=0.0, towers=towers)


def batches(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, size, size, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(STEPS)]


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)  # the papers' SGD


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, dp_rank: int = 0, dp: int = 1) -> dict:
    """SGD steps; the first step's logits and (canonical) gradients."""
    share, first = BATCH // dp, {}
    for x, y in data:
        # Data is split by dp rank: both ranks of a tower pair take the same rows, the ranks of an
        # OWT group different ones.
        rows = slice(dp_rank * share, (dp_rank + 1) * share)
        optimizer.zero_grad()
        logits = model(x[rows])
        F.cross_entropy(logits, y[rows]).backward()
        if not first:
            split, by_id = unwrap(model), {id(p): p for p in unwrap(model).parameters()}
            grads = {name: by_id[i].grad for i, name in canonical_names(model).items()}  # canonical order
            first = {"logits": logits.detach(),
                     "grads": split.gather_canonical(grads) if hasattr(split, "gather_canonical") else grads}
        optimizer.step()
    return first


def _rank(rank: int, world: int, mp: int, out: str, fc: int = 1) -> None:
    mesh = Mesh.init(mp, fc)
    model = apply_fc_split(apply_tower_split(build(towers=1 if fc > 1 else 2), mesh), mesh)
    optimizer = sgd(model)  # after the split: it must hold this rank's halves (slices)
    ddp = apply_data_parallel(model, mesh)
    first = train(ddp.train(), optimizer, batches(model.input_size), mesh.dp_rank, mesh.dp)
    state = canonical_state_dict(ddp)  # a collective over the pair (group): every rank calls it
    moments = canonical_optimizer_state(ddp, optimizer)
    # A resume at this mp restores exactly this rank's own optimizer state.
    fresh = sgd(model)
    load_canonical_optimizer(ddp, fresh, moments)
    for i, s in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][i]["momentum_buffer"], s["momentum_buffer"])
    torch.save({"model": state, "momentum": momentum(state, moments, ddp), **first}, f"{out}-{rank}.pt")


def momentum(state: dict, optimizer_state: dict, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The SGD momentum buffers by canonical parameter name, in canonical order (the optimizer numbers
    them in the order of `model`'s parameters, which the FC split does not keep)."""
    if model is None:
        return {k: s["momentum_buffer"] for k, s in zip(state, optimizer_state["state"].values(), strict=True)}
    names = canonical_names(model)
    by_name = {names[id(p)]: s["momentum_buffer"]
               for p, s in zip(unwrap(model).parameters(), optimizer_state["state"].values(), strict=True)}
    return {k: by_name[k] for k in state}


def reference(towers: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    model = build(towers).train()
    optimizer = sgd(model)
    first = train(model, optimizer, batches(model.input_size))
    state = model.state_dict()
    return {"model": state, "momentum": momentum(state, optimizer.state_dict()), **first}


def check(out: str, world: int, want: dict[str, dict[str, torch.Tensor]], towers: int = 2,
          parts=("model", "momentum")) -> None:
    start = build(towers).state_dict()
    for rank in range(world):  # every rank: the replicated fc8 and every dp replica must agree too
        got = torch.load(f"{out}-{rank}.pt", weights_only=True)
        for part in parts:
            assert list(got[part]) == list(want[part])
            for key, w in want[part].items():
                # Canonical shape, and moved (weights) or non-zero (momentum): else the check proves nothing.
                assert w.shape == start[key].shape, key
                assert not torch.equal(w, start[key] if part == "model" else torch.zeros_like(w)), key
                atol = 1e-5 * float(w.abs().max())
                torch.testing.assert_close(got[part][key], w, rtol=1e-5, atol=atol, msg=f"rank {rank} {part} {key}")


@pytest.mark.timeout(90)
def test_dp2_half_batches_equal_one_rank_full_batch(tmp_path):
    run_local(_rank, 2, 1, str(tmp_path / "w"), timeout_s=75)
    check(str(tmp_path / "w"), 2, reference())


@pytest.mark.timeout(120)
def test_dp2_x_mp2_equals_one_rank_full_batch(tmp_path):
    run_local(_rank, 4, 2, str(tmp_path / "w"), timeout_s=100)
    check(str(tmp_path / "w"), 4, reference())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("k", [2, 4])
def test_owt_group_of_k_equals_one_rank_with_k_times_the_batch(tmp_path, k):
    """K ranks with BATCH/K images each: each rank's logits are the one-device logits of its rows,
    the first step's gradients gathered to canonical shape and the weights and momentum after
    STEPS SGD steps are the one-device ones over the whole batch."""
    run_local(_rank, k, 1, str(tmp_path / "w"), k, timeout_s=100)
    want = reference(towers=1)
    check(str(tmp_path / "w"), k, want, towers=1)
    share = BATCH // k
    for rank in range(k):
        got = torch.load(f"{tmp_path / 'w'}-{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["logits"], want["logits"][rank * share:(rank + 1) * share], rtol=1e-5, atol=1e-6)
    check(str(tmp_path / "w"), k, {"grads": want["grads"]}, towers=1, parts=("grads",))


@pytest.mark.timeout(120)
def test_owt_x_dp_two_groups_of_two_equal_one_rank(tmp_path):
    """OWT groups {0, 1} and {2, 3}, data parallel to each other: still the one-device step."""
    run_local(_rank, 4, 1, str(tmp_path / "w"), 2, timeout_s=100)
    want = reference(towers=1)
    check(str(tmp_path / "w"), 4, want, towers=1)
    check(str(tmp_path / "w"), 4, {"grads": want["grads"]}, towers=1, parts=("grads",))
