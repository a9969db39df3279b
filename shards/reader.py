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

import logging
import multiprocessing
import random
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cnnctl.shards import manifest as mf
from cnnctl.shards import dealt, stages
from cnnctl.shards.batching import RING_SHARE, Batch, Ring, prefetch, ring_budget, ring_size
from cnnctl.shards.device_decode import DeviceDecode
from cnnctl.shards.encoded import PlanBatch
from cnnctl.shards.position import DIGEST_MOD, Progress, ReaderPosition, key_hash, sample_seed
from cnnctl.shards.shard_tar import BadSample, Sample
from cnnctl.shards.stages import BadSampleHandler, Split, Unit, raise_bad
from cnnctl.shards.transforms import Transform

log = logging.getLogger(__name__)

__all__ = ["BadSample", "ShardStream", "Split", "loader"]

OPEN_SIZES = 4  # evaluation of whole images: part-filled batches of distinct sizes held at once


class ShardStream(IterableDataset):
    """Batches of (uint8 N×3×H×W images, int64 labels) for one dp rank; see the module docstring.

    The images tensor is a channels_last view of an N×H×W×3 buffer (ten-crop: N×10×3×H×W).
    With ``frame`` = S (a per-pixel mean image's side), a batch also carries each sample's window,
    an int64 N×3 of (top, left, flip) in the frame of its image's central square, which must be
    S×S (else the sample is bad); the transform must be windowed. ``num_classes``: labels at or
    above it are bad samples (default: the manifest's classes). ``on_bad`` is the bad-sample
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
        num_classes: int | None = None,
        accumulate: int = 1,
    ):
        if frame is not None and not transform.windowed:
            raise ValueError(f"{type(transform).__name__} is not one window of the image: it has no place in a "
                             f"{frame}px frame")
        self.frame, self.windowed = frame, windowed
        self.on_device, self.device_decode = False, None  # data.decoder=device: `decode_on_device`
        self.manifest = mf.load(manifest_url)
        self.urls = mf.shard_urls(manifest_url, self.manifest)
        # Labels must index the model's outputs: the model's class count where the caller knows it,
        # else the manifest's. One outside [0, num_classes) is a bad sample (stages.label).
        self.num_classes = num_classes or len(self.manifest["classes"])
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.train, self.seed, self.shuffle_buffer, self.on_bad = train, seed, shuffle_buffer, on_bad
        total = self.manifest["num_samples"] if limit is None else min(limit, self.manifest["num_samples"])
        self.samples, self.samples_per_rank = total, total // split.dp_size
        # training: whole optimiser steps of ``accumulate`` batches each (redistribute.py)
        self.steps = (self.samples_per_rank // (batch_size * accumulate) * accumulate if train
                      else -(-self.samples_per_rank // batch_size))
        self.deal: dict | None = None  # the epoch's work after a resize (shards/dealt.py); None: its own part
        self.dealt_epoch = -1  # the epoch ``deal`` is of
        # Shared with DataLoader workers that persist across epochs: set_epoch reaches them.
        self._epoch = mp_value()
        self.progress = Progress()  # where each reader stands in the epoch (position.py), shared likewise
        self.steps_done = 0  # batches of the epoch its consumer has taken (`counted`): what `state_dict` saves
        self.workers = 1  # readers per rank: the DataLoader workers of the last `loader` (one in-process)
        # Shared-memory batch buffers, one ring per DataLoader worker, made once by loader(recycle=True)
        # in this process: workers inherit and reuse them (see batching.Ring).
        self.rings: list[Ring] | None = None
        self._loaders: dict[tuple, DataLoader] = {}  # loader(recycle=True) keeps its workers across epochs

    def __len__(self) -> int:
        return self.steps

    def __getstate__(self) -> dict:
        # a worker started by spawn gets no DataLoaders, nor the consumer's decoder
        return {**self.__dict__, "_loaders": {}, "device_decode": None}

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

    def set_position(self, positions: list[ReaderPosition] | None, steps_done: int = 0, deal: dict | None = None):
        """Before iterating a training epoch: start it after ``steps_done`` of its steps, each
        worker at its ``positions`` entry (from `position`, saved in a checkpoint); None starts the
        epoch at its beginning. The worker count must be the one the positions were taken with.
        ``deal``: the readers' work in an epoch resized mid-way (shards/dealt.py)."""
        if positions is not None and len(positions) != self.workers:
            raise ValueError(f"positions of {len(positions)} loader workers, this stream has {self.workers}")
        self.progress.begin(positions, steps_done % self.workers if positions else 0)
        self.steps_done = steps_done if positions else 0
        self.deal = deal if positions else None
        self.dealt_epoch = self.epoch  # persistent loader workers keep the deal they started with: this epoch's only

    def position(self, steps_done: int) -> list[ReaderPosition]:
        """Each worker's position after the epoch's first ``steps_done`` batches (those the trainer
        has trained on), by worker as the epoch began: what `set_position` resumes from."""
        return [self.progress.at(w, len(range(w, steps_done, self.workers))) for w in range(self.workers)]

    def decode_on_device(self, device: str = "cpu") -> None:
        """data.decoder=device: workers hand on each batch's JPEG bytes and windows, which `counted`
        (or `decoded`) decodes on this process, onto ``device``; the batches are the same."""
        self.on_device, self.device_decode = True, DeviceDecode(self.transform, self.on_bad, device)

    def decoded(self, batch: tuple) -> tuple:
        """A loader's batch as the worker-side decoders make it (under data.decoder=device, decoded here)."""
        return batch if self.device_decode is None else self.device_decode.batch(batch)

    def counted(self, batches: Iterator) -> Iterator:
        """The epoch's batches as its consumer takes them, each one counted in ``steps_done``: the
        loader's workers run ahead of the consumer, so only its side knows what was trained on.
        Under data.decoder=device the batches are decoded here, on the consumer's process."""
        for batch in batches:
            self.steps_done += 1
            yield self.decoded(batch)

    def state_dict(self) -> dict:
        """Where a training epoch stands after the batches its consumer has taken (`counted`): the
        epoch, its steps done, and each loader worker's reader position (lists of ints)."""
        readers = [p.as_list() for p in self.position(self.steps_done)]
        deal = {"deal": self.deal} if self.deal else {}
        return {"epoch": self.epoch, "steps_done": self.steps_done, "readers": readers, **deal}

    def load_state_dict(self, state_dict: dict) -> None:
        """Before iterating the epoch's loader (after `loader`, which sets the worker count): the
        epoch resumes where `state_dict` found it."""
        self.set_epoch(state_dict["epoch"])
        self.set_position([ReaderPosition(*r) for r in state_dict["readers"]], state_dict["steps_done"],
                          state_dict.get("deal"))

    def _unit(self) -> Unit:
        info = get_worker_info()
        if info is None:
            return Unit.of(self.split, 0, 1)
        return Unit.of(self.split, (info.id + self.progress.rotation) % info.num_workers, info.num_workers)

    def passes(self, epoch: int, unit: Unit, rng: random.Random, buffer: int, wanted: int,
               start: int) -> Iterator[Sample | None]:
        """Stages 1-4 from item ``start`` on. Training: the part, pass after pass, each pass shuffled
        on its own through a buffer of ``buffer`` items, so no pass is read before the last one is
        used up. A later pass (a part that runs short of the epoch's ``wanted`` items) fills its
        buffer only as far as the items still wanted: it is there for a batch or so, not for a whole
        part. Evaluation: the part, once, in order. Items before ``start`` are replayed, not read
        (positions.py)."""
        urls, mine = stages.split(stages.shard_order(self.urls, self.seed, epoch, shuffle=self.train), unit)
        expected = {u: sh["count"] for u, sh in zip(self.urls, self.manifest["shards"])}
        length = stages.pass_length(urls, mine, expected)
        ordinal = 0
        while length:
            size = buffer if ordinal == 0 else min(buffer, max(wanted - ordinal, 1))
            size = size if self.train else 1
            skip = min(max(start - ordinal, 0), length)
            held = stages.replay(length, size, rng, skip) if size > 1 else []
            if skip < length:
                taken = skip + len(held)  # positions gone into the shuffle before the resume
                keep = set(held)
                items = stages.read(urls, mine, expected, self.on_bad,
                                    wanted=(lambda p: p >= taken or p in keep) if skip else None)
                got = {p: item for p, item in zip(range(taken), items) if p in keep}
                buf = [got[p] for p in held]
                yield from stages.shuffle(items, size, rng, buf) if size > 1 else items
            ordinal += length
            if not self.train:
                return

    def __iter__(self):
        unit = self._unit()
        epoch = self.epoch  # once: a persistent worker's next epoch may be set while this one drains
        rng = random.Random(f"{self.seed}/{epoch}/{unit.index}")  # the shuffle's; each sample has its own
        sample_rng = random.Random()
        # The DataLoader takes batches from workers in turn, so worker w owns steps w, w+W, ...
        my_steps = len(range(unit.worker, self.steps, unit.workers))
        at = self.progress.start(unit.worker) if self.train else ReaderPosition()
        info = get_worker_info()
        shared = info is not None
        ring = self.rings[info.id] if shared and self.rings and len(self.rings) == unit.workers else None
        shape = self.transform.sample_shape()
        batch, bad_run = (PlanBatch(self.batch_size, shape, windows=self.frame is not None) if self.on_device else
                          Batch(self.batch_size, shared=shared, ring=ring, windows=self.frame is not None)), 0
        # A buffer no larger than this reader's part: a larger one would hold nothing more.
        buffer = min(self.shuffle_buffer, max(self.samples_per_rank // unit.workers, 1))
        if self.deal is None or self.dealt_epoch != epoch:
            own = self.passes(epoch, unit, rng, buffer, my_steps * self.batch_size, at.ordinal)
            stream = ((raw, sample_seed(self.seed, epoch, unit.index, k)) for k, raw in enumerate(own, at.ordinal))
        else:  # an epoch resized mid-way: this reader's dealt pieces of the source readers' streams
            stream = dealt.items(self, epoch, self.deal, unit.index, at.ordinal)
        ordinal, keys, digest = at.ordinal, 0, 0
        # Evaluation of whole images, whose sizes vary: a batch per size (ImageNet's are mostly 4:3),
        # each handed on when full; at most OPEN_SIZES part-filled at once (a new size hands on the
        # oldest), the rest at the end. Every sample is still read exactly once.
        by_size = {} if shape is None and not self.train else None
        for raw, seed in stream:
            if self.train and at.batches == my_steps:
                break
            ordinal += 1
            try:  # stage 5: decode + crop, straight into the batch's next slot where it can
                if raw is None:  # a hole: its shard came up short, and the policy has heard of it
                    raise BadSample("")
                sample_rng.seed(seed)
                # data.decoder=device: the window only, the consumer's process decodes (`counted`)
                image, label = (stages.plan(raw, self.transform, sample_rng, self.num_classes) if self.on_device
                                else stages.decode(raw, self.transform, sample_rng, batch.slot(shape), self.windowed,
                                                   self.num_classes))
                window = None if self.frame is None else stages.in_frame(raw, image, self.frame)
            except BadSample as exc:
                if raw is not None:
                    self.on_bad(exc)  # training: the endless stream makes up for it, so steps stay equal
                bad_run += 1
                if bad_run > self.samples_per_rank + self.shuffle_buffer:  # a whole pass and more, all bad
                    break
                continue
            bad_run = 0
            keys, digest = keys + 1, digest + key_hash(raw["__key__"])
            if by_size is not None:
                if image.shape not in by_size and len(by_size) == OPEN_SIZES:
                    yield by_size.pop(next(iter(by_size))).take()
                batch = by_size.setdefault(image.shape, Batch(self.batch_size, shared=shared))
            if batch.add(image, label, window):  # stage 6: batch
                if self.train:
                    at = ReaderPosition(ordinal, at.batches + 1, at.keys + keys, (at.digest + digest) % DIGEST_MOD)
                    keys = digest = 0
                    self.progress.record(unit.worker, at)
                yield batch.take()
                if by_size is not None:
                    del by_size[image.shape]
        if not self.train:
            yield from (b.take() for b in (by_size.values() if by_size is not None else [batch]) if b.n)
        elif at.batches < my_steps:
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
    stream.workers = max(workers, 1)
    if recycle and key in stream._loaders:
        return stream._loaders[key]
    shape = stream.transform.sample_shape()
    pixels = 0 if stream.on_device else int(np.prod(shape or (0,)))  # device decode: no pixel buffers
    ring_bytes = workers * ring_size(workers) * stream.batch_size * pixels
    if recycle and workers and ring_bytes:
        if ring_bytes <= (budget := ring_budget()):
            stream.rings = [Ring((stream.batch_size, *shape), ring_size(workers)) for _ in range(workers)]
        else:  # each batch then takes fresh shared memory (bench/loader.py measures what that costs)
            stream.rings = None
            log.warning("batch rings off: %d workers x %d batches of %d need %.2f GB of shared memory, over this "
                        "stream's share (1/%d of %.1f GB)", workers, ring_size(workers), stream.batch_size,
                        ring_bytes / 1e9, RING_SHARE, budget * RING_SHARE / 1e9)
    elif not recycle:
        stream.rings = None
    persistent = bool(recycle and workers)
    data = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=persistent, prefetch_factor=prefetch(workers) if workers else None)
    if persistent:
        stream._loaders[key] = data
    return data
