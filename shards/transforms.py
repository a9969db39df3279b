"""Per-sample transforms: shard bytes in, an HxWx3 uint8 array out (batches cross the DataLoader as uint8).

A transform has two steps, both given the sample's seeded ``random.Random`` so the same seed gives the
same batches:

- ``load(data, ext, rng)``: the shard member's bytes -> pixels. The default decodes the whole image;
  a transform that only needs part of the image at another scale (VGG's scale jitter) crops and
  scales while decoding instead (libjpeg-turbo's DCT scaling, then one resize of the crop window).
- ``__call__(img, rng)``: pixels -> the sample, HxWx3 (ten-crop: 10xHxWx3). It may return a strided
  view (a crop, a flip): the reader copies it once, straight into the batch buffer.

A *windowed* transform, whose sample is one window of the image, mirrored or not (AlexNet's crop, a
centre crop), says which in ``window(h, w, rng)``, drawing from ``rng`` exactly as ``__call__`` does.
The reader then calls ``load_into`` instead, which decodes only that window of a JPEG, straight into
the batch buffer (codec.decode_window): no whole decode, no crop copy, no flip pass. It returns
where the window lay (``Placed``), which a per-pixel mean image needs. Both ways give the same
pixels from the same draws, so a seed gives the same batches whichever runs.

Samples stay HWC: a batch N×H×W×3 is already the channels_last layout the model runs in, so the
reader hands it on as an N×3×H×W view and no transpose is ever paid per sample. Normalisation,
mean subtraction and PCA lighting run later, batched, on the training device (orchestrator/device_batch.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image

from cnnctl.shards import codec


def _square(h: int, w: int, size: int) -> tuple[int, int, int]:
    """(top, left, side) of the central square, at least ``size``: AlexNet's crops come from the
    256x256 centre (§2)."""
    _check(h, w, size)
    return codec.central_square(h, w)


def _check(h: int, w: int, size: int) -> None:
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size}px crop")


def _window(img: np.ndarray, size: int, top: int, left: int, flip: bool) -> np.ndarray:
    img = img[top : top + size, left : left + size]
    return img[:, ::-1] if flip else img


class Transform:
    """Base: decode the whole image, return it unchanged (dense evaluation takes the full image)."""

    def load(self, data: bytes, ext: str, rng: random.Random | None = None, windowed: bool = True) -> np.ndarray:
        return codec.decode(data, ext)

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        return img

    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of every sample it returns, or None when it varies (full images)."""
        size = getattr(self, "size", None)
        return (size, size, 3) if size else None

    # A windowed transform's sample is one sample_shape() window of the image, mirrored or not:
    # window(h, w, rng) -> (top, left, flip) says which, drawing from rng as __call__ does.
    windowed = False

    def load_into(self, data: bytes, ext: str, rng: random.Random | None, out: np.ndarray,
                  windowed: bool = True) -> Placed:
        """A windowed transform's sample, straight into ``out`` (a batch slot). A JPEG decodes only
        its window when the windowed decoder is built; anything else decodes whole and the window
        is copied. Either way a JPEG's window is drawn from its header before any decoding, so a
        corrupt image leaves ``rng`` where the other way leaves it: the same pixels, and the same
        batches after it, whichever way runs. ``windowed=False`` decodes whole even where the
        windowed decoder is built (where that is faster: shards/decoders.py)."""
        jpeg = codec.is_jpeg(data, ext)
        if jpeg:
            h, w = codec.jpeg_size(data)
            top, left, flip = self.window(h, w, rng)
        if jpeg and windowed and codec.WINDOWED:
            codec.decode_window(data, out, top, left, flip)
        else:
            img = self.load(data, ext, rng, windowed=False)
            if not jpeg:
                h, w = img.shape[:2]
                top, left, flip = self.window(h, w, rng)
            crop = torch.from_numpy(img[top : top + out.shape[0], left : left + out.shape[1]])
            torch.from_numpy(out).copy_(crop.flip(1) if flip else crop)  # torch flips ~15x faster than numpy
        return Placed(h, w, top, left, flip)


@dataclass(frozen=True)
class Placed:
    """Where a windowed sample came from: the image's size, the window's top left corner, and
    whether it was mirrored."""

    h: int
    w: int
    top: int
    left: int
    flip: bool

    def in_square(self) -> tuple[int, int, int, bool]:
        """(side, top, left, flip) with the corner in the frame of the image's central square."""
        t0, l0, side = _square(self.h, self.w, 1)
        return side, self.top - t0, self.left - l0, self.flip


Full = Transform


