"""Pillow's antialiased bilinear resize of a box, on any torch device: data.decoder=device resizes
VGG's scale-jitter crops on the GPU (shards/nvimgcodec_decode.py) to the pixels ScaleJitter gets
from Pillow on the CPU. The weights are libImaging/Resample.c's, line for line (its box is C floats),
in its fixed point; each pass rounds to 8 bits as Pillow's does, and float64 holds every sum exactly.
"""

from __future__ import annotations

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling


def pillow_coeffs(in_size: int, in0: float, in1: float, out_size: int) -> tuple[torch.Tensor, bool]:
    """out_size × in_size fixed-point weights of Pillow's antialiased bilinear resize of [in0, in1)
    (libImaging/Resample.c precompute_coeffs and normalize_coeffs_8bpc, line for line), and whether
    Pillow resamples this axis at all."""
    in0, in1 = np.float32(in0), np.float32(in1)  # Pillow's box is C floats, their difference too
    scale = float(in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support, ss = filterscale, 1.0 / filterscale
    center = float(in0) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(max(int(xmax.max()), 0))[None, :]
    arg = ((taps + xmin[:, None]) - center[:, None] + 0.5) * ss  # (x + xmin - center + 0.5) * ss, as in C
    w = np.where(taps < xmax[:, None], np.maximum(0.0, 1.0 - np.abs(arg)), 0.0)
    total = np.zeros(out_size)
    for x in range(w.shape[1]):  # in order, as the C loop adds them
        total += w[:, x]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = np.trunc(np.where(w < 0, -0.5, 0.5) + w * (1 << PRECISION_BITS))
    k = np.zeros((out_size, in_size + w.shape[1]))
    np.put_along_axis(k, taps + xmin[:, None], fixed, axis=1)  # taps past xmax are 0
    k = torch.from_numpy(k[:, :in_size])
    return k, out_size != in_size or in0 != 0 or in1 != out_size


def resize_box(pixels: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """H×W×3 uint8 (any device) -> size×size×3: ``box`` (left, top, right, bottom) resized as
    Pillow's ``resize((size, size), BILINEAR, box=box)`` does it, the horizontal pass first, each
    pass rounded to 8 bits; float64 holds every sum exactly, so the pixels are Pillow's."""
    h, w = pixels.shape[:2]
    kx, need_x = pillow_coeffs(w, box[0], box[2], size)
    ky, need_y = pillow_coeffs(h, box[1], box[3], size)
    x = pixels.to(torch.float64)
    half = float(1 << (PRECISION_BITS - 1))
    if need_x:
        x = torch.einsum("yxc,ox->yoc", x, kx.to(x.device))
        x = torch.floor((x + half) / (1 << PRECISION_BITS)).clamp_(0, 255)
    if need_y:
        x = torch.einsum("yxc,oy->oxc", x, ky.to(x.device))
        x = torch.floor((x + half) / (1 << PRECISION_BITS)).clamp_(0, 255)
    return x.to(torch.uint8)
