"""Batches of still-encoded JPEGs, for data.decoder=device: a loader worker reads, shuffles and
batches the bytes and chooses each sample's window from the sample's own seed (stages.plan), exactly
as its decoders would; the decoding itself runs on the training process (shards/device_decode.py).

A ``Plan`` is one sample: its JPEG bytes, where it came from (errors name the shard and key), its
size from the header, and what to cut from it: a window's (top, left, flip) for a windowed transform
(AlexNet's crop, a centre crop), or VGG's scale jitter (S, the crop's box in source pixels, flip).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnctl.shards.transforms import Placed


@dataclass(frozen=True)
class Plan:
    data: bytes
    where: str  # "<shard url>: sample '<key>'"
    h: int
    w: int
    window: tuple[int, int, bool] | None = None  # (top, left, flip): a windowed transform's
    jitter: tuple[int, tuple[float, float, float, float], bool] | None = None  # (S, box, flip): ScaleJitter's

    def in_square(self) -> tuple[int, int, int, bool]:
        """A windowed sample's (side, top, left, flip) in its central square, as Placed.in_square."""
        return Placed(self.h, self.w, *self.window).in_square()


class EncodedBatch:
    """The images of a batch before decoding: one Plan per sample and the decoded sample's shape
    (H, W, 3). Not a tensor or a sequence: the DataLoader hands it over as it is."""

    def __init__(self, plans: list[Plan], shape: tuple[int, ...]):
        self.plans, self.shape = plans, tuple(shape)

    def __len__(self) -> int:
        return len(self.plans)

    def __repr__(self) -> str:
        return f"EncodedBatch({len(self.plans)} x {self.shape}, {sum(len(p.data) for p in self.plans)} bytes)"


class PlanBatch:
    """A batch of Plans in the making: the reader's Batch, for encoded samples (no buffer, no slot)."""

    def __init__(self, size: int, shape: tuple[int, ...], windows: bool = False):
        self.size, self.shape, self.n = size, shape, 0
        self.plans: list[Plan] = []
        self.labels: list[int] = []
        self.windows: list[tuple[int, int, bool]] | None = [] if windows else None

    def slot(self, shape: tuple | None) -> None:
        return None

    def add(self, plan: Plan, label: int, window: tuple[int, int, bool] | None = None) -> bool:
        self.plans.append(plan)
        self.labels.append(label)
        if self.windows is not None:
            self.windows.append(window)
        self.n += 1
        return self.n == self.size

    def take(self) -> tuple:
        out = EncodedBatch(self.plans, self.shape), torch.tensor(self.labels, dtype=torch.int64)
        if self.windows is not None:
            out += (torch.tensor(self.windows, dtype=torch.int64).view(-1, 3),)
            self.windows = []
        self.plans, self.labels, self.n = [], [], 0
        return out
