"""Image encode/decode for shards: RGB baseline JPEG (simplejpeg) or PNG (Pillow)."""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

JPEG_SOI = b"\xff\xd8"


class BadImage(ValueError):
    pass


def open_image(data: bytes, name: str) -> Image.Image:
    """Decode by content, not by extension (ImageNet has a PNG named .JPEG)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise BadImage(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return img


def is_plain_rgb_jpeg(img: Image.Image) -> bool:
    """Baseline (not progressive) 8-bit RGB JPEG: its bytes can go into a shard unchanged."""
    return img.format == "JPEG" and img.mode == "RGB" and not img.info.get("progressive") and not img.info.get("progression")


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, I;16, CMYK, YCbCr ...


def resize_shorter(img: Image.Image, short: int | None) -> Image.Image:
    if short is None or min(img.size) == short:
        return img
    w, h = img.size
    scale = short / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC, reducing_gap=3.0)


def center_crop(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="420")


def encode_png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def decode(data: bytes, ext: str) -> np.ndarray:
    """Shard member bytes -> HxWx3 uint8. Grayscale PNGs are expanded to 3 channels."""
    if ext in ("jpg", "jpeg") and data[:2] == JPEG_SOI:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    arr = np.asarray(open_image(data, ext))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return arr
