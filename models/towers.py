"""Tower-parallel AlexNet (DESIGN.md §4): the paper's two GPUs as the two ranks of a tower pair.

Rank t of a pair holds tower t's half of conv1..conv5 and of fc6 and fc7; fc8 is replicated on both.
Activations cross ranks only where the paper's GPUs talked to each other: at the input of conv3, fc6,
fc7 and fc8. Everything else (ReLU, per-tower LRN, pooling, grouped convs) is local, because a
grouped conv's tower t reads only tower t's maps and the LRN window stops at the tower boundary.

The local module keeps the canonical module indices, so its state-dict keys are the canonical ones;
a split tensor holds its tower's half along dim 0 (output channels / output rows), because tower t
owns the t-th half of every conv's and of fc6's and fc7's outputs (models/alexnet.py). That makes
`canonical_state_dict` a concatenation and `load_canonical_state_dict` a slice, and checkpoints stay
in the canonical layout whatever mp was (§5).

The pair must run forward and backward together on the same batch and the same loss: the crossings
are collectives, and the fc8 crossing relies on both ranks computing the identical loss.
Only `all_gather` (list) and `reduce_scatter` (list) are used; gloo and NCCL both have them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from .alexnet import AlexNet
from .lrn import LRN


def compile_runs(seq: nn.Sequential, cuts: set[int], **kw) -> list[tuple[int, nn.Module]]:
    """(first index, compiled layers) for each run of ``seq``'s layers that starts at 0 or at a cut.
    The runs are not registered as submodules: they hold the same layers, not copies."""
    bounds = sorted({0, len(seq), *cuts})
    return [(a, torch.compile(seq[a:b], **kw)) for a, b in zip(bounds, bounds[1:])]


def _gather(x: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class GatherSum(torch.autograd.Function):
    """Concatenate the pair's halves along dim 1; backward reduce-scatters (sums) the gradient.

    At conv3, fc6 and fc7 each rank feeds the gathered input into a *different* half of the layer's
    outputs, so the loss depends on rank t's activation through both ranks' halves: its gradient is
    the sum of the two ranks' contributions.
    (torch.distributed.nn.functional.all_gather does the same, but it is deprecated and on gloo it
    emulates the reduce-scatter with one scatter per rank.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _gather(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        parts = [g.contiguous() for g in grad.chunk(dist.get_world_size(group), dim=1)]
        out = torch.empty_like(parts[dist.get_rank(group)])
        dist.reduce_scatter(out, parts, group=group)
        return out, None


class _GatherReplicated(GatherSum):
    """`GatherSum`'s forward; backward keeps this rank's slice of the gradient, with no sum.

    fc8 is replicated: both ranks compute the same logits and the same loss from the same gathered
    input, so each rank's gradient w.r.t. the gathered input is already the whole gradient. A
    reduce-scatter here would add two copies of it and double every gradient below fc8.
    """

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        return grad.chunk(dist.get_world_size(group), dim=1)[dist.get_rank(group)].contiguous(), None


class TowerDropout(nn.Module):
    """Dropout of one tower's half of a layer: draws the mask for the whole layer, keeps its half.

    Both ranks of a pair are seeded alike (they must augment the same batch identically), so a plain
    nn.Dropout would drop the *same* units in both towers, which the paper's independent GPUs never
    did. Drawing the full-width mask keeps the towers' masks independent, keeps the pair's RNG
    streams in lockstep, and on CPU reproduces the one-device model's mask exactly.
    """

    def __init__(self, p: float, towers: int, tower: int):
        super().__init__()
        self.p, self.towers, self.tower = float(p), towers, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        width = x.shape[1]
        full = torch.empty((x.shape[0], width * self.towers, *x.shape[2:]), dtype=x.dtype, device=x.device)
        keep = full.bernoulli_(1 - self.p).narrow(1, self.tower * width, width)
        return x * keep.div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, tower={self.tower} of {self.towers}"


class TowerParallelAlexNet(nn.Module):
    """Tower `tower` of a two-tower `AlexNet`, exchanging activations with its pair over `group`.

    Build it with `from_canonical(model, mesh)`. `canonical_state_dict()` is a collective over the
    pair and returns the full canonical state on *every* rank of it (the ranks must all call it
    anyway, and whichever rank writes the checkpoint then has it).
    """

    def __init__(self, canonical: AlexNet, tower: int, group):
        super().__init__()
        if not isinstance(canonical, AlexNet) or canonical.towers != 2:
            raise ValueError("the tower split needs an AlexNet built with towers=2")
        if group is None or dist.get_world_size(group) != canonical.towers:
            raise ValueError("the tower split needs the tower pair's process group (Mesh.init(mp=2))")
        self.towers, self.tower, self.group = canonical.towers, tower, group
        self.input_size, self.lrn = canonical.input_size, canonical.lrn
        self.avgpool = copy.deepcopy(canonical.avgpool)
        self.features, self.cross_features = self._local(canonical.features, canonical.convs)
        self.classifier, self.cross_classifier = self._local(canonical.classifier, canonical.fcs)
        replicated = {id(p) for p in canonical.fcs[-1].parameters()}
        self.split_keys = frozenset(
            name for name, p in canonical.named_parameters() if id(p) not in replicated
        )
        self.load_canonical_state_dict(canonical.state_dict())

    @classmethod
    def from_canonical(cls, model: AlexNet, mesh) -> "TowerParallelAlexNet":
        return cls(model, mesh.mp_rank, mesh.mp_group)

    def _local(self, seq: nn.Sequential, layers: list[nn.Module]) -> tuple[nn.Sequential, dict]:
        """This tower's copy of `seq`, and the crossings before its modules ({index: Function})."""
        out, cross = [], {}
        for i, m in enumerate(seq):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if m is layers[-1] and isinstance(m, nn.Linear):
                    out.append(copy.deepcopy(m))  # fc8, replicated
                    cross[i] = _GatherReplicated
                    continue
                # A conv with groups=1 after conv1 (conv3) and every FC read both towers.
                if isinstance(m, nn.Linear) or (m.groups == 1 and m is not layers[0]):
                    cross[i] = GatherSum
                out.append(self._half(m))
            elif isinstance(m, LRN):
                out.append(LRN.from_params(m.params, groups=m.groups // self.towers))
            elif isinstance(m, nn.Dropout):
                out.append(TowerDropout(m.p, self.towers, self.tower))
            else:
                out.append(copy.deepcopy(m))
        return nn.Sequential(*out), cross

    def _half(self, m: nn.Module) -> nn.Module:
        # Weights come from load_canonical_state_dict; skip_init spares fc6's 18M-weight init.
        kw = dict(device=m.weight.device, dtype=m.weight.dtype, bias=m.bias is not None)
        out = m.weight.shape[0] // self.towers
        if isinstance(m, nn.Linear):
            return nn.utils.skip_init(nn.Linear, m.in_features, out, **kw)
        # A grouped conv's weight already holds only its own tower's input channels.
        return nn.utils.skip_init(nn.Conv2d, m.weight.shape[1], out, m.kernel_size, m.stride, m.padding,
                                  m.dilation, **kw)

    def compile(self, **kw) -> None:
        """torch.compile each run of local layers between two crossings; the crossings (collectives
        in autograd Functions) stay eager. The compiled runs share this module's layers, so the
        parameters and their state-dict keys are unchanged."""
        self.compiled = {"features": compile_runs(self.features, set(self.cross_features), **kw),
                         "classifier": compile_runs(self.classifier, set(self.cross_classifier), **kw)}

    def _run(self, seq: nn.Sequential, cross: dict, x: torch.Tensor) -> torch.Tensor:
        runs = getattr(self, "compiled", {}).get("features" if seq is self.features else "classifier")
        for start, run in runs or enumerate(seq):
            if start in cross:
                x = cross[start].apply(x, self.group)
            x = run(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run(self.features, self.cross_features, x)  # paper: (N, 128, 6, 6) per tower
        x = torch.flatten(self.avgpool(x), 1)  # channel-major, so the halves concatenate in order
        return self._run(self.classifier, self.cross_classifier, x)

    def gather_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-parameter tensors by canonical name (weights, or e.g. SGD momentum buffers), with the
        pair's halves concatenated to canonical shape. A collective over the pair: same keys, same
        order on both ranks."""
        out = {}
        for key, t in tensors.items():
            if key not in self.split_keys:
                out[key] = t
                continue
            parts = [torch.empty_like(t) for _ in range(self.towers)]
            dist.all_gather(parts, t.detach().contiguous(), group=self.group)
            out[key] = torch.cat(parts, dim=0)
        return out

    def split_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `gather_canonical`: this tower's half of every split tensor. Local."""
        return {k: t.chunk(self.towers, dim=0)[self.tower] if k in self.split_keys else t for k, t in tensors.items()}

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        return self.gather_canonical(self.state_dict())

    def load_canonical_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
        return self.load_state_dict(self.split_canonical(state_dict), strict=strict)
