"""The statistics a split's manifest carries, from a seeded sample of its images (DESIGN.md §3): the
mean RGB, per-channel std and RGB covariance eigen-decomposition (AlexNet §4.1's PCA lighting), and
the per-pixel mean image of the central squares (AlexNet §2's mean subtraction).

Each shard sums its share (``Stats``) in its own process; the writer adds the shards' shares in shard
order, so a resumed run sums exactly as a clean one.
"""

from __future__ import annotations

import numpy as np

from cnnctl.shards import codec

STATS_PIXELS = 1024  # pixels taken per image, on a fixed grid: 10M pixels estimate a 3x3 covariance well
# sum, sum of outer products and count of the sampled pixels (0-1 scale); the sum (int64, exact in
# any order) and count of the sampled images' central squares, for the per-pixel mean image
Stats = tuple[np.ndarray, np.ndarray, int, np.ndarray | None, int]
NO_STATS: Stats = (np.zeros(3), np.zeros((3, 3)), 0, None, 0)


def pixel_stats(pixels: np.ndarray, side: int | None) -> Stats:
    """A sampled image's share of the statistics; ``side``: the shorter side every image is resized
    to (None: sizes vary, no mean image)."""
    flat = pixels.reshape(-1, 1 if pixels.ndim == 2 else 3)
    px = flat[:: max(1, len(flat) // STATS_PIXELS)].astype(np.float64) / 255.0
    px = px.repeat(3, 1) if px.shape[1] == 1 else px
    square = _central_square(pixels, side)
    return px.sum(0), px.T @ px, len(px), square, int(square is not None)


def _central_square(pixels: np.ndarray, side: int | None) -> np.ndarray | None:
    """The image's central side x side square as RGB (uint8): what AlexNet's crops are cut from (§2)."""
    top, left, found = codec.central_square(*pixels.shape[:2])
    if side is None or found != side:
        return None
    square = pixels[top : top + side, left : left + side]  # a view: add_stats adds it into int64 in place
    return np.repeat(square[..., None], 3, 2) if square.ndim == 2 else square


def add_stats(a: Stats, b: Stats) -> Stats:
    """a + b; a's square sum (int64, made here from b's first square) is added into in place: a new
    1.5 MB array per image (page faults and zeroing included) cost more than its JPEG's encode."""
    squares = a[3]
    if b[3] is not None:
        squares = b[3].astype(np.int64) if squares is None else np.add(squares, b[3], out=squares)
    return a[0] + b[0], a[1] + b[1], a[2] + b[2], squares, a[4] + b[4]


def rgb_stats(partial: Stats, images: int) -> dict:
    """Mean RGB, per-channel std and the RGB covariance eigen-decomposition (AlexNet §4.1 PCA lighting)."""
    s, ss, count = partial[:3]
    mean = s / max(count, 1)
    cov = ss / max(count, 1) - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return {
        "images": images,
        "pixels": int(count),
        "scale": "0-1",
        "mean_rgb": mean.round(6).tolist(),
        "std_rgb": np.sqrt(np.clip(np.diag(cov), 0, None)).round(6).tolist(),
        "eigval": np.clip(eigval[order], 0, None).round(8).tolist(),
        "eigvec": eigvec[:, order].round(6).tolist(),  # columns are eigenvectors
    }
