"""Dense (fully-convolutional) evaluation, VGG §3.2.

At test time fc6 becomes a k x k conv (k = the side the classifier was trained on: 7 for VGG at 224,
6 for AlexNet at 227) and fc7/fc8 become 1x1 convs, so the net runs on a whole image of any size
>= its native one and returns a class score map; the paper averages that map spatially (and with the
horizontally flipped image's). The dense model shares the original's parameters (views of the same
storage), so it follows further training and costs no memory. The `avgpool` is dropped: at the
native size it is the identity, and above it the score map must see the un-pooled features.
"""

from __future__ import annotations

import torch
from torch import nn


def _as_conv(fc: nn.Linear, k: int) -> nn.Conv2d:
    c_in = fc.in_features // (k * k)
    conv = nn.Conv2d(c_in, fc.out_features, k, device="meta")
    # Linear flattens (C, k, k) C-major, which is exactly a conv weight's (out, C, k, k) layout.
    conv.weight = nn.Parameter(fc.weight.detach().view(fc.out_features, c_in, k, k), fc.weight.requires_grad)
    conv.bias = fc.bias
    return conv


class DenseNet(nn.Module):
    """`features` of the original net followed by its classifier as convs; returns (N, classes, h, w)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        size = model.avgpool.output_size
        k = size if isinstance(size, int) else size[0]
        layers, first = [], True
        for m in model.classifier:
            if isinstance(m, nn.Linear):
                layers.append(_as_conv(m, k if first else 1))
                first = False
            else:
                layers.append(m)  # ReLU and Dropout work on maps as they are
        self.features = model.features
        self.classifier = nn.Sequential(*layers)
        self.input_size = model.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_dense(model: nn.Module) -> DenseNet:
    """The fully-convolutional form of an AlexNet or VGG (any towers), sharing its weights."""
    return DenseNet(model)


def dense_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class scores of a dense net, averaged over the score map: (N, classes)."""
    return model(x).mean(dim=(2, 3))
