"""Image encode/decode for shards: RGB baseline JPEG (simplejpeg) or PNG (Pillow).

``transcode`` turns one source file's bytes into the bytes a shard holds. JPEGs take a fast path:
simplejpeg decodes straight to the DCT-scaled size nearest above the target (libjpeg-turbo skips the
work for the discarded resolution), Pillow resizes the rest of the way, simplejpeg encodes. Anything
else (PNG, CMYK, a PNG named .JPEG, a JPEG simplejpeg rejects) goes through Pillow, so Pillow's
verdict decides what is corrupt. ``LOAD_TRUNCATED_IMAGES`` is never set: a truncated file is an error.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

try:  # built from shards/_jpegcrop.c where libjpeg-turbo's headers are found (pyproject.toml)
    from cnnctl.shards._jpegcrop import decode_into as _decode_into
except ImportError:  # then transforms decode whole images and crop after: the same pixels, more CPU
    _decode_into = None

# Whether decode_window can run: a crop transform then decodes only its window, into the batch.
WINDOWED = _decode_into is not None

JPEG_SOI = b"\xff\xd8"
IMAGE_EXTS = ("jpg", "jpeg", "png")  # image members of a shard, and image files a source may hold (any case)
_SIGNATURES = ((JPEG_SOI, "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))
# Antialiased bilinear, as torchvision's Resize; bicubic costs ~30% more for no training benefit.
RESAMPLE = Image.BILINEAR
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline / extended sequential Huffman: kept as they are
# The one pixel limit, for the writer and the reader alike: an image whose header declares more is
# refused before any decoding (a 1.6 MB JPEG can declare 12000 x 12000, 411 MiB of RGB). Pillow's
# default MAX_IMAGE_PIXELS (~89.5 MP, ~256 MiB of RGB), named here so no global setting changes it.
MAX_PIXELS = 89_478_485
# The only formats Pillow is asked to parse: sources hold JPEGs (ImageNet's CMYK ones too; Pillow reads
# a JPEG with an MPO index through its JPEG plugin) and PNGs (one ImageNet PNG is named .JPEG). Every
# other plugin stays unasked: EPS would run Ghostscript.
FORMATS = ("JPEG", "PNG")


class BadImage(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """What a shard image is: shorter side (None keeps the size), square crop, format, JPEG quality."""

    short: int | None = 256
    crop: bool = False
    fmt: str = "jpg"  # jpg | png
    quality: int = 90


@dataclass
class Encoded:
    data: bytes
    orig_size: tuple[int, int]  # (w, h) of the source
    pixels: np.ndarray  # the stored pixels before encoding, HxW or HxWx3 uint8 (for statistics)


def output_size(w: int, h: int, short: int | None) -> tuple[int, int]:
    if short is None or min(w, h) == short:
        return w, h
    scale = short / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _check_pixels(w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise BadImage(f"decompression bomb: {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS}")


def open_image(data: bytes, name: str = "") -> Image.Image:
    """Decode by content, not by extension (ImageNet has a PNG named .JPEG), JPEG and PNG only, and
    nothing over MAX_PIXELS: the size is checked from the header, before the pixels are decoded."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(*img.size)
            img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        kind = next((k for sig, k in _SIGNATURES if data.startswith(sig)), None)
        if kind in FORMATS:
            raise BadImage(f"corrupt {kind} (Pillow cannot parse it)") from None
        if kind:
            raise BadImage(f"not a JPEG or PNG (a {kind})") from None
        raise BadImage("not an image (content matches no known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt data
        reason = "truncated" if "truncated" in str(exc) else "corrupt"
        raise BadImage(f"{reason} image ({type(exc).__name__}: {exc})") from None
    return img


def _jpeg_sof(data: bytes) -> int | None:
    """The frame marker (0xC0 baseline, 0xC2 progressive, ...) from walking the JPEG segments."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits rather than clip
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8))
    return img.convert("RGB")  # L, CMYK, YCbCr ...


def resize_shorter(img: Image.Image, short: int | None) -> Image.Image:
    size = output_size(*img.size, short)
    return img if size == img.size else img.resize(size, RESAMPLE)


def central_square(h: int, w: int) -> tuple[int, int, int]:
    """(top, left, side) of an h x w image's central square: what AlexNet's crops are cut from (§2),
    the writer's --center-crop keeps and the per-pixel mean image averages."""
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


def center_crop(img: Image.Image) -> Image.Image:
    top, left, side = central_square(img.height, img.width)
    return img.crop((left, top, left + side, top + side))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="420")


