"""Synchronous data parallelism gives the one-device result (VGG §3.3), alone and with the tower split.

Wrapped the way orchestrator/train.py wraps the model: tower split -> DDP over the mesh's dp group,
the optimizer on the split model's parameters, each batch chosen by dp_rank. The single-process
reference runs in the test process; the ranks hand back their canonical weights through files.
Dropout is 0 because a rank's mask cannot match the one-device mask over a different batch size.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import models
from models.parallel import Mesh, apply_tower_split, canonical_optimizer_state, canonical_state_dict, load_canonical_optimizer
from orchestrator.cluster import run_local

BATCH, STEPS = 8, 3


def build() -> torch.nn.Module:
    torch.manual_seed(0)  # identical init on every rank, as the Trainer does
    return models.build("alexnet-small", num_classes=10, width=0.5, dropout=0.0)


def batches(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, size, size, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(STEPS)]


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)  # the papers' SGD


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, dp_rank: int = 0, dp: int = 1) -> None:
    share = BATCH // dp
    for x, y in data:
        # Data is split by dp rank: both ranks of a tower pair take the same rows.
        rows = slice(dp_rank * share, (dp_rank + 1) * share)
        optimizer.zero_grad()
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        optimizer.step()


def _rank(rank: int, world: int, mp: int, out: str) -> None:
    mesh = Mesh.init(mp)
    model = apply_tower_split(build(), mesh)
    optimizer = sgd(model)  # after the split: it must hold this rank's halves
    ddp = DistributedDataParallel(model, process_group=mesh.dp_group)
    train(ddp.train(), optimizer, batches(model.input_size), mesh.dp_rank, mesh.dp)
    state = canonical_state_dict(ddp)  # a collective over the pair: every rank calls it
    moments = canonical_optimizer_state(ddp, optimizer)
    # A resume at this mp restores exactly this rank's own optimizer state.
    fresh = sgd(model)
    load_canonical_optimizer(ddp, fresh, moments)
    for i, s in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][i]["momentum_buffer"], s["momentum_buffer"])
    torch.save({"model": state, "momentum": momentum(state, moments)}, f"{out}-{rank}.pt")


def momentum(state: dict, optimizer_state: dict) -> dict[str, torch.Tensor]:
    """The SGD momentum buffers by parameter name (the optimizer numbers them in model order)."""
    return {k: s["momentum_buffer"] for k, s in zip(state, optimizer_state["state"].values(), strict=True)}


def reference() -> dict[str, dict[str, torch.Tensor]]:
    model = build().train()
    optimizer = sgd(model)
    train(model, optimizer, batches(model.input_size))
    state = model.state_dict()
    return {"model": state, "momentum": momentum(state, optimizer.state_dict())}


def check(out: str, world: int, want: dict[str, dict[str, torch.Tensor]]) -> None:
    start = build().state_dict()
    for rank in range(world):  # every rank: the replicated fc8 and every dp replica must agree too
        got = torch.load(f"{out}-{rank}.pt", weights_only=True)
        for part in ("model", "momentum"):
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
