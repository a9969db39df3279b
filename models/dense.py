"""Dense (fully-convolutional) evaluation, VGG §3.2.

At test time fc6 becomes a k x k conv (k = the side the classifier was trained on: 7 for VGG at 224,
6 for AlexNet at 227) and fc7/fc8 become 1x1 convs, so the net runs on a whole image of any size
>= its native one and returns a class score map; the paper averages that map spatially (and with the
horizontally flipped image's). The dense model shares the original's parameters (views of the same
storage), so it follows further training and costs no memory. The `avgpool` is dropped: at the
native size it is the identity, and above it the score map must see the un-pooled features.

A net trained on smaller crops than its native size (a rehearsal at reduced size) saw its f x f
feature map through the avgpool, which stretches it to k x k: a linear map P. fc6 on P(x) is the f x f
conv whose kernel is fc6's folded with P, so `to_dense(model, size)` builds that kernel (a new
tensor, not a view) and the dense net again equals the trained net at its own crop size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _as_conv(fc: nn.Linear, k: int, f: int) -> nn.Conv2d:
    """fc (reading a C x k x k avgpool output) as a conv over an f x f feature map."""
    c_in = fc.in_features // (k * k)
    conv = nn.Conv2d(c_in, fc.out_features, f, device="meta")
    # Linear flattens (C, k, k) C-major, which is exactly a conv weight's (out, C, k, k) layout.
    weight = fc.weight.detach().view(fc.out_features, c_in, k, k)
    if f != k:  # fold in the avgpool: column (i, j) of P is the pooled image of a one-hot f x f map
        pool = F.adaptive_avg_pool2d(torch.eye(f * f, dtype=weight.dtype, device=weight.device).view(f * f, 1, f, f), k)
        weight = torch.einsum("ocpq,ipq->oci", weight, pool.view(f * f, k, k)).reshape(fc.out_features, c_in, f, f)
    conv.weight = nn.Parameter(weight, fc.weight.requires_grad)
    conv.bias = fc.bias
    return conv


class DenseNet(nn.Module):
    """`features` of the original net followed by its classifier as convs; returns (N, classes, h, w)."""

    def __init__(self, model: nn.Module, size: int | None = None):
        super().__init__()
        pooled = model.avgpool.output_size
        k = pooled if isinstance(pooled, int) else pooled[0]
        size = size or model.input_size
        f = model.features(torch.empty(1, 3, size, size, device="meta")).shape[-1]  # the trained feature map
        layers, first = [], True
        for m in model.classifier:
            if isinstance(m, nn.Linear):
                layers.append(_as_conv(m, k, f) if first else _as_conv(m, 1, 1))
                first = False
            else:
                layers.append(m)  # ReLU and Dropout work on maps as they are
        self.features = model.features
        self.classifier = nn.Sequential(*layers)
        self.input_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_dense(model: nn.Module, size: int | None = None) -> DenseNet:
    """The fully-convolutional form of an AlexNet or VGG (any towers) trained on `size` x `size` crops
    (default: its native input size), sharing its weights at that size and folding the avgpool into
    fc6 below it."""
    return DenseNet(model, size)


def dense_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class scores of a dense net, averaged over the score map: (N, classes)."""
    return model(x).mean(dim=(2, 3))
