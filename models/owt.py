""""One weird trick" AlexNet (Krizhevsky 2014; DESIGN.md §4): data-parallel convs, model-parallel FC.

K ranks form an OWT group. Each rank runs the convolutions on its own B images, like plain data
parallelism; at fc6 the group's conv features are all-gathered, so every rank holds all K x B rows, and
rank k computes its slice of the FC layers for all of them:

    f (B, 9216) --gather rows--> F (KB, 9216) -> fc6[k] (KB, 4096/K) --gather cols--> (KB, 4096)
    -> fc7[k] (KB, 4096/K) -> fc8[:, k] (KB, C): a partial sum of the logits --sum, scatter rows-->
    this rank's own logits (B, C) + fc8's bias

fc6 and fc7 are sliced by output neuron (rows of the weight), fc8 by input (its columns: the slice of
fc7 this rank computed), so only fc6/fc7's width must divide by K, never the class count. The FC
weights are updated once per K x B batch (the paper's synchronous variant): the step is the
one-device step over the group's K x B images.

Gradient scale. The Trainer's loss is the mean over this rank's own B rows, as in plain data
parallelism. The group's loss is the mean of its K ranks' losses, so the logits exchange divides the
gathered gradient by K: the FC slices see the gradient of the mean over K x B. The features exchange
multiplies the reduce-scattered gradient by K back, so each rank's convs get the gradient of its own
mean loss, which DDP over the world averages exactly as in plain data parallelism. fc8's bias is added
to each rank's own rows, so it is data-parallel too (averaged with the convs), not sliced.

Dropout. Every rank of a group draws from the same random stream (the Trainer seeds it by the group,
`Mesh.replica`) and each dropout draws the mask of the whole K x B x width layer, keeping its slice
(towers.TowerDropout): the masks are those one device draws for the group's batch, exactly on CPU.

State dicts: `canonical_state_dict` gathers the slices over the group in the canonical AlexNet's keys
and shapes (DESIGN.md §5); the local module's parameters have their own names (`dp_part.*`,
`classifier.*`), so the canonical name of each is kept by parameter identity and survives DDP.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from .alexnet import AlexNet
from .towers import TowerDropout, GatherSum


class _GatherRows(torch.autograd.Function):
    """All-gather the group's rows (dim 0); backward reduce-scatters the rows' gradient, times K.

    Every rank's FC slice reads every row, so the gradient of rank r's features is the sum of the K
    slices' contributions; the factor K turns the group's mean loss back into rank r's own mean loss
    (the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = dist.get_world_size(ctx.group)
        parts = [g.contiguous() for g in grad.chunk(k, dim=0)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=ctx.group)
        return out.mul_(k), None


class _SumScatterRows(torch.autograd.Function):
    """Sum the K partial logits and keep this rank's rows (a reduce-scatter over dim 0); backward
    all-gathers the K ranks' row gradients and divides by K (the group's loss is their mean)."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        parts = [p.contiguous() for p in partial.chunk(dist.get_world_size(group), dim=0)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k = dist.get_world_size(ctx.group)
        parts = [torch.empty_like(grad) for _ in range(k)]
        dist.all_gather(parts, grad.contiguous(), group=ctx.group)
        return torch.cat(parts, dim=0).div_(k), None


def _inner(m: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (apply_data_parallel wraps the two parts)."""
    return getattr(m, "module", m)


class _Exchange(nn.Module):
    """An exchange over the group as a step of the classifier's Sequential."""

    def __init__(self, fn: type[torch.autograd.Function], group):
        super().__init__()
        self.fn, self.group = fn, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x, self.group)

    def extra_repr(self) -> str:
        return self.fn.__name__.strip("_")


class ConvPart(nn.Module):
    """The data-parallel part: the convolutions (B images -> (B, 9216) features) and fc8's bias,
    which DDP averages over the world. The bias is used by the owner after the logits exchange."""

    def __init__(self, canonical: AlexNet):
        super().__init__()
        self.features = copy.deepcopy(canonical.features)
        self.avgpool = copy.deepcopy(canonical.avgpool)
        self.logit_bias = nn.Parameter(canonical.fcs[-1].bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)  # (B, 256 * 6 * 6) at full size


