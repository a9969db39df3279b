"""The rest of a training epoch dealt to another reader layout, so that a run resumed at another dp
trains every sample of the epoch exactly once.

An epoch's samples are fixed by its *source* layout, the one it started at: source reader i (dp rank
x loader workers, ``Unit.index``) takes the first ``quota_i`` samples of its own shuffled stream
(shards/reader.py: its part of the shards, wrapping around where the part runs short). An item of
the epoch is named by (source reader, ordinal in that reader's stream), and a reader's *work* is a
list of `Piece`s: runs of consecutive items of one source stream. A reader of the source layout
has one piece, its own stream from ordinal 0.

A step checkpoint records each reader's position (shards/position.py): ``ordinal`` items of its
work taken, ``batches`` handed on. What it still owes is ``(its batches - batches) x batch``
samples, the items of its work from ``ordinal`` on (`rest`). `deal` lays the readers' rests end to
end, in reader order, and cuts that line into the new readers' quotas, in their reader order: a
deterministic rule, and a pure function of the positions, so a test can check that what was trained
and what is dealt make up the epoch, each item once.

A bad sample or a hole (a shard come up short) is made up as in a source epoch: the reader reads on
along the source stream of its last piece. Where that happens after a resize, the made-up items may
be ones another reader was dealt (the count stays exact, the set may not): see docs/resume.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """``count`` consecutive items of source reader ``source``'s stream, from its ``start``-th."""

    source: int
    start: int
    count: int

    def as_list(self) -> list[int]:
        return [self.source, self.start, self.count]


def reader_batches(steps: int, workers: int, worker: int) -> int:
    """The batches loader worker ``worker`` of ``workers`` hands on of a rank's ``steps`` (the
    DataLoader takes them round-robin)."""
    return len(range(worker, steps, workers))


def quotas(dp: int, workers: int, batch: int, steps: int, done: int = 0) -> list[int]:
    """Items each reader of a layout (``dp`` ranks x ``workers``, in reader order) takes for steps
    ``done`` to ``steps`` of its rank, ``batch`` samples a step."""
    per_rank = [(reader_batches(steps, workers, w) - reader_batches(done, workers, w)) * batch for w in range(workers)]
    return per_rank * dp


def source_work(dp: int, workers: int, batch: int, steps: int) -> list[list[Piece]]:
    """The work of a source layout's readers: each its own stream, for its quota."""
    return [[Piece(i, 0, q)] for i, q in enumerate(quotas(dp, workers, batch, steps))]


def rest(work: list[Piece], taken: int, owed: int) -> list[Piece]:
    """The ``owed`` items of ``work`` after its first ``taken``; past the work's end, the source
    stream of its last piece goes on (items made up for bad samples, as a reader reads them)."""
    out: list[Piece] = []
    for piece in work:
        skip = min(taken, piece.count)
        taken -= skip
        n = min(piece.count - skip, owed)
        if n:
            out.append(Piece(piece.source, piece.start + skip, n))
            owed -= n
    if owed:
        last = work[-1]
        out.append(Piece(last.source, last.start + last.count + taken, owed))
    return out


def deal(line: list[Piece], quotas_: list[int]) -> list[list[Piece]]:
    """``line`` cut into consecutive runs of ``quotas_[j]`` items, reader j's work."""
    total = sum(p.count for p in line)
    if total != sum(quotas_):
        raise ValueError(f"{total} items left in the epoch, the new readers take {sum(quotas_)}")
    out: list[list[Piece]] = []
    pieces = iter(line)
    current: Piece | None = None
    for q in quotas_:
        mine: list[Piece] = []
        while q:
            current = current if current and current.count else next(pieces)
            n = min(q, current.count)
            mine.append(Piece(current.source, current.start, n))
            current, q = Piece(current.source, current.start + n, current.count - n), q - n
        out.append(mine)
    return out


def redistribute(work: list[list[Piece]], positions: list[tuple[int, int]], workers: int, batch: int, steps: int,
                 new: tuple[int, int, int, int, int]) -> list[list[Piece]]:
    """The new readers' work for the rest of the epoch. ``work``: the old readers' (reader order),
    ``positions`` each one's (ordinal, batches); ``workers``, ``batch``, ``steps``: the old layout's
    loader workers per rank, samples per step and steps per rank. ``new``: (dp, workers, batch,
    steps, done) of the new layout, which takes steps ``done`` to ``steps`` of each of its ranks."""
    if len(work) != len(positions) or len(work) % workers:
        raise ValueError(f"work of {len(work)} readers, positions of {len(positions)}, {workers} per rank")
    line = [p for i, (ordinal, batches) in enumerate(positions)
            for p in rest(work[i], ordinal, (reader_batches(steps, workers, i % workers) - batches) * batch)]
    return deal(line, quotas(*new))


def items(work: list[Piece]) -> list[tuple[int, int]]:
    """The (source reader, ordinal) items of a work list, in order."""
    return [(p.source, p.start + k) for p in work for k in range(p.count)]
