"""Rank-aware WebDataset loader: ShardStream chains the stages of shards/stages.py for one reader,
a (dp rank, DataLoader worker) pair, each epoch:

    shard list -> split by dp rank and worker -> tar members -> shuffle -> decode + crop -> batch

Equal steps: in training every dp rank takes exactly ``steps = samples // (dp * batch)`` batches
per epoch, with ``samples`` the manifest's count (or ``limit``). Worker w of W takes steps w, w+W, ...
(the DataLoader's round-robin). Each reader reads its own part of the split; a part that runs short
wraps around its own samples (reshuffled), and a part with samples to spare leaves them for later
epochs' different split. Skipped bad samples are made up the same way. So an uneven shard count or a
damaged shard can never make one rank stop early and hang DDP.
Evaluation (``train=False``) is an exact partition instead: every sample is read exactly once
across ranks, and ranks may take different batch counts (evaluation runs no collectives per step).

Batches are uint8 and stay so across the DataLoader; normalisation and lighting run batched on the
training device (orchestrator/device_batch.py), which this module knows nothing of.
"""

from __future__ import annotations

import multiprocessing
import random
from typing import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import manifest as mf
from shards import stages
from shards.batching import PREFETCH, RING_LIMIT, Batch, Ring
from shards.stages import BadSampleHandler, Split, Unit, raise_bad
from shards.tarwalk import BadSample, Sample
from shards.transforms import Transform

__all__ = ["BadSample", "ShardStream", "Split", "loader"]

OPEN_SIZES = 4  # evaluation of whole images: part-filled batches of distinct sizes held at once


