"""parallel.compile (models/parallel.py `apply_compile`): torch.compile with inductor on the CPU gives
the eager model's loss and gradients, with dropout on, at mp=1, at mp=2 (a tower pair compiled between
its crossings) and in the OWT split (its conv part compiled), and the state-dict keys stay canonical.

Tolerance: inductor fuses and reorders float32 reductions (and LRN's window sums), so values agree to
rounding, not bitwise: losses to 1e-5 relative, each gradient to 1e-4 of its largest entry. Dropout is
exact: random ops fall back to eager (inductor's fallback_random), so the masks are the same.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cnnctl.models.alexnet import alexnet_small
from cnnctl.models.parallel import (Mesh, apply_compile, apply_fc_split, apply_tower_split, canonical_names,
                                    canonical_state_dict)
from cnnctl.orchestrator.local_ranks import run_local

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]  # inductor compiles, gloo process groups


def small(towers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return alexnet_small(num_classes=10, width=0.5, towers=towers, dropout=0.5).train()


def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward and backward with dropout drawn from seed 7: the loss and the canonical gradients."""
    torch.manual_seed(7)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    names = canonical_names(model)
    grads = {names[id(p)]: p.grad for p in model.parameters()}
    split = getattr(model, "gather_canonical", None)
    return float(loss.detach()), split(grads) if split else grads


def assert_close(got: tuple, want: tuple) -> None:
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    assert list(got[1]) == list(want[1])
    for key, g in want[1].items():
        torch.testing.assert_close(got[1][key], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=key)


def test_compiled_alexnet_equals_eager_and_keeps_canonical_keys():
    eager = small(towers=2)
    compiled = apply_compile(copy.deepcopy(eager))
    x, y = batch(8)
    assert_close(step(compiled, x, y), step(eager, x, y))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` anywhere
    assert compiled._compiled_call_impl is not None


def _split(rank: int, world: int, layout: str, out: str) -> None:
    mesh = Mesh.init(mp=2) if layout == "mp2" else Mesh.init(1, world)
    canonical = small(towers=2 if layout == "mp2" else 1)
    model = apply_compile(apply_fc_split(apply_tower_split(canonical, mesh), mesh))
    x, y = batch(8)
    rows = slice(None) if layout == "mp2" else slice(rank * 4, rank * 4 + 4)  # OWT: each rank its own rows
    loss, grads = step(model, x[rows], y[rows])
    assert list(canonical_state_dict(model)) == list(canonical.state_dict())
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)


@pytest.mark.parametrize("layout", ["mp2", "owt"])
def test_compiled_splits_equal_eager_one_device(tmp_path, layout):
    """mp=2: the pair's canonical gradients are the one-device model's. OWT (K=2, 4 rows each): rank
    0's loss is its rows' loss, and the FC slices' gathered gradients those of the mean over its
    group's 8 rows (the split's docstring), so the one-device reference is taken per case."""
    out = str(tmp_path / "split.pt")
    run_local(_split, 2, layout, out, timeout_s=380)
    got = torch.load(out, weights_only=True)
    reference = small(towers=2 if layout == "mp2" else 1)
    x, y = batch(8)
    if layout == "mp2":
        assert_close((got["loss"], got["grads"]), step(reference, x, y))
        return
    # OWT rank 0 against eager OWT rank 0, run the same way without compiling.
    eager = str(tmp_path / "eager.pt")
    run_local(_eager_owt, 2, eager, timeout_s=60)
    want = torch.load(eager, weights_only=True)
    assert_close((got["loss"], got["grads"]), (want["loss"], want["grads"]))


def _eager_owt(rank: int, world: int, out: str) -> None:
    model = apply_fc_split(small(towers=1), Mesh.init(1, world))
    x, y = batch(8)
    loss, grads = step(model, x[rank * 4:rank * 4 + 4], y[rank * 4:rank * 4 + 4])
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)