def encode_png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _finish(img: Image.Image, target: Target) -> tuple[bytes, np.ndarray]:
    """Pillow image -> shard bytes: colour fix, resize, crop, encode."""
    if target.fmt == "jpg" or img.mode not in ("L", "RGB"):
        img = to_rgb(img)  # png keeps L (Fashion-MNIST); the reader expands it
    img = resize_shorter(img, target.short)
    if target.crop:
        img = center_crop(img)
    arr = np.asarray(img)
    data = encode_jpeg(arr, target.quality) if target.fmt == "jpg" else encode_png(img)
    return data, arr


def _fast_jpeg(data: bytes, target: Target) -> Encoded:
    h, w, space, _ = simplejpeg.decode_jpeg_header(data)
    _check_pixels(w, h)
    if space not in ("YCbCr", "Gray"):
        raise ValueError(f"{space} JPEG")  # CMYK/YCCK: Pillow knows Adobe's inverted CMYK
    tw, th = output_size(w, h, target.short)
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=tw, min_height=th)
    if (tw, th) == (w, h) and (not target.crop or w == h) and space == "YCbCr" and _jpeg_sof(data) in _SEQUENTIAL_SOF:
        return Encoded(data, (w, h), arr)  # nothing to change: keep the original bytes
    if arr.shape[:2] != (th, tw):
        arr = np.asarray(Image.fromarray(arr).resize((tw, th), RESAMPLE))
    if target.crop:
        side = min(tw, th)
        top, left = (th - side) // 2, (tw - side) // 2
        arr = arr[top : top + side, left : left + side]
    return Encoded(encode_jpeg(arr, target.quality), (w, h), arr)


def transcode(data: bytes, target: Target) -> Encoded:
    """Source file bytes -> shard image bytes. Raises BadImage with a reason for unusable input."""
    if data[:2] == JPEG_SOI and target.fmt == "jpg":
        try:
            return _fast_jpeg(data, target)
        except BadImage:
            raise
        except ValueError:
            pass  # CMYK, or simplejpeg refused it: Pillow decides whether it is really bad
    img = open_image(data)
    out, arr = _finish(img, target)
    return Encoded(out, img.size, arr)


def transcode_pixels(pixels: np.ndarray, target: Target) -> Encoded:
    """In-memory pixels (Fashion-MNIST) -> shard image bytes."""
    img = Image.fromarray(pixels)
    out, arr = _finish(img, target)
    return Encoded(out, img.size, arr)


def is_jpeg(data: bytes, ext: str) -> bool:
    return ext in ("jpg", "jpeg") and data[:2] == JPEG_SOI


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the JPEG header; BadImage over MAX_PIXELS. Every decode of a shard's
    JPEG asks this first (decode, the transforms' windows), so none starts on a decompression bomb."""
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    _check_pixels(w, h)
    return h, w


def decode_window(data: bytes, out: np.ndarray, top: int, left: int, flip: bool) -> None:
    """Decode the window of JPEG ``data`` that ``out`` (HxWx3 uint8, C-contiguous) covers, its top
    left corner at (top, left), into ``out``, mirrored left-right if ``flip``. Only the window's
    rows and iMCU columns are decoded (libjpeg-turbo's skip and crop of scanlines); the pixels equal
    a whole decode's (tests/shards/test_jpegcrop.py). Needs WINDOWED; raises ValueError for corrupt
    data or a window outside the image."""
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous HxWx3 uint8 array, not {out.dtype} {out.shape} (strides "
                         f"{out.strides})")
    h, w = out.shape[:2]
    _decode_into(data, out, top, left, h, w, flip)


def decode(data: bytes, ext: str) -> np.ndarray:
    """Shard member bytes -> HxWx3 uint8. Grayscale PNGs are expanded to 3 channels."""
    if is_jpeg(data, ext):
        jpeg_size(data)  # the pixel limit, from the header
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    # writable (asarray of a Pillow image is not): torch reads it without a copy warning
    arr = np.array(open_image(data, ext))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return arr
