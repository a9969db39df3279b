"""The model names and what each one accepts, without torch: the config checks a run against it on
the driver before Ray, or torch, starts.

Overrides: every AlexNet takes `towers`, `width`, `lrn`, `dropout` and `init`. Every VGG column takes
`width`, `dropout` and `init`; A-LRN also takes `lrn` (the other columns have no LRN layer to set).
"""

from __future__ import annotations

ALEXNETS = ("alexnet", "alexnet-owt", "alexnet-small")
VGGS = ("vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e")  # Table 1's columns, as models.vgg.CFGS
ALIASES = {"vgg11": "vgg-a", "vgg13": "vgg-b", "vgg16": "vgg-d", "vgg19": "vgg-e"}

_ALEXNET = ("towers", "width", "lrn", "dropout", "init")
_VGG = ("width", "dropout", "init")
ACCEPTS: dict[str, tuple[str, ...]] = {
    **{name: _ALEXNET for name in ALEXNETS},
    **{name: _VGG + (("lrn",) if name == "vgg-a-lrn" else ()) for name in VGGS},
}
# Each AlexNet's own tower count (models/alexnet.py's presets): parallel.mp=2 splits two towers.
TOWERS = {"alexnet": 2, "alexnet-owt": 1, "alexnet-small": 2}
# Each AlexNet's hidden FC width (fc6, fc7) at width 1; parallel.fc=model slices it over K ranks.
FC = {"alexnet": 4096, "alexnet-owt": 4096, "alexnet-small": 512}
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