@dataclass(frozen=True)
class CropFlip(Transform):
    """Random ``size`` crop of the image zero-padded by ``pad``, then a horizontal flip with p=0.5."""

    size: int
    pad: int = 0

    def _draw(self, h: int, w: int, rng: random.Random) -> tuple[int, int, bool]:
        _check(h, w, self.size)
        return rng.randrange(h - self.size + 1), rng.randrange(w - self.size + 1), rng.random() < 0.5

    @property
    def windowed(self) -> bool:
        return self.pad == 0  # a padded crop is not a window of the image

    def window(self, h: int, w: int, rng: random.Random) -> tuple[int, int, bool]:
        return self._draw(h, w, rng)

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        if self.pad:
            img = np.pad(img, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        return _window(img, self.size, *self._draw(*img.shape[:2], rng))


@dataclass(frozen=True)
class CenterCrop(Transform):
    size: int

    windowed = True

    def window(self, h: int, w: int, rng: random.Random | None = None) -> tuple[int, int, bool]:
        _check(h, w, self.size)
        return (h - self.size) // 2, (w - self.size) // 2, False

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        return _window(img, self.size, *self.window(*img.shape[:2]))


@dataclass(frozen=True)
class AlexNetCrop(Transform):
    """AlexNet §4.1: a random ``size`` (227) crop of the central square (256x256), flipped with p=0.5.

    PCA lighting is not here: it is one RGB offset per image, added batched on the device.
    """

    size: int = 227

    windowed = True

    def window(self, h: int, w: int, rng: random.Random) -> tuple[int, int, bool]:
        top0, left0, side = _square(h, w, self.size)
        top, left = top0 + rng.randrange(side - self.size + 1), left0 + rng.randrange(side - self.size + 1)
        return top, left, rng.random() < 0.5

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        return _window(img, self.size, *self.window(*img.shape[:2], rng))


@dataclass(frozen=True)
class ScaleJitter(Transform):
    """VGG §3.1 scale jitter: isotropically rescale so the shorter side is S ~ U{scale_min..scale_max},
    take a random ``size`` (224) crop and flip it with p=0.5 (the RGB colour shift runs on the device).

    Only the crop window is ever resampled: the window is mapped back to source pixels and resized
    once (Pillow's ``resize(box=...)``) from the pixels under the filter's support alone, and only
    those are decoded (codec.decode_window; the whole image where the windowed decoder is not
    built, then the same pixels are cut from it, so both give the same sample). A JPEG that S
    shrinks by 2x or more is decoded whole, DCT-scaled by libjpeg-turbo. Rescaling the whole image
    to S=512 first would cost ~5x more.
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

    def support(self, box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the source pixels the resize of ``box`` to size x size reads, with a
        pixel to spare: bilinear reads max(1, box side / size) pixels either side of each centre."""
        left, t, r, b = box
        m = math.ceil(max(1.0, (r - left) / self.size, (b - t) / self.size)) + 1
        return (max(0, math.floor(left) - m), max(0, math.floor(t) - m),
                min(w, math.ceil(r) + m), min(h, math.ceil(b) + m))

    def _resize(self, pixels: np.ndarray, box: tuple[float, ...], x0: int, y0: int) -> np.ndarray:
        """Resize ``box`` (in the frame where ``pixels`` starts at (x0, y0)) to size x size."""
        box = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
        return np.asarray(Image.fromarray(pixels).resize((self.size, self.size), codec.RESAMPLE, box=box))

    def load(self, data: bytes, ext: str, rng: random.Random, windowed: bool = True) -> np.ndarray:
        if codec.is_jpeg(data, ext):
            h, w = codec.jpeg_size(data)
            return self.render(data, w, h, *self.plan(w, h, rng), windowed=windowed)
        arr = codec.decode(data, ext)
        h, w = arr.shape[:2]
        return self.resample(arr, w, *self.plan(w, h, rng)[1:])

    def render(self, data: bytes, w: int, h: int, s: int, box: tuple[float, float, float, float],
               windowed: bool = True) -> np.ndarray:
        """A w x h JPEG's crop ``box`` at scale ``s`` (from ``plan``), size x size, unflipped: what
        ``load`` returns, decoding no more than it must (data.decoder=device runs it apart from ``plan``)."""
        shrink = min(w, h) / s
        if shrink >= 2:  # decode at 1/2, 1/4 or 1/8 scale, still at least as large as needed
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(w / shrink),
                                         min_height=math.ceil(h / shrink))
        elif windowed and codec.WINDOWED:
            x0, y0, x1, y1 = self.support(box, w, h)
            window = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            codec.decode_window(data, window, y0, x0, False)
            return self._resize(window, box, x0, y0)
        else:
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB")
        return self.resample(arr, w, box)

    def resample(self, arr: np.ndarray, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
        """``box`` (in the frame of a ``w`` px wide image) of ``arr``, that image at any scale, resized."""
        k = arr.shape[1] / w
        box = tuple(min(v * k, lim) for v, lim in zip(box, (arr.shape[1], arr.shape[0]) * 2))
        x0, y0, x1, y1 = self.support(box, arr.shape[1], arr.shape[0])
        return self._resize(arr[y0:y1, x0:x1], box, x0, y0)

    def __call__(self, img: np.ndarray, rng: random.Random) -> np.ndarray:
        return img[:, ::-1] if rng.random() < 0.5 else img


@dataclass(frozen=True)
class TenCrop(Transform):
    """AlexNet §4.1 test views: the 4 corner and the centre ``size`` crops of the central square, and
    their flips: 10xHxWx3. The network's softmax is averaged over them. ``side``: the central square
    every image must have (a per-pixel mean image's side: the views subtract its patches)."""

    size: int = 227
    side: int | None = None

    def sample_shape(self) -> tuple[int, ...]:
        return (10, self.size, self.size, 3)

    def windows(self, side: int) -> list[tuple[int, int, bool]]:
        """(top, left, flip) of the 10 views in the frame of a side x side central square."""
        far, mid = side - self.size, (side - self.size) // 2
        five = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
        return [(top, left, False) for top, left in five] + [(top, left, True) for top, left in five]

    def __call__(self, img: np.ndarray, rng: random.Random | None = None) -> np.ndarray:
        top0, left0, side = _square(*img.shape[:2], self.size)
        if self.side is not None and side != self.side:
            raise ValueError(f"image {img.shape[1]}x{img.shape[0]}: its central square is {side}px, not the mean "
                             f"image's {self.side}px")
        sq = img[top0 : top0 + side, left0 : left0 + side]
        five = np.stack([sq[top : top + self.size, left : left + self.size]
                         for top, left, _ in self.windows(side)[:5]])
        # torch flips ~15x faster than numpy copies a flip
        return np.concatenate([five, torch.from_numpy(five).flip(2).numpy()])
