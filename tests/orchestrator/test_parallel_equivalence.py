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
from models.parallel import Mesh, apply_tower_split, canonical_state_dict, run_local

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
    torch.save({k: v.clone() for k, v in state.items()}, f"{out}-{rank}.pt")


def reference() -> dict[str, torch.Tensor]:
    model = build().train()
    train(model, sgd(model), batches(model.input_size))
    return model.state_dict()


def check(out: str, world: int, want: dict[str, torch.Tensor]) -> None:
    start = build().state_dict()
    for rank in range(world):  # every rank: the replicated fc8 and every dp replica must agree too
        got = torch.load(f"{out}-{rank}.pt", weights_only=True)
        assert list(got) == list(want)
        for key, w in want.items():
            assert not torch.equal(w, start[key]), f"{key} never moved: the check would prove nothing"
            torch.testing.assert_close(got[key], w, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {key}")


@pytest.mark.timeout(90)
def test_dp2_half_batches_equal_one_rank_full_batch(tmp_path):
    run_local(_rank, 2, 1, str(tmp_path / "w"), timeout_s=75)
    check(str(tmp_path / "w"), 2, reference())


@pytest.mark.timeout(120)
def test_dp2_x_mp2_equals_one_rank_full_batch(tmp_path):
    run_local(_rank, 4, 2, str(tmp_path / "w"), timeout_s=100)
    check(str(tmp_path / "w"), 4, reference())
