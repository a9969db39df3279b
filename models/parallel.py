"""The dp x mp mesh, and the one-weird-trick FC groups (DESIGN.md §4): the process groups of a `Layout`
(models/layout.py), which computes every size and rank and checks every rule about them.

Ranks are laid out mp-inner: ranks 2i and 2i+1 hold the two towers of one model replica and sit on
the same node. The dp group of a rank is every rank with the same tower index; gradients are
averaged within it.

With `fc` = K > 1 (parallel.fc=model, mp=1) ranks are laid out fc-inner instead: ranks gK..gK+K-1 are
OWT group g, one model replica whose K ranks each hold a slice of the FC layers (models/owt.py). Every
rank reads its own data (dp = world), the conv part is averaged over the world, and each FC slice over
the ranks holding the same slice in the other groups (`fc_dp_group`).

Wrapping a model is ordered: `apply_tower_split` (mp) / `apply_fc_split` (fc) -> `apply_data_parallel`
(DDP over `dp_group`; for the FC split, the conv part over the world and the slices over
`fc_dp_group`) (-> torch.compile, which the Trainer does not apply today). `canonical_state_dict` and
the optimizer-state pair see through all of them, so checkpoints hold the canonical layout whatever
the mesh (DESIGN.md §5). (A gloo group on loopback without Ray, for tests and bench/, is
`orchestrator.local_ranks.run_local`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .alexnet import AlexNet
from .layout import Layout, Net
from .owt import OneWeirdTrickAlexNet
from .towers import TowerParallelAlexNet

SPLIT = (TowerParallelAlexNet, OneWeirdTrickAlexNet)


@dataclass
class Mesh:
    """The layout at one rank, with the process groups it is in: `layout` (models/layout.py) computes
    every size and rank; the mesh only holds the groups."""

    world: int
    rank: int
    mp: int = 1
    fc: int = 1  # K: the ranks of an OWT group (1: the FC layers are not split)
    dp_group: object = field(default=None, repr=False)
    mp_group: object = field(default=None, repr=False)
    fc_group: object = field(default=None, repr=False)  # this rank's OWT group
    fc_dp_group: object = field(default=None, repr=False)  # the ranks holding this rank's FC slice

    def __post_init__(self):
        self.layout.check()

    @property
    def layout(self) -> Layout:
        return Layout.of_world(self.world, self.mp, self.fc)

    @property
    def replica(self) -> int:
        """The model replica this rank belongs to (a tower pair, an OWT group, or the rank alone).
        Its ranks draw the same dropout stream and evaluate the same batches."""
        return self.layout.replica(self.rank)

    @property
    def replicas(self) -> int:
        return self.layout.replicas

    @property
    def fc_rank(self) -> int:
        return self.layout.fc_rank(self.rank)

    @property
    def replica_group(self):
        """One rank of every replica (each evaluated batch is counted once)."""
        return self.fc_dp_group if self.fc > 1 else self.dp_group

    @property
    def dp(self) -> int:
        return self.layout.dp

    @property
    def dp_rank(self) -> int:
        return self.layout.dp_rank(self.rank)

    @property
    def mp_rank(self) -> int:
        return self.layout.mp_rank(self.rank)

    def dp_ranks(self, mp_rank: int) -> list[int]:
        return self.layout.dp_ranks(mp_rank)

    def mp_ranks(self, dp_rank: int) -> list[int]:
        return self.layout.mp_ranks(dp_rank)

    @classmethod
    def init(cls, mp: int = 1, fc: int = 1) -> "Mesh":
        """Build the process groups of an initialised default group.

        Every rank must create every group, in the same order, even those it is not in.
        """
        mesh = cls(dist.get_world_size(), dist.get_rank(), mp, fc)
        layout = mesh.layout
        if mp == 1:
            mesh.dp_group = dist.group.WORLD
            if fc > 1:
                for g in range(layout.replicas):
                    group = dist.new_group(layout.fc_group_ranks(g))
                    if g == mesh.replica:
                        mesh.fc_group = group
                for k in range(fc):
                    group = dist.new_group(layout.fc_dp_ranks(k))
                    if k == mesh.fc_rank:
                        mesh.fc_dp_group = group
            return mesh
        for t in range(mp):
            group = dist.new_group(layout.dp_ranks(t))
            if t == mesh.mp_rank:
                mesh.dp_group = group
        for d in range(layout.dp):
            group = dist.new_group(layout.mp_ranks(d))
            if d == mesh.dp_rank:
                mesh.mp_group = group
        return mesh


def net_of(model: nn.Module) -> Net:
    """What the layout's rules need of a built model (as `models.catalog` tells it of a name)."""
    alexnet = isinstance(model, AlexNet)
    fc_width = model.fcs[0].out_features if alexnet else None
    return Net(type(model).__name__, alexnet, getattr(model, "towers", 1), fc_width)


