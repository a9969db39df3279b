"""Per-sample transforms: HxWx3 uint8 in, 3xHxW uint8 out (batches cross the DataLoader as uint8).

Each transform is a function of one sample and a seeded ``random.Random``, so the same seed gives
the same batches. Normalisation runs later, batched, on the training device.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


def _chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _center(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}px crop")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


@dataclass(frozen=True)
class CropFlip:
    """Random ``size`` crop of the image zero-padded by ``pad``, then a horizontal flip with p=0.5."""

    size: int
    pad: int = 0

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if self.pad:
            img = np.pad(img, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        h, w = img.shape[:2]
        if h < self.size or w < self.size:
            raise ValueError(f"image {w}x{h} is smaller than the {self.size}px crop")
        top, left = rng.randrange(h - self.size + 1), rng.randrange(w - self.size + 1)
        img = img[top : top + self.size, left : left + self.size]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return _chw(img)


@dataclass(frozen=True)
class CenterCrop:
    size: int

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        return _chw(_center(img, self.size))
