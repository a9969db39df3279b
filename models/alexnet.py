"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as one class, `AlexNet`, with three configs.

- `alexnet`: the paper's net (§3, Figure 2): two towers, LRN after conv1/conv2 (§3.3), overlapping
  3x3/2 max pooling (§3.4), dropout 0.5 in fc6/fc7 (§4.2), N(0, 0.01) init with biases 1 in conv2,
  conv4, conv5, fc6, fc7 (§5). 60,965,224 parameters at 1000 classes.
- `alexnet-owt`: torchvision's "one weird trick" layout (Krizhevsky 2014): 64/192/384/256/256, one
  tower, no LRN, dropout before fc6/fc7, torch's default init, torchvision's state-dict keys
  (`features.N`, `classifier.N`). 61,100,840 parameters.
- `alexnet-small`: the same net scaled for 28-64 px inputs (Fashion-MNIST): conv1 5x5/1, conv2 5x5,
  32/64/96/96/64 channels, fc6/fc7 512, pooled to 2x2 before fc6 (28 px: 28 -> 13 -> 6 -> 2). Two
  towers, LRN, overlapping pooling and dropout are kept. He (kaiming) init for the convs and fc6/fc7,
  N(0, 0.01) for fc8, zero biases: it reached 0.909 Fashion-MNIST test top-1 in 8 epochs. About
  1,200 img/s fwd+bwd on one CPU thread at batch 128 (1,500 in channels_last), 12 MMACs per image.

Deviations from the paper: input 227 not 224 (227 is what makes conv1 give 55x55); the paper's
4096-wide fc6 is reached through an `avgpool` (AdaptiveAvgPool2d) that is the identity at the native
size; fc8's bias is 0 because §5 gives 1 only to the *hidden* FC layers (a constant on every logit
leaves the softmax unchanged anyway).

Towers. `towers=2` puts `groups=2` on conv2, conv4 and conv5, and LRN normalises each tower's maps
separately (each GPU only saw its own). For every conv and for fc6/fc7 the first half of the output
channels is tower 0 and the second half tower 1; a grouped conv's tower t reads the tower-t half of
its input. conv1 reads the whole image, conv3, fc6, fc7 and fc8 read both towers: activations cross
between towers at the input of conv3, fc6, fc7 and fc8, as between the paper's GPUs. `model.layers`
names them: conv1..conv5 (`model.convs`), fc6..fc8 (`model.fcs`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .catalog import ALEXNET_CONFIGS
from .lrn import LRN, PAPER, LRNParams, check_n

Conv = tuple[int, int, int, int]  # (out_channels, kernel, stride, padding)
GROUPED = (False, True, False, True, True)  # conv1..conv5: which ones see only their own tower

# The three configs, from models/catalog.py (their one copy, which the catalog reads without torch).
CONFIGS: dict[str, dict] = {name: {**c, "lrn": PAPER if c["lrn"] else None} for name, c in ALEXNET_CONFIGS.items()}


def lrn_params(lrn: LRNParams | Mapping | None) -> LRNParams | None:
    """An `lrn` override (keys n, k, alpha, beta in the paper's convention; missing keys take the
    paper's values) as LRNParams; None means no LRN."""
    if lrn is None or isinstance(lrn, LRNParams):
        return lrn
    if not isinstance(lrn, Mapping):
        raise TypeError(f"lrn must be a dict with keys n, k, alpha, beta or None, got {type(lrn).__name__}")
    unknown = set(lrn) - set(LRNParams._fields)
    if unknown:
        raise ValueError(f"unknown LRN key(s) {sorted(unknown)}; expected n, k, alpha, beta")
    p = PAPER._replace(**lrn)
    return LRNParams(check_n(p.n), float(p.k), float(p.alpha), float(p.beta))


class AlexNet(nn.Module):
    """AlexNet with `towers` in {1, 2}; see the module docstring for the configs and the tower layout.

    `width` multiplies every conv and hidden FC width (rounded to a multiple of `towers`).
    `dropout_first` puts dropout before fc6/fc7 (torchvision) instead of after them (the paper).
    `init` is "paper" (§5), "kaiming" or "torch" (the layers' defaults).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        convs: tuple[Conv, ...] = CONFIGS["alexnet"]["convs"],
        fc: int = 4096,
        towers: int = 2,
        width: float = 1.0,
        lrn: LRNParams | Mapping | None = PAPER,
        dropout: float = 0.5,
        input_size: int = 227,
        pool_out: int = 6,
        init: str = "paper",
        dropout_first: bool = False,
    ):
        super().__init__()
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {init!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        self.towers, self.input_size, self.lrn = towers, input_size, lrn_params(lrn)
        scale = lambda c: max(towers, round(c * width / towers) * towers)  # noqa: E731
        layers, c_in = [], 3
        for i, ((c, kernel, stride, pad), grouped) in enumerate(zip(convs, GROUPED, strict=True)):
            c = scale(c)
            layers += [nn.Conv2d(c_in, c, kernel, stride, pad, groups=towers if grouped else 1), nn.ReLU(inplace=True)]
            if i < 2 and self.lrn is not None:
                layers.append(LRN.from_params(self.lrn, groups=towers))
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))  # overlapping pooling, §3.4
            c_in = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_out)
        fc, flat = scale(fc), c_in * pool_out * pool_out
        hidden = [nn.Linear(flat, fc), nn.ReLU(inplace=True), nn.Linear(fc, fc), nn.ReLU(inplace=True)]
        drop = lambda: nn.Dropout(dropout)  # noqa: E731
        if dropout_first:
            hidden = [drop(), *hidden[:2], drop(), *hidden[2:]]
        else:
            hidden = [*hidden[:2], drop(), *hidden[2:], drop()]
        self.classifier = nn.Sequential(*hidden, nn.Linear(fc, num_classes))
        _INITS[init](self)

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    @property
    def fcs(self) -> list[nn.Linear]:
        return [m for m in self.classifier if isinstance(m, nn.Linear)]

    @property
    def layers(self) -> dict[str, nn.Module]:
        """conv1..conv5 and fc6..fc8 by their paper names."""
        named = [(f"conv{i}", m) for i, m in enumerate(self.convs, 1)]
        return dict(named + [(f"fc{i}", m) for i, m in enumerate(self.fcs, 6)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # paper: (N, 256, 6, 6)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_paper(model: AlexNet) -> None:
    # §5: biases 1 give the ReLUs positive inputs early on; only the *hidden* FC layers get them.
    for name, m in model.layers.items():
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.constant_(m.bias, 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)


def _init_kaiming(model: AlexNet) -> None:
    *hidden, last = model.layers.values()
    for m in hidden:
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
    nn.init.normal_(last.weight, 0.0, 0.01)
    nn.init.zeros_(last.bias)


_INITS = {"paper": _init_paper, "kaiming": _init_kaiming, "torch": lambda model: None}


def alexnet(**kw) -> AlexNet:
    return AlexNet(**{**CONFIGS["alexnet"], **kw})


def alexnet_owt(**kw) -> AlexNet:
    return AlexNet(**{**CONFIGS["alexnet-owt"], **kw})


def alexnet_small(**kw) -> AlexNet:
    return AlexNet(**{**CONFIGS["alexnet-small"], **kw})
