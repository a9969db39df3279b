"""The dp x mp mesh (DESIGN.md §4). Nothing else in cnnctl computes ranks.

Ranks are laid out mp-inner: ranks 2i and 2i+1 hold the two towers of one model replica and sit on
the same node. The dp group of a rank is every rank with the same tower index; gradients are
averaged within it.

Wrapping a model is ordered: `apply_tower_split` (mp) -> DistributedDataParallel over `dp_group`
(-> torch.compile, which the Trainer does not apply today). `canonical_state_dict` and the
optimizer-state pair see through all three, so checkpoints hold the
canonical layout whatever the mesh (DESIGN.md §5). (A gloo group on loopback without Ray, for
tests and bench/, is `orchestrator.cluster.run_local`.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .alexnet import AlexNet
from .towers import TowerParallelAlexNet


@dataclass
class Mesh:
    world: int
    rank: int
    mp: int = 1
    dp_group: object = field(default=None, repr=False)
    mp_group: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.mp not in (1, 2) or self.world % self.mp:
            raise ValueError(f"mp={self.mp} must be 1 or 2 and divide world={self.world}")

    @property
    def dp(self) -> int:
        return self.world // self.mp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.mp

    @property
    def mp_rank(self) -> int:
        return self.rank % self.mp

    def dp_ranks(self, mp_rank: int) -> list[int]:
        return [d * self.mp + mp_rank for d in range(self.dp)]

    def mp_ranks(self, dp_rank: int) -> list[int]:
        return [dp_rank * self.mp + t for t in range(self.mp)]

    @classmethod
    def init(cls, mp: int = 1) -> "Mesh":
        """Build the process groups of an initialised default group.

        Every rank must create every group, in the same order, even those it is not in.
        """
        mesh = cls(dist.get_world_size(), dist.get_rank(), mp)
        if mp == 1:
            mesh.dp_group = dist.group.WORLD
            return mesh
        for t in range(mp):
            group = dist.new_group(mesh.dp_ranks(t))
            if t == mesh.mp_rank:
                mesh.dp_group = group
        for d in range(mesh.dp):
            group = dist.new_group(mesh.mp_ranks(d))
            if d == mesh.dp_rank:
                mesh.mp_group = group
        return mesh


def apply_tower_split(model: nn.Module, mesh: Mesh) -> nn.Module:
    """This rank's tower of `model` when mesh.mp == 2 (the model itself when mp == 1).

    Call it on the canonical model, identically initialised on both ranks of the pair, before the
    optimizer is built (the optimizer must hold the local halves) and before DDP.
    """
    if mesh.mp == 1:
        return model
    towers = getattr(model, "towers", None)
    if not isinstance(model, AlexNet) or towers != mesh.mp:
        raise ValueError(
            f"parallel.mp={mesh.mp} splits AlexNet's {mesh.mp} towers over a rank pair, but "
            f"{type(model).__name__} (towers={towers}) has none to split; use an AlexNet with "
            f"towers={mesh.mp}, or mp=1 (data parallel only)"
        )
    if mesh.mp_group is None:
        raise ValueError("the mesh has no mp_group: build it with Mesh.init(mp) inside an initialised process group")
    return TowerParallelAlexNet.from_canonical(model, mesh)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", getattr(model, "module", None))
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def canonical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The canonical (unsplit) state of a plain, tower-split, DDP- or compile-wrapped model.

    For a tower-split model this is a collective over the pair: both ranks must call it, and both
    get the whole state.
    """
    model = unwrap(model)
    if isinstance(model, TowerParallelAlexNet):
        return model.canonical_state_dict()
    return model.state_dict()


def _split_model(model: nn.Module, optimizer: torch.optim.Optimizer):
    """(the split model or None, {optimizer state index: (parameter name, parameter)})."""
    model = unwrap(model)
    names = {id(p): n for n, p in model.named_parameters()}
    # optimizer.state_dict() numbers the parameters in param_groups order.
    order = [p for group in optimizer.param_groups for p in group["params"]]
    return (model if isinstance(model, TowerParallelAlexNet) else None), {i: (names[id(p)], p) for i, p in enumerate(order)}


def canonical_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every per-parameter tensor (SGD momentum, Adam moments) in
    canonical shape, so a resume at another mp keeps its momentum. A collective over the pair for a
    tower-split model: both ranks call it after the same steps, so their states have the same keys."""
    state = optimizer.state_dict()
    split, params = _split_model(model, optimizer)
    if split is None:
        return state
    out = {}
    for i, per_param in state["state"].items():
        name, p = params[i]
        out[i] = {k: split.gather_canonical({name: v})[name] if torch.is_tensor(v) and v.shape == p.shape else v
                  for k, v in per_param.items()}
    return {**state, "state": out}


def load_canonical_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping) -> None:
    """Load a `canonical_optimizer_state` (saved at any mp) into the optimizer of `model`. Local."""
    split, params = _split_model(model, optimizer)
    if split is not None:
        local = {}
        for i, per_param in state["state"].items():
            name = params[int(i)][0]
            local[i] = {k: split.split_canonical({name: v})[name].clone()
                        if torch.is_tensor(v) and v.dim() > 0 else v
                        for k, v in per_param.items()}
        state = {**state, "state": local}
    optimizer.load_state_dict(state)
