"""Per-sample transforms: shard bytes in, an HxWx3 uint8 array out (batches cross the DataLoader as uint8).

A transform has two steps, both given the sample's seeded ``random.Random`` so the same seed gives the
same batches:

- ``load(data, ext, rng)``: the shard member's bytes -> pixels. The default decodes the whole image;
  a transform that only needs part of the image at another scale (VGG's scale jitter) crops and
  scales while decoding instead (libjpeg-turbo's DCT scaling, then one resize of the crop window).
- ``__call__(img, rng)``: pixels -> the sample, HxWx3 (ten-crop: 10xHxWx3). It may return a strided
  view (a crop, a flip): the reader copies it once, straight into the batch buffer.

Samples stay HWC: a batch N×H×W×3 is already the channels_last layout the model runs in, so the
reader hands it on as an N×3×H×W view and no transpose is ever paid per sample. Normalisation,
mean subtraction and PCA lighting run later, batched, on the training device (orchestrator/data.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image

from shards import codec


def _square(img: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the central square: AlexNet's crops come from the 256x256 centre (§2)."""
    h, w = img.shape[:2]
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


def _check(img: np.ndarray, size: int) -> None:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}px crop")


def _center(img: np.ndarray, size: int) -> np.ndarray:
    _check(img, size)
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


class Transform:
    """Base: decode the whole image, return it unchanged (dense evaluation takes the full image)."""

    def load(self, data: bytes, ext: str, rng: random.Random | None = None) -> np.ndarray:
        return codec.decode(data, ext)

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        return img

    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of every sample it returns, or None when it varies (full images)."""
        size = getattr(self, "size", None)
        return (size, size, 3) if size else None


Full = Transform


@dataclass(frozen=True)
class CropFlip(Transform):
    """Random ``size`` crop of the image zero-padded by ``pad``, then a horizontal flip with p=0.5."""

    size: int
    pad: int = 0

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if self.pad:
            img = np.pad(img, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        _check(img, self.size)
        h, w = img.shape[:2]
        top, left = rng.randrange(h - self.size + 1), rng.randrange(w - self.size + 1)
        img = img[top : top + self.size, left : left + self.size]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return img


@dataclass(frozen=True)
class CenterCrop(Transform):
    size: int

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        return _center(img, self.size)


@dataclass(frozen=True)
class AlexNetCrop(Transform):
    """AlexNet §4.1: a random ``size`` (227) crop of the central square (256x256), flipped with p=0.5.

    PCA lighting is not here: it is one RGB offset per image, added batched on the device.
    """

    size: int = 227

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        top0, left0, side = _square(img)
        if side < self.size:
            raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is smaller than the {self.size}px crop")
        top, left = top0 + rng.randrange(side - self.size + 1), left0 + rng.randrange(side - self.size + 1)
        img = img[top : top + self.size, left : left + self.size]
        return img[:, ::-1] if rng.random() < 0.5 else img


@dataclass(frozen=True)
class ScaleJitter(Transform):
    """VGG §3.1 scale jitter: isotropically rescale so the shorter side is S ~ U{scale_min..scale_max},
    take a random ``size`` (224) crop and flip it with p=0.5 (the RGB colour shift runs on the device).

    Only the crop window is ever resampled: the window is mapped back to source pixels and resized
    once (Pillow's ``resize(box=...)``), and a JPEG that S shrinks by 2x or more is first decoded
    DCT-scaled by libjpeg-turbo. Rescaling the whole image to S=512 first would cost ~5x more.
    """

    size: int = 224
    scale_min: int = 256
    scale_max: int = 512

    def plan(self, w: int, h: int, rng: random.Random) -> tuple[int, tuple[float, float, float, float]]:
        """S and the crop window (left, top, right, bottom) in source pixels."""
        if self.scale_min < self.size:
            raise ValueError(f"scale_min {self.scale_min} is below the {self.size}px crop")
        s = rng.randint(self.scale_min, self.scale_max)
        f = s / min(w, h)
        sw, sh = max(self.size, round(w * f)), max(self.size, round(h * f))
        top, left = rng.randrange(sh - self.size + 1), rng.randrange(sw - self.size + 1)
        fx, fy = sw / w, sh / h
        return s, (left / fx, top / fy, (left + self.size) / fx, (top + self.size) / fy)

    def load(self, data: bytes, ext: str, rng: random.Random) -> np.ndarray:
        if ext in ("jpg", "jpeg") and data[:2] == codec.JPEG_SOI:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            s, box = self.plan(w, h, rng)
            shrink = min(w, h) / s
            if shrink >= 2:  # decode at 1/2, 1/4 or 1/8 scale, still at least as large as needed
                arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(w / shrink), min_height=math.ceil(h / shrink))
            else:
                arr = simplejpeg.decode_jpeg(data, colorspace="RGB")
        else:
            arr = codec.decode(data, ext)
            h, w = arr.shape[:2]
            s, box = self.plan(w, h, rng)
        k = arr.shape[1] / w
        box = tuple(min(v * k, lim) for v, lim in zip(box, (arr.shape[1], arr.shape[0]) * 2))
        return np.asarray(Image.fromarray(arr).resize((self.size, self.size), codec.RESAMPLE, box=box))

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        return img[:, ::-1] if rng.random() < 0.5 else img


@dataclass(frozen=True)
class TenCrop(Transform):
    """AlexNet §4.1 test views: the 4 corner and the centre ``size`` crops of the central square, and
    their flips: 10xHxWx3. The network's softmax is averaged over them."""

    size: int = 227

    def sample_shape(self) -> tuple[int, ...]:
        return (10, self.size, self.size, 3)

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        top0, left0, side = _square(img)
        if side < self.size:
            raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is smaller than the {self.size}px crop")
        sq = img[top0 : top0 + side, left0 : left0 + side]
        far, mid = side - self.size, (side - self.size) // 2
        views = [sq[t : t + self.size, l : l + self.size] for t, l in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
        five = np.stack(views)
        return np.concatenate([five, torch.from_numpy(five).flip(2).numpy()])  # torch flips ~15x faster than numpy copies a flip
