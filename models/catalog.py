"""The model names, what each one accepts and the AlexNets' configs, without torch: the config checks a
run against it on the driver before Ray, or torch, starts.

Overrides: every AlexNet takes `towers`, `width`, `lrn`, `dropout` and `init`. Every VGG column takes
`width`, `dropout` and `init`; A-LRN also takes `lrn` (the other columns have no LRN layer to set).
"""

from __future__ import annotations

# The AlexNets, the one copy of their facts (models/alexnet.py builds them from it, as CONFIGS; the
# catalog answers from it without torch): convs as (out_channels, kernel, stride, padding), the hidden
# FC width of fc6/fc7 (parallel.fc=model slices it over K ranks), towers (parallel.mp=2 splits two),
# lrn (True: the paper's, §3.3), input size, the avgpool's output side, init, dropout before fc6/fc7.
ALEXNET_CONFIGS: dict[str, dict] = {
    "alexnet": dict(
        convs=((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)),
        fc=4096, towers=2, lrn=True, input_size=227, pool_out=6, init="paper",
    ),
    "alexnet-owt": dict(
        convs=((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)),
        fc=4096, towers=1, lrn=False, input_size=224, pool_out=6, init="torch", dropout_first=True,
    ),
    "alexnet-small": dict(
        convs=((32, 5, 1, 2), (64, 5, 1, 2), (96, 3, 1, 1), (96, 3, 1, 1), (64, 3, 1, 1)),
        fc=512, towers=2, lrn=True, input_size=28, pool_out=2, init="kaiming",
    ),
}
ALEXNETS = tuple(ALEXNET_CONFIGS)
VGGS = ("vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e")  # Table 1's columns, as models.vgg.CFGS
ALIASES = {"vgg11": "vgg-a", "vgg13": "vgg-b", "vgg16": "vgg-d", "vgg19": "vgg-e"}

_ALEXNET = ("towers", "width", "lrn", "dropout", "init")
_VGG = ("width", "dropout", "init")
ACCEPTS: dict[str, tuple[str, ...]] = {
    **{name: _ALEXNET for name in ALEXNETS},
    **{name: _VGG + (("lrn",) if name == "vgg-a-lrn" else ()) for name in VGGS},
}
TOWERS = {name: c["towers"] for name, c in ALEXNET_CONFIGS.items()}  # each AlexNet's own tower count
FC = {name: c["fc"] for name, c in ALEXNET_CONFIGS.items()}  # each AlexNet's fc6/fc7 width at width 1
# The `init` values each family knows, its own paper's first.
INITS = {"alexnet": ("paper", "kaiming", "torch"), "vgg": ("paper", "glorot", "kaiming")}


def names() -> list[str]:
    return list(ACCEPTS)


def resolve(name: str) -> str:
    """The canonical name for a name or alias; ValueError listing the known names otherwise."""
    canonical = ALIASES.get(name, name)
    if canonical not in ACCEPTS:
        known = ", ".join(names() + list(ALIASES))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return canonical


def family(name: str) -> str:
    """'alexnet' or 'vgg'."""
    return "vgg" if resolve(name) in VGGS else "alexnet"


def check_overrides(name: str, overrides: dict) -> list[str]:
    """One line per override that `name` does not take (or an `init` its family does not know)."""
    canonical = resolve(name)
    accepts = ACCEPTS[canonical]
    problems = [f"{key}: does not apply to {canonical} (it takes {', '.join(accepts)})"
                for key in overrides if key not in accepts]
    inits = INITS[family(canonical)]
    if overrides.get("init") is not None and overrides["init"] not in inits:
        problems.append(f"init: {overrides['init']!r} is not an init of {canonical} (one of {', '.join(inits)})")
    return problems


def towers(name: str, override: int | None = None) -> int:
    """The towers a model is built with (VGG: 1, one column)."""
    return override if override is not None else TOWERS.get(resolve(name), 1)


def fc_width(name: str, width: float | None = None) -> int:
    """A one-tower AlexNet's fc6/fc7 width at a `width` multiplier (as models/alexnet.py rounds it)."""
    return max(1, round(FC[resolve(name)] * (width or 1.0)))
