"""Where a training stream stands in its epoch, reader by reader, so a run resumes mid-epoch exactly.

A reader's epoch is a deterministic sequence of items (shards/stages.py: `read` keeps a hole where a
shard lacks a sample, `shuffle` draws one item at a time), and each sample's augmentation draws from
its own seed (`sample_seed`). So a reader's whole state is one number, the ``ordinal``: the items it
has taken from its shuffled stream. A resumed reader replays the shuffle over positions alone
(`stages.replay`), reads only the shards still holding what is left, and decodes nothing it skips.

In an epoch resized mid-way (shards/dealt.py) a reader's items are its dealt pieces of the source
readers' streams, and ``ordinal`` counts the items of those it has taken.

The trainer consumes batches behind the readers (the DataLoader prefetches), so each reader writes
its position after every batch into a small ring in shared memory, and the trainer reads the one of
the last batch it trained on (`Progress.at`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
from dataclasses import asdict, dataclass

from cnnctl.shards.batching import PREFETCH

MAX_WORKERS = 64  # DataLoader workers per stream that positions are kept for
SLOTS = 2 * PREFETCH + 4  # batches a worker may run ahead of the trainer, and then some
DIGEST_MOD = 1 << 61


@dataclass
class ReaderPosition:
    """One reader's place in its epoch: ``ordinal`` items taken from its shuffled stream (samples and
    holes), ``batches`` handed on, and the ``keys`` in them with their ``digest`` (the sum of the
    keys' hashes): two epochs that trained the same samples, however often each, have equal pairs."""

    ordinal: int = 0
    batches: int = 0
    keys: int = 0
    digest: int = 0

    def as_list(self) -> list[int]:
        return list(asdict(self).values())


FIELDS = len(ReaderPosition().as_list())


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % DIGEST_MOD


def sample_seed(seed: int, epoch: int, reader: int, ordinal: int) -> str:
    """The augmentation seed of the item at ``ordinal`` of a reader's epoch: a sample's crop and flip
    need nothing drawn before it, so skipping items needs no decode."""
    return f"{seed}/{epoch}/{reader}/{ordinal}"


class Progress:
    """Positions in shared memory, visible to DataLoader workers forked or spawned later:
    ``start`` (where each worker begins the epoch, and the rotation of workers, set by the trainer
    before the epoch's iteration) and the ring each worker writes after every batch."""

    def __init__(self):
        ctx = multiprocessing.get_context()
        self._start = ctx.Array("q", 1 + MAX_WORKERS * FIELDS, lock=False)
        self._after = ctx.Array("q", MAX_WORKERS * SLOTS * FIELDS, lock=False)

    def begin(self, positions: list[ReaderPosition] | None = None, rotation: int = 0) -> None:
        """The epoch starts at ``positions`` (one per worker; None: at its beginning). ``rotation``:
        the DataLoader takes the first batch from its worker 0, which must then play worker
        ``rotation`` (the one whose batch comes next in the epoch)."""
        positions = positions or []
        if len(positions) > MAX_WORKERS:
            raise ValueError(f"{len(positions)} loader workers: positions are kept for {MAX_WORKERS} at most")
        self._start[0] = rotation
        for w in range(MAX_WORKERS):
            values = positions[w].as_list() if w < len(positions) else [0] * FIELDS
            self._start[1 + w * FIELDS : 1 + (w + 1) * FIELDS] = values

    @property
    def rotation(self) -> int:
        return int(self._start[0])

    def start(self, worker: int) -> ReaderPosition:
        return ReaderPosition(*self._start[1 + worker * FIELDS : 1 + (worker + 1) * FIELDS])

    def record(self, worker: int, position: ReaderPosition) -> None:
        """After a worker's batch number ``position.batches`` (counted from 1)."""
        i = (worker * SLOTS + (position.batches - 1) % SLOTS) * FIELDS
        self._after[i : i + FIELDS] = position.as_list()

    def at(self, worker: int, batches: int) -> ReaderPosition:
        """The worker's position after its ``batches``-th batch of the epoch (its start if it has
        handed on none since)."""
        start = self.start(worker)
        if batches <= start.batches:
            return start
        i = (worker * SLOTS + (batches - 1) % SLOTS) * FIELDS
        position = ReaderPosition(*self._after[i : i + FIELDS])
        if position.batches != batches:  # overwritten: the worker ran more than SLOTS batches ahead
            raise RuntimeError(f"loader worker {worker}: the position after batch {batches} is gone "
                               f"(the slot holds batch {position.batches})")
        return position