class ShardStream(IterableDataset):
    """Batches of (uint8 N×3×H×W images, int64 labels) for one dp rank; see the module docstring.

    The images tensor is a channels_last view of an N×H×W×3 buffer (ten-crop: N×10×3×H×W).
    With ``frame`` = S (a per-pixel mean image's side), a batch also carries each sample's window,
    an int64 N×3 of (top, left, flip) in the frame of its image's central square, which must be
    S×S (else the sample is bad); the transform must be windowed. ``on_bad`` is the bad-sample
    policy (stages.raise_bad, or stages.SkipBad()); ``windowed=False`` decodes whole images even
    where the windowed decoder is built (shards/decoders.py says which is faster here).
    """

    def __init__(
        self,
        manifest_url: str,
        split: Split,
        batch_size: int,
        transform: Transform,
        *,
        train: bool = True,
        seed: int = 0,
        limit: int | None = None,
        shuffle_buffer: int = 2000,
        on_bad: BadSampleHandler = raise_bad,
        frame: int | None = None,
        windowed: bool = True,
    ):
        if frame is not None and not transform.windowed:
            raise ValueError(f"{type(transform).__name__} is not one window of the image: it has no place in a {frame}px frame")
        self.frame, self.windowed = frame, windowed
        self.manifest = mf.load(manifest_url)
        self.urls = mf.shard_urls(manifest_url, self.manifest)
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.train, self.seed, self.shuffle_buffer, self.on_bad = train, seed, shuffle_buffer, on_bad
        total = self.manifest["num_samples"] if limit is None else min(limit, self.manifest["num_samples"])
        self.samples_per_rank = total // split.dp_size
        self.steps = self.samples_per_rank // batch_size if train else -(-self.samples_per_rank // batch_size)
        # Shared with DataLoader workers that persist across epochs: set_epoch reaches them.
        self._epoch = mp_value()
        # Shared-memory batch buffers, one ring per DataLoader worker, made once by loader(recycle=True)
        # in this process: workers inherit and reuse them (see batching.Ring).
        self.rings: list[Ring] | None = None
        self._loaders: dict[tuple, DataLoader] = {}  # loader(recycle=True) keeps its workers across epochs

    def __len__(self) -> int:
        return self.steps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaders": {}}  # a worker started by spawn gets no DataLoaders

    def close(self) -> None:
        """End the workers that loader(recycle=True) keeps across epochs. The stream and its
        DataLoaders refer to each other, so without this they wait for Python's cycle collector
        (a reused Tune trial process would carry them into its next trial)."""
        self._loaders.clear()  # the last reference to each DataLoader: its iterator shuts its workers down

    @property
    def bad_samples(self) -> int:
        """Bad samples skipped so far (all epochs, all workers) under a counting policy (SkipBad)."""
        return getattr(self.on_bad, "count", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Before iterating the epoch's loader: persistent workers read it when the iteration starts."""
        self._epoch.value = epoch

    def _unit(self) -> Unit:
        info = get_worker_info()
        return Unit.of(self.split, info.id, info.num_workers) if info else Unit.of(self.split, 0, 1)

    def _passes(self, epoch: int, unit: Unit, rng: random.Random, buffer: int, wanted: Callable[[], int]) -> Iterator[Sample]:
        """Stages 1-4. Training: the part, pass after pass, each pass shuffled on its own through a
        buffer of ``buffer`` samples, so no pass is read before the last one is used up. A later pass
        (a part that runs short of the epoch's steps) fills its buffer only as far as the samples
        still ``wanted()``: it is there for a batch or so, not for a whole part. Evaluation: the
        part, once, in order."""
        urls, mine = stages.split(stages.shard_order(self.urls, self.seed, epoch, shuffle=self.train), unit)
        expected = {u: sh["count"] for u, sh in zip(self.urls, self.manifest["shards"])}
        first = True
        while True:
            count = 0
            samples = stages.read(urls, mine, expected, self.on_bad)
            size = min(buffer, max(wanted(), 1)) if not first else buffer
            if self.train and size > 1:
                samples = stages.shuffle(samples, size, rng)
            for sample in samples:
                count += 1
                yield sample
            if not self.train or count == 0:
                return
            first = False

    def __iter__(self):
        unit = self._unit()
        epoch = self.epoch  # once: a persistent worker's next epoch may be set while this one drains
        rng = random.Random(f"{self.seed}/{epoch}/{unit.index}")
        # The DataLoader takes batches from workers in turn, so worker w owns steps w, w+W, ...
        my_steps = len(range(unit.worker, self.steps, unit.workers))
        shared = get_worker_info() is not None
        ring = self.rings[unit.worker] if shared and self.rings and len(self.rings) == unit.workers else None
        batch, done, bad_run = Batch(self.batch_size, shared=shared, ring=ring, windows=self.frame is not None), 0, 0
        shape = self.transform.sample_shape()
        # A buffer no larger than this reader's part: a larger one would hold nothing more.
        buffer = min(self.shuffle_buffer, max(self.samples_per_rank // unit.workers, 1))
        stream = self._passes(epoch, unit, rng, buffer, lambda: (my_steps - done) * self.batch_size - batch.n)
        # Evaluation of whole images, whose sizes vary: a batch per size (ImageNet's are mostly 4:3),
        # each handed on when full; at most OPEN_SIZES part-filled at once (a new size hands on the
        # oldest), the rest at the end. Every sample is still read exactly once.
        by_size = {} if shape is None and not self.train else None
        for raw in stream:
            if self.train and done == my_steps:
                break
            try:  # stage 5: decode + crop, straight into the batch's next slot where it can
                image, label = stages.decode(raw, self.transform, rng, batch.slot(shape), self.windowed)
                window = None if self.frame is None else stages.in_frame(raw, image, self.frame)
            except BadSample as exc:
                self.on_bad(exc)  # training: the endless stream makes up for it, so steps stay equal
                bad_run += 1
                if bad_run > self.samples_per_rank + self.shuffle_buffer:  # a whole pass and more, all bad
                    break
                continue
            bad_run = 0
            if by_size is not None:
                if image.shape not in by_size and len(by_size) == OPEN_SIZES:
                    yield by_size.pop(next(iter(by_size))).take()
                batch = by_size.setdefault(image.shape, Batch(self.batch_size, shared=shared))
            if batch.add(image, label, window):  # stage 6: batch
                yield batch.take()
                done += 1
                if by_size is not None:
                    del by_size[image.shape]
        if not self.train:
            yield from (b.take() for b in (by_size.values() if by_size is not None else [batch]) if b.n)
        elif done < my_steps:
            raise BadSample(f"dp rank {self.split.dp_rank}: its shards hold no readable samples")


def mp_value(initial: int = 0):
    """An int64 in shared memory, visible to DataLoader workers forked or spawned later."""
    return multiprocessing.get_context().Value("q", initial, lock=False)


def loader(stream: ShardStream, workers: int = 0, pin_memory: bool = False, recycle: bool = False) -> DataLoader:
    """Wrap a ShardStream: batching already happened inside it, so batch_size=None.

    ``recycle``, for a consumer that keeps no more than the current batch and the two before it (a
    training or evaluation loop that calls this every epoch): workers reuse their shared-memory batch
    buffers (see batching.Ring), and they persist across epochs: the stream keeps this DataLoader and
    hands it out again, and set_epoch reaches its workers through shared memory. Starting W workers
    costs a fork, and their first touch of the inherited buffers, every epoch otherwise.
    """
    key = (workers, bool(pin_memory))
    if recycle and key in stream._loaders:
        return stream._loaders[key]
    shape = stream.transform.sample_shape()
    ring_bytes = workers * (PREFETCH + 3) * stream.batch_size * int(np.prod(shape or (0,)))
    if recycle and workers and 0 < ring_bytes <= RING_LIMIT:
        stream.rings = [Ring((stream.batch_size, *shape), PREFETCH + 3) for _ in range(workers)]
    elif not recycle:
        stream.rings = None
    persistent = bool(recycle and workers)
    data = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=persistent, prefetch_factor=PREFETCH if workers else None)
    if persistent:
        stream._loaders[key] = data
    return data
