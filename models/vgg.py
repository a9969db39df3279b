"""VGG configurations A-E (Simonyan and Zisserman, ICLR 2015, Table 1) as data plus one builder.

`CFGS` follows Table 1: a number is a 3x3 conv (stride 1, pad 1) with that many filters and a ReLU,
"conv1-N" is a 1x1 conv with N filters (config C), "M" is 2x2/2 max pooling, "LRN" is local response
normalisation with AlexNet's parameters (config A-LRN, §2.3). Each ends in FC-4096, FC-4096, FC-1000
with dropout 0.5 after the first two (§3.1). Parameter counts at 1000 classes: A and A-LRN
132,863,336; B 133,047,848; C 133,638,952; D 138,357,544; E 143,667,240.

State-dict keys of A, B, D and E are torchvision's (`features.N`, `classifier.0/3/6`).

Deviations: an `avgpool` (AdaptiveAvgPool2d(7)) sits between features and classifier as in
torchvision; it is the identity at 224 px. Init "paper" is N(0, 0.01) with zero biases: §3.1 says
"10^-2 variance", but std 0.01 is what Caffe and torchvision's `vgg` init use, and a std of 0.1
diverges. §3.1 trains A from that init and starts B-E from A (`init_from`); its footnote notes that
Glorot & Bengio's init ("glorot") trains the deep nets without that step. "kaiming" is He et al.'s.

`width` multiplies every conv and the two hidden FC layers (64 -> 8 at width 1/8): the papers' nets
are width 1; smaller widths are for rehearsals of a recipe on a CPU. At small widths N(0, 0.01)
leaves the signal vanishing through the stack and the net does not learn: use "glorot" there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .alexnet import lrn_params
from .lrn import LRN, PAPER, LRNParams

Cfg = list[int | str]

_B: Cfg = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
CFGS: dict[str, Cfg] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": _B,
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "conv1-256", "M", 512, 512, "conv1-512", "M",
          512, 512, "conv1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(cfg: Cfg, lrn: LRNParams | None = PAPER, width: float = 1.0) -> nn.Sequential:
    """The conv part of one Table 1 column; `lrn` gives the parameters of its "LRN" entries, and
    `width` multiplies every conv's filters."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "LRN":
            if lrn is not None:  # lrn=None turns A-LRN into A
                layers.append(LRN.from_params(lrn))
        else:
            kernel, c = (1, int(v.removeprefix("conv1-"))) if isinstance(v, str) else (3, v)
            c = max(1, round(c * width))
            layers += [nn.Conv2d(c_in, c, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """One VGG column: `features` (Table 1), `avgpool`, `classifier` (fc6, fc7, fc8)."""

    input_size = 224

    def __init__(
        self,
        cfg: Cfg,
        num_classes: int = 1000,
        *,
        dropout: float = 0.5,
        lrn: LRNParams | Mapping | None = PAPER,
        width: float = 1.0,
        init: str = "paper",
    ):
        super().__init__()
        if init not in _INITS:
            raise ValueError(f"init must be one of {sorted(_INITS)}, got {init!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        self.towers = 1
        self.lrn = lrn_params(lrn) if "LRN" in cfg else None
        fc = max(1, round(4096 * width))
        device = torch.empty(0).device  # the caller's default device (cpu, cuda or meta)
        with torch.device("meta"):  # skip the layers' default init: it is overwritten below
            self.features = make_features(cfg, self.lrn, width)
            c_out = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Linear(c_out * 7 * 7, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(fc, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(fc, num_classes),
            )
        self.to_empty(device=device)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _INITS[init](m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 7, 7) at 224 px
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


_INITS = {
    "paper": lambda w: nn.init.normal_(w, 0.0, 0.01),
    "glorot": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


def conv_positions(features: nn.Sequential) -> dict[tuple[int, int], nn.Conv2d]:
    """Each conv keyed by (block, index within the block); blocks end at a max pool."""
    out, block, pos = {}, 0, 0
    for m in features:
        if isinstance(m, nn.MaxPool2d):
            block, pos = block + 1, 0
        elif isinstance(m, nn.Conv2d):
            out[(block, pos)] = m
            pos += 1
    return out


@torch.no_grad()
def init_from(deep: VGG, shallow: VGG) -> list[str]:
    """§3.1: initialise a deeper net from a trained net A with A's first four conv layers and its three
    FC layers; the rest stays random. Returns the names of the parameters of `deep` it set.

    A's first four convs are block 1's, block 2's and the two of block 3; they go to the same
    (block, position) in the deeper net, the only places where their shapes fit in B-E.
    """
    source = conv_positions(shallow.features)
    target = conv_positions(deep.features)
    pairs = [(target[key], source[key]) for key in list(source)[:4]]
    pairs += [(d, s) for d, s in zip(deep.classifier, shallow.classifier) if isinstance(d, nn.Linear)]
    names = {id(p): n for n, p in deep.named_parameters()}
    copied = []
    for dst, src in pairs:
        for name in ("weight", "bias"):
            d, s = getattr(dst, name), getattr(src, name)
            if d.shape != s.shape:
                raise ValueError(f"init_from: {names[id(d)]} is {tuple(d.shape)} but A's is {tuple(s.shape)}")
            d.copy_(s)
            copied.append(names[id(d)])
    return copied


def vgg(config: str, **kw) -> VGG:
    return VGG(CFGS[config], **kw)
