"""A reader's items in an epoch resized mid-way: its dealt pieces (shards/redistribute.py) of the
source readers' streams, each item read as its source reader would have read it.

An epoch's ``deal`` (kept in the training stream and in a step checkpoint's position, plain lists of
ints) holds:

    source   [dp, loader workers, batch, steps] of the layout the epoch started at: what each
             source reader's stream depends on (its part of the shards, shuffle buffer and length)
    work     each reader's pieces of the current layout, by reader index, [source, start, count]
    carried  [keys, digest] of the samples trained before the resize (added to the epoch's own)

A source reader's stream is rebuilt from its ordinal alone (stages.replay, as a resumed reader does),
and each sample draws its augmentation from its source reader's seed at its source ordinal
(position.sample_seed): its crop and flip are those of the uninterrupted epoch.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator

from cnnctl.shards.position import DIGEST_MOD, ReaderPosition, sample_seed
from cnnctl.shards.redistribute import Piece, reader_batches, redistribute, source_work
from cnnctl.shards.shard_tar import Sample
from cnnctl.shards.stages import Split, Unit


def make(source: list[int], work: list[list[Piece]], carried: tuple[int, int]) -> dict:
    """An epoch's deal, as the stream and a checkpoint keep it."""
    return {"source": list(source), "work": [[p.as_list() for p in w] for w in work], "carried": list(carried)}


def resize(deal: dict | None, positions: list[ReaderPosition], old: tuple[int, int, int, int],
           new: tuple[int, int, int, int, int]) -> dict:
    """The deal of an epoch whose readers stood at ``positions`` (every reader of the old layout, in
    reader order) under ``deal`` (None: the epoch's own layout), at the old layout's (dp, loader
    workers, batch, steps), for the new layout's (dp, loader workers, batch, steps, steps done)."""
    dp, workers, batch, steps = old
    work = work_of(deal) if deal else source_work(dp, workers, batch, steps)
    keys, digest = deal["carried"] if deal else (0, 0)
    keys, digest = keys + sum(p.keys for p in positions), (digest + sum(p.digest for p in positions)) % DIGEST_MOD
    dealt = redistribute(work, [(p.ordinal, p.batches) for p in positions], workers, batch, steps, new)
    return make(deal["source"] if deal else list(old), dealt, (keys, digest))


def start(workers: int, done: int) -> list[ReaderPosition]:
    """The positions a dealt epoch's loader workers start from, after ``done`` steps of their rank:
    no item of their work taken yet."""
    return [ReaderPosition(0, reader_batches(done, workers, w), 0, 0) for w in range(workers)]


def work_of(deal: dict) -> list[list[Piece]]:
    return [[Piece(*p) for p in w] for w in deal["work"]]


def source_stream(stream, epoch: int, source: list[int], reader: int, start: int) -> Iterator[Sample | None]:
    """Source reader ``reader``'s items from its ``start``-th, as it reads them in its own epoch."""
    dp, workers, batch, steps = source
    unit = Unit.of(Split(reader // workers, dp), reader % workers, workers)
    rng = random.Random(f"{stream.seed}/{epoch}/{reader}")
    buffer = min(stream.shuffle_buffer, max(stream.samples // dp // workers, 1))
    wanted = reader_batches(steps, workers, unit.worker) * batch
    return stream.passes(epoch, unit, rng, buffer, wanted, start)


def items(stream, epoch: int, deal: dict, reader: int, taken: int) -> Iterator[tuple[Sample | None, str]]:
    """(item, augmentation seed) pairs of reader ``reader``'s work after its first ``taken``; past
    its end, its last piece's source stream goes on (to make up bad samples)."""
    work = work_of(deal)[reader]
    for k, piece in enumerate(work):
        skip = min(taken, piece.count)
        taken -= skip
        last = k == len(work) - 1
        if skip == piece.count and not last:
            continue
        start = piece.start + skip + (taken if last else 0)
        raw = source_stream(stream, epoch, deal["source"], piece.source, start)
        count = None if last else piece.count - skip
        for ordinal, item in zip(itertools.count(start), itertools.islice(raw, count)):
            yield item, sample_seed(stream.seed, epoch, piece.source, ordinal)
