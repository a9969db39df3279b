"""cnnctl models: LRN, AlexNet, VGG and their registry. torch only.

    build(name, *, num_classes=1000, **overrides) -> nn.Module   # has .input_size, .towers, .lrn
    names() -> list[str]                                         # canonical names; ALIASES maps others
    describe(name) -> dict, table() -> list[dict]                # rows for `cnnctl models`
    load_matching(model, state_dict) -> list[str]                # fine-tuning with a new classifier

Overrides: AlexNet family `towers`, `width`, `lrn`, `dropout`, `init`; VGG `dropout` and `lrn`
(`lrn` only changes A-LRN; the other columns have no LRN and ignore it). `lrn` is a dict with keys
n, k, alpha, beta in the paper's convention (alpha not divided by n), or None for no LRN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import alexnet as _alexnet
from . import vgg as _vgg
from .alexnet import AlexNet
from .dense import to_dense
from .lrn import LRN, LRNParams, from_caffe, from_torch, to_torch
from .vgg import VGG, init_from

__all__ = [
    "ALIASES", "LRN", "AlexNet", "LRNParams", "VGG", "build", "describe", "from_caffe", "from_torch",
    "init_from", "load_matching", "names", "table", "to_dense", "to_torch",
]

_ALEXNET_OVERRIDES = ("towers", "width", "lrn", "dropout", "init")
_VGG_OVERRIDES = ("dropout", "lrn")

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "alexnet": (_alexnet.alexnet, _ALEXNET_OVERRIDES),
    "alexnet-owt": (_alexnet.alexnet_owt, _ALEXNET_OVERRIDES),
    "alexnet-small": (_alexnet.alexnet_small, _ALEXNET_OVERRIDES),
    **{
        f"vgg-{cfg.lower()}": (lambda cfg=cfg, **kw: _vgg.vgg(cfg, **kw), _VGG_OVERRIDES)
        for cfg in _vgg.CFGS
    },
}
ALIASES = {"vgg11": "vgg-a", "vgg13": "vgg-b", "vgg16": "vgg-d", "vgg19": "vgg-e"}


def names() -> list[str]:
    return list(_REGISTRY)


def resolve(name: str) -> str:
    """The canonical name for a name or alias; ValueError listing the known names otherwise."""
    canonical = ALIASES.get(name, name)
    if canonical not in _REGISTRY:
        known = ", ".join(names() + list(ALIASES))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return canonical


def build(name: str, *, num_classes: int = 1000, **overrides) -> nn.Module:
    builder, allowed = _REGISTRY[resolve(name)]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"model {name!r} takes no override(s) {unknown}; it takes {list(allowed)}")
    return builder(num_classes=num_classes, **overrides)


def describe(name: str, **overrides) -> dict:
    """One `cnnctl models` row: name, params, gmacs (multiply-adds of one image at input_size, counted
    by FlopCounterMode as flops / 2), input_size, towers, lrn (dict or None). Built on the meta device,
    so even VGG-E costs no memory or compute."""
    with torch.device("meta"):
        model = build(name, **overrides)
        x = torch.empty(1, 3, model.input_size, model.input_size)
        with FlopCounterMode(display=False) as counter:
            model.eval()(x)
    return {
        "name": resolve(name),
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": counter.get_total_flops() / 2 / 1e9,
        "input_size": model.input_size,
        "towers": model.towers,
        "lrn": model.lrn._asdict() if model.lrn else None,
    }


def table() -> list[dict]:
    return [describe(name) for name in names()]


@torch.no_grad()
def load_matching(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `state_dict` whose name and shape match one of `model`'s (for fine-tuning
    with a new classifier); returns the names copied, in the model's order."""
    copied = []
    for key, dst in model.state_dict(keep_vars=True).items():
        src = state_dict.get(key)
        if src is not None and src.shape == dst.shape:
            dst.copy_(src)
            copied.append(key)
    return copied
