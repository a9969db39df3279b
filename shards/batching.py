"""A batch in the making: samples land once, straight into an N×H×W×3 uint8 buffer, in shared memory
in a DataLoader worker (so handing it to the trainer copies nothing more), recycled through a ring
of buffers per worker when the consumer lets go of batches soon (`reader.loader(recycle=True)`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from cnnctl.shards.shard_tar import BadSample
from cnnctl.shards.transforms import Placed

PREFETCH = 4  # batches in flight per DataLoader worker, with few workers
MANY_WORKERS = 4  # from here on, 2 per worker: W x 2 batches in flight are still plenty, in half the memory
RING_SHARE = 16  # a stream's rings take at most this fraction of the shared memory: 8 ranks' in half of it
SHM = "/dev/shm"
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def prefetch(workers: int) -> int:
    """Batches in flight per DataLoader worker."""
    return PREFETCH if workers < MANY_WORKERS else 2


def ring_size(workers: int) -> int:
    """Buffers in one worker's ring: its batches in flight, plus the consumer's current batch and the
    two before it (which may all be this worker's, when the others have run out)."""
    return prefetch(workers) + 3


def shared_memory_bytes() -> int:
    """The shared memory this machine really gives: /dev/shm's size, or the container's memory limit
    where that is smaller (shared pages count against it)."""
    st = os.statvfs(SHM)
    size = st.f_blocks * st.f_frsize
    for path in CGROUP_LIMITS:
        try:
            limit = open(path).read().strip()
        except OSError:
            continue
        if limit.isdigit():
            size = min(size, int(limit))
    return size


def ring_budget() -> int:
    """Bytes of recycled batch buffers one stream may hold."""
    return shared_memory_bytes() // RING_SHARE


class Ring:
    """One DataLoader worker's recycled batch buffers, in shared memory, made once in the parent.

    Fresh shared memory costs ~110 us per 227-px image on first touch here (page faults), a third of
    a JPEG decode; so a worker cycles through these instead. That is safe only for a consumer that
    lets go of each batch soon: the DataLoader keeps at most `prefetch` batches per worker in flight,
    so a ring of that + 3 leaves the consumer the current batch and the two before it. ``turn``
    lives in the worker's copy, so a persistent worker goes on round the ring across epochs and the
    guarantee holds over an epoch's boundary too. (`ring_size`: PREFETCH is 2 with many workers.)
    """

    def __init__(self, shape: tuple, size: int):
        self.buffers = [shared_uint8(shape) for _ in range(size)]
        self.turn = 0

    def next(self, shape: tuple) -> torch.Tensor | None:
        if self.buffers[0].shape != shape:
            return None
        self.turn += 1
        return self.buffers[(self.turn - 1) % len(self.buffers)]


class Batch:
    """Samples are copied once, straight into an N×H×W×3 buffer (in shared memory in a DataLoader
    worker, so handing it to the trainer copies nothing more), taken from the worker's ``ring``
    when it has one (`loader(..., recycle=True)`; `list(loader)` must not use one).
    """

    def __init__(self, size: int, shared: bool, ring: Ring | None = None, windows: bool = False):
        self.size, self.shared, self.n = size, shared, 0
        self.buf = self.arr = self.slots = None
        self.labels: list[int] = []
        self.windows: list[tuple[int, int, bool]] | None = [] if windows else None
        self.ring = ring

    def _new(self, shape: tuple) -> torch.Tensor:
        buf = self.ring.next(shape) if self.ring else None
        if buf is not None:
            return buf
        if self.shared:
            return shared_uint8(shape)
        return torch.empty(shape, dtype=torch.uint8)

    def _start(self, shape: tuple) -> None:
        self.buf = self._new((self.size, *shape))
        self.arr, self.slots = self.buf.numpy(), self.buf.unbind(0)

    def slot(self, shape: tuple | None) -> np.ndarray | None:
        """The next sample's slot, for a windowed transform to decode into (then ``add`` takes its
        Placed); None when samples vary in shape."""
        if shape is None:
            return None
        if self.buf is None:
            self._start(shape)
        return self.arr[self.n]

    def add(self, image: np.ndarray | Placed, label: int, window: tuple[int, int, bool] | None = None) -> bool:
        """Append a sample (a Placed one is already in ``slot()``); True when the batch is full."""
        if not isinstance(image, Placed):
            self._copy(image)
        if self.windows is not None:
            self.windows.append(window)
        self.labels.append(label)
        self.n += 1
        return self.n == self.size

    def _copy(self, image: np.ndarray) -> None:
        if self.buf is None:
            self._start(image.shape)
        elif image.shape != self.arr.shape[1:]:
            raise BadSample(f"sample of shape {image.shape} in a batch of {self.arr.shape[1:]}")
        strides = image.strides
        if strides[1] < 0 and strides[0] > 0 and image.ndim == 3:  # flipped along the width, as every flip here
            # numpy copies a flipped view ~15x slower than torch flips it
            self.slots[self.n].copy_(_as_tensor(image[:, ::-1]).flip(1))
        elif min(strides) < 0:
            flips = [d for d, step in enumerate(strides) if step < 0]
            image = image[tuple(slice(None, None, -1) if d in flips else slice(None) for d in range(image.ndim))]
            self.slots[self.n].copy_(_as_tensor(image).flip(flips))
        else:
            self.arr[self.n] = image

    def take(self) -> tuple[torch.Tensor, ...]:
        images = self.buf[: self.n].movedim(-1, -3)  # N×H×W×3 -> N×3×H×W view: channels_last
        out = images, torch.tensor(self.labels, dtype=torch.int64)
        if self.windows is not None:
            out += (torch.tensor(self.windows, dtype=torch.int64).view(-1, 3),)
            self.windows = []
        self.buf = self.arr = self.slots = None
        self.labels, self.n = [], 0
        return out


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    """A tensor over the array, only ever read: a read-only array (Pillow's pixels) needs no copy."""
    if image.flags.writeable:
        return torch.from_numpy(image)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(image)


def shared_uint8(shape: tuple) -> torch.Tensor:
    """A uint8 tensor in shared memory from the start (a DataLoader worker would otherwise copy it there)."""
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
