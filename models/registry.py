"""The registry: model name -> builder (`models.catalog` says what each name accepts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import alexnet as _alexnet
from . import vgg as _vgg
from .catalog import ACCEPTS, ALEXNETS, INITS, VGGS, names, resolve

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "alexnet": _alexnet.alexnet,
    "alexnet-owt": _alexnet.alexnet_owt,
    "alexnet-small": _alexnet.alexnet_small,
    **{f"vgg-{cfg.lower()}": (lambda cfg=cfg, **kw: _vgg.vgg(cfg, **kw)) for cfg in _vgg.CFGS},
}
assert tuple(_BUILDERS) == ALEXNETS + VGGS, "cnnctl.models.catalog lists every registered model"
assert set(_alexnet._INITS) == set(INITS["alexnet"]) and set(_vgg._INITS) == set(INITS["vgg"]), "and every init"


def build(name: str, *, num_classes: int = 1000, **overrides) -> nn.Module:
    """The model `name` (or an alias) with the family's defaults for every override not given."""
    canonical = resolve(name)
    unknown = [key for key in overrides if key not in ACCEPTS[canonical]]
    if unknown:
        raise TypeError(f"model {canonical!r} takes no override(s) {unknown}; it takes {list(ACCEPTS[canonical])}")
    return _BUILDERS[canonical](num_classes=num_classes, **overrides)


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