def apply_tower_split(model: nn.Module, mesh: Mesh) -> nn.Module:
    """This rank's tower of `model` when mesh.mp == 2 (the model itself when mp == 1).

    Call it on the canonical model, identically initialised on both ranks of the pair, before the
    optimizer is built (the optimizer must hold the local halves) and before DDP.
    """
    if mesh.mp == 1:
        return model
    mesh.layout.check(net=net_of(model))
    if mesh.mp_group is None:
        raise ValueError("the mesh has no mp_group: build it with Mesh.init(mp) inside an initialised process group")
    return TowerParallelAlexNet.from_canonical(model, mesh)


def apply_fc_split(model: nn.Module, mesh: Mesh) -> nn.Module:
    """This rank's FC slice and conv part of `model` when mesh.fc = K > 1 (the model itself otherwise).

    Call it where `apply_tower_split` is called: on the canonical model, identically initialised on
    every rank, before the optimizer and before `apply_data_parallel`.
    """
    if mesh.fc == 1:
        return model
    mesh.layout.check(net=net_of(model))
    if mesh.fc_group is None:
        raise ValueError("the mesh has no fc_group: build it with Mesh.init(fc=K) inside an initialised process group")
    return OneWeirdTrickAlexNet.from_canonical(model, mesh)


def apply_compile(model: nn.Module) -> nn.Module:
    """torch.compile the model's computation, in place, after the split and the move to the device and
    before DDP: a plain model whole (`nn.Module.compile`, which keeps the state-dict keys canonical,
    no `_orig_mod.`), a tower-split model between its crossings, an FC-split model's conv part. The
    parallel wrappers' exchanges stay eager. Random ops run as in eager mode (inductor's
    `fallback_random`), so dropout draws the masks it draws uncompiled, and exact resume holds."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    model.compile()
    return model


def _gloo_bf16_hook(group, bucket):  # no annotations: DDP checks them, and this module's are strings
    """torch's bf16_compress_hook, under another name: DDP accepts that name only with CUDA and NCCL,
    though gloo all-reduces bf16 as well (CPU runs, tests and bench/comm.py)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.bf16_compress_hook(group, bucket)


def _ddp(module: nn.Module, group, compression: str, bucket_mb: float) -> nn.Module:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(module, process_group=group, bucket_cap_mb=bucket_mb)
    # torch's own hooks, registered for both settings: the reducer's all-reduce then runs through
    # torch.distributed.all_reduce, where bench/comm.py counts it. bf16 halves the bytes on the wire
    # (the gradient is divided by the group size, cast to bf16, all-reduced, cast back).
    bf16 = default_hooks.bf16_compress_hook if dist.get_backend(group) == "nccl" else _gloo_bf16_hook
    ddp.register_comm_hook(group, {"none": default_hooks.allreduce_hook, "bf16": bf16}[compression])
    return ddp


def apply_data_parallel(model: nn.Module, mesh: Mesh, compression: str = "none", bucket_mb: float = 25.0) -> nn.Module:
    """DDP, last of the wrapping steps (after the optimizer is built on the local parameters).

    Plain and tower-split models: one DDP over `dp_group` (the model itself when dp == 1). The FC
    split: DDP over the conv part across the world, and over the classifier's slices across the
    groups (`fc_dp_group`, when there are several); a slice's gradient is never averaged with
    another slice's, only with its copies in the other groups.
    """
    if compression not in ("none", "bf16"):
        raise ValueError(f"grad_compression must be none or bf16, got {compression!r}")
    if isinstance(model, OneWeirdTrickAlexNet):
        model.dp_part = _ddp(model.dp_part, mesh.dp_group, compression, bucket_mb)
        if mesh.replicas > 1:
            model.classifier = _ddp(model.classifier, mesh.fc_dp_group, compression, bucket_mb)
        return model
    return _ddp(model, mesh.dp_group, compression, bucket_mb) if mesh.dp > 1 else model


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
    if isinstance(model, SPLIT):
        return model.canonical_state_dict()
    return model.state_dict()


def canonical_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its canonical state-dict key, for any model `canonical_state_dict` takes."""
    model = unwrap(model)
    if isinstance(model, OneWeirdTrickAlexNet):
        return model.canonical_names()
    return {id(p): n for n, p in model.named_parameters()}  # the tower split keeps the canonical keys


def _split_model(model: nn.Module, optimizer: torch.optim.Optimizer):
    """(the split model or None, {optimizer state index: (parameter name, parameter)})."""
    names = canonical_names(model)
    model = unwrap(model)
    # optimizer.state_dict() numbers the parameters in param_groups order.
    order = [p for group in optimizer.param_groups for p in group["params"]]
    return (model if isinstance(model, SPLIT) else None), {i: (names[id(p)], p) for i, p in enumerate(order)}


def canonical_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with every per-parameter tensor (SGD momentum, Adam moments) in
    canonical shape, so a resume at another mp keeps its momentum. A collective over the pair (the
    OWT group) for a split model: every rank calls it after the same steps, so the states have the
    same keys."""
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
