"""cnnctl models: LRN, AlexNet, VGG and their registry. torch only.

    build(name, *, num_classes=1000, **overrides) -> nn.Module   # has .input_size, .towers, .lrn
    names() -> list[str]                                         # canonical names; ALIASES maps others
    check_overrides(name, overrides) -> list[str]                # what `name` does not take (no torch)
    describe(name) -> dict, table() -> list[dict]                # rows for `cnnctl models`
    load_matching(model, state_dict) -> list[str]                # fine-tuning with a new classifier
    init_from(deep, shallow) -> list[str]                        # VGG §3.1: B-E from a trained A

Overrides: AlexNet family `towers`, `width`, `lrn`, `dropout`, `init`; VGG `width`, `dropout`, `init`,
and `lrn` for A-LRN only (`models.catalog.ACCEPTS`). `lrn` is a dict with keys n, k, alpha, beta in the
paper's convention (alpha not divided by n), or None for no LRN.

The names and what they accept (`models.catalog`) import without torch, so the driver checks a config
before it pays for torch; everything else loads on first use.
"""

from __future__ import annotations

import importlib

from .catalog import ALIASES, check_overrides, family, names, resolve

_LAZY = {
    "build": "registry", "describe": "registry", "table": "registry", "load_matching": "registry",
    "AlexNet": "alexnet", "VGG": "vgg", "init_from": "vgg", "to_dense": "dense",
    "LRN": "lrn", "LRNParams": "lrn", "from_caffe": "lrn", "from_torch": "lrn", "to_torch": "lrn",
}

__all__ = ["ALIASES", "check_overrides", "family", "names", "resolve", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