class OneWeirdTrickAlexNet(nn.Module):
    """Slice `fc_rank` of a one-tower `AlexNet`'s FC layers plus its whole conv part, over `group`
    (the OWT group of K ranks). Build it with `from_canonical(model, mesh)`."""

    def __init__(self, canonical: AlexNet, fc_rank: int, group):
        super().__init__()
        if not isinstance(canonical, AlexNet) or canonical.towers != 1:
            raise ValueError("the model-parallel FC split needs a one-tower AlexNet (alexnet-owt, or model.towers=1)")
        k = group.size() if group is not None else 0
        width = canonical.fcs[0].out_features
        if k < 2 or width % k:
            raise ValueError(f"the FC split needs a group of K >= 2 ranks dividing the FC width {width}, got K={k}")
        self.k, self.fc_rank, self.group = k, fc_rank, group
        self.input_size, self.lrn, self.towers = canonical.input_size, canonical.lrn, 1
        self.dp_part = ConvPart(canonical)
        self.classifier, split_dims = self._local(canonical)
        # canonical key -> (local parameter, dim it is sliced along or None when whole on every rank)
        fc8 = canonical.fcs[-1]
        ckey = {id(p): n for n, p in canonical.named_parameters()}
        self.layout: dict[str, tuple[nn.Parameter, int | None]] = {}
        for name, p in canonical.named_parameters():
            if name.startswith("features."):
                self.layout[name] = (self.dp_part.get_parameter(name), None)
            elif p is fc8.bias:
                self.layout[name] = (self.dp_part.logit_bias, None)
        for (local, dim), canon in split_dims:
            self.layout[ckey[id(canon)]] = (local, dim)
        self.layout = {n: self.layout[n] for n, _ in canonical.named_parameters()}  # canonical order
        self.load_canonical_state_dict(canonical.state_dict())

    @classmethod
    def from_canonical(cls, model: AlexNet, mesh) -> "OneWeirdTrickAlexNet":
        return cls(model, mesh.fc_rank, mesh.fc_group)

    def _local(self, canonical: AlexNet) -> tuple[nn.Sequential, list]:
        """This rank's classifier, and ((local parameter, dim), canonical parameter) for each slice."""
        out, slices, fc8 = [], [], canonical.fcs[-1]
        gathered = True  # whether the activation at this point holds every neuron (else this rank's slice)
        out.append(_Exchange(_GatherRows, self.group))
        for m in canonical.classifier:
            if isinstance(m, nn.Linear) and m is fc8:
                local = nn.utils.skip_init(nn.Linear, m.in_features // self.k, m.out_features, bias=False)
                slices.append(((local.weight, 1), m.weight))
                out += [local, _Exchange(_SumScatterRows, self.group)]
            elif isinstance(m, nn.Linear):
                if not gathered:
                    out.append(_Exchange(GatherSum, self.group))
                # Weights come from load_canonical_state_dict; skip_init spares fc6's init.
                local = nn.utils.skip_init(nn.Linear, m.in_features, m.out_features // self.k)
                slices += [((local.weight, 0), m.weight), ((local.bias, 0), m.bias)]
                out.append(local)
                gathered = False
            elif isinstance(m, nn.Dropout):
                # On every neuron (gathered): the plain mask, the same on every rank of the group's
                # shared stream; on a slice: the whole layer's mask, this rank's part of it.
                out.append(copy.deepcopy(m) if gathered else TowerDropout(m.p, self.k, self.fc_rank))
            else:
                out.append(copy.deepcopy(m))
        return nn.Sequential(*out), slices

    def compile(self, **kw) -> None:
        """torch.compile the conv part (in place: its parameters keep their names). The FC slices and
        their exchanges stay eager: matrix products, which compiling barely speeds up."""
        self.dp_part.compile(**kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Evaluation runs the parts unwrapped: no DDP forward, which the groups would take unevenly.
        conv, fc = ((self.dp_part, self.classifier) if torch.is_grad_enabled()
                    else (_inner(self.dp_part), _inner(self.classifier)))
        return fc(conv(x)) + self.logit_bias  # (B, C): this rank's own rows

    @property
    def logit_bias(self) -> nn.Parameter:
        return _inner(self.dp_part).logit_bias

    def canonical_names(self) -> dict[int, str]:
        """id(local parameter) -> its canonical key."""
        return {id(p): name for name, (p, _) in self.layout.items()}

    def gather_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-parameter tensors by canonical key (weights, gradients, momentum) in canonical shape.
        A collective over the group: the same keys in the same order on every rank."""
        out = {}
        for key, t in tensors.items():
            dim = self.layout[key][1]
            if dim is None:
                out[key] = t
                continue
            parts = [torch.empty_like(t) for _ in range(self.k)]
            dist.all_gather(parts, t.detach().contiguous(), group=self.group)
            out[key] = torch.cat(parts, dim=dim)
        return out

    def split_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's slice of every canonical tensor. Local."""
        out = {}
        for key, t in tensors.items():
            dim = self.layout[key][1]
            out[key] = t if dim is None else t.chunk(self.k, dim=dim)[self.fc_rank]
        return out

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        return self.gather_canonical({key: p.detach() for key, (p, _) in self.layout.items()})

    @torch.no_grad()
    def load_canonical_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.layout) ^ set(state_dict)
        if missing:
            raise KeyError(f"canonical state dict keys differ from the model's: {sorted(missing)}")
        for key, t in self.split_canonical(state_dict).items():
            self.layout[key][0].copy_(t)
