"""The loader's stages, from a tar shard to a sample in its batch slot:

    shard list -> split by dp rank and worker -> tar members -> shuffle -> decode + crop -> batch

Each stage is one function over plain values or iterators; ShardStream (shards/reader.py) chains
them for one reader, a (dp rank, DataLoader worker) pair, each epoch, and shards/batching.py holds the
batch. A bad sample or shard goes to the handler the stream was given: ``raise_bad`` stops the run
with the shard and key named, ``SkipBad`` counts it across workers and goes on.

Data is split by *data-parallel* rank, not world rank: the two ranks holding the towers of one model
must see the same batch.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np

from cnnctl.shards import codec
from cnnctl.shards import shard_tar
from cnnctl.shards.encoded import Plan
from cnnctl.shards.shard_tar import BadSample, Sample
from cnnctl.shards.transforms import Placed, ScaleJitter, Transform

REPORT_FIRST = 10  # bad samples printed per process under SkipBad; the rest are only counted


@dataclass(frozen=True)
class Split:
    """Which part of the shards one dp rank owns."""

    dp_rank: int = 0
    dp_size: int = 1


@dataclass(frozen=True)
class Unit:
    """One reader: DataLoader worker ``worker`` of ``workers`` on a dp rank; ``index`` of ``count``
    readers across all ranks."""

    index: int
    count: int
    worker: int
    workers: int

    @classmethod
    def of(cls, split: Split, worker: int, workers: int) -> Unit:
        return cls(split.dp_rank * workers + worker, split.dp_size * workers, worker, workers)


class BadSampleHandler(Protocol):
    def __call__(self, exc: BadSample, count: int = 1) -> None:
        """Raise ``exc``, or account for ``count`` samples lost to it and return."""


def raise_bad(exc: BadSample, count: int = 1) -> None:
    """The default policy: a bad sample stops the run, naming its shard and key."""
    raise exc


class SkipBad:
    """Count bad samples and go on; the first REPORT_FIRST per process are printed with their shard
    and key. The count is shared with DataLoader workers (inherited at fork, pickled at spawn)."""

    def __init__(self):
        self._count = multiprocessing.get_context().Value("q", 0)
        self._reported = 0

    def __call__(self, exc: BadSample, count: int = 1) -> None:
        with self._count.get_lock():
            self._count.value += count
        if self._reported < REPORT_FIRST:
            self._reported += 1
            print(f"cnnctl: skipped bad sample(s): {exc}", file=sys.stderr, flush=True)

    @property
    def count(self) -> int:
        return int(self._count.value)


def bad_sample_policy(name: str) -> BadSampleHandler:
    """data.on_bad_sample -> its handler."""
    policies = {"error": lambda: raise_bad, "skip": SkipBad}
    if name not in policies:
        raise ValueError(f"on_bad_sample {name!r}: {' or '.join(policies)}")
    return policies[name]()


def shard_order(urls: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """Stage 1, the epoch's shard list: shuffled (training) with a seed every rank shares, so their
    parts stay disjoint; it changes every epoch."""
    urls = list(urls)
    if shuffle:
        random.Random(f"{seed}/{epoch}").shuffle(urls)
    return urls


def split(urls: list[str], unit: Unit) -> tuple[list[str], Callable[[int], bool]]:
    """Stage 2, this reader's part: every ``count``-th shard when there are enough shards, else every
    shard with every ``count``-th sample (the predicate takes a sample's index in the pass)."""
    if len(urls) >= unit.count:
        return urls[unit.index :: unit.count], lambda i: True
    return urls, lambda i: i % unit.count == unit.index


def read(urls: list[str], mine: Callable[[int], bool], expected: dict[str, int], on_bad: BadSampleHandler,
         wanted: Callable[[int], bool] | None = None) -> Iterator[Sample | None]:
    """Stage 3, tar members grouped into samples (still encoded), this reader's only, one pass: one
    item per sample the manifests list for this part, in order, so a position in a pass names the
    same sample every time it is read. Where a shard ends short of its manifest count, or cannot be
    read, its missing samples are None (holes) and ``on_bad`` hears of them once, with their count.
    ``wanted(position)``: only those positions are read (the rest are None) and a shard with none
    wanted is not opened: a resumed epoch passes over what it consumed without reading it."""
    g = p = 0
    for url in urls:
        n = expected[url]
        picks = [i - g for i in range(g, g + n) if mine(i)]  # this reader's samples of the shard, by index in it
        g += n
        if wanted is not None and not any(wanted(q) for q in range(p, p + len(picks))):
            p += len(picks)
            yield from [None] * len(picks)
            continue
        k = count = 0  # picks yielded, samples read
        try:
            for sample in shard_tar.tar_samples(url):
                if count == n:
                    raise BadSample(f"{url}: damaged, more samples than its manifest's {n}")
                if k < len(picks) and picks[k] == count:
                    yield sample if wanted is None or wanted(p) else None
                    p, k = p + 1, k + 1
                count += 1
            if count != n:
                raise BadSample(f"{url}: truncated or damaged, {count} of {n} samples")
        except BadSample as exc:
            msg = str(exc) if str(exc).startswith(url) else f"{url}: {exc} after {count} samples"
            on_bad(BadSample(msg), max(n - count, 1))
        except Exception as exc:  # noqa: BLE001 - fsspec and I/O errors: name the shard
            on_bad(BadSample(f"{url}: unreadable after {count} samples ({type(exc).__name__}: {exc})"),
                   max(n - count, 1))
        p += len(picks) - k
        yield from [None] * (len(picks) - k)  # the holes keep every later position in place


def pass_length(urls: list[str], mine: Callable[[int], bool], expected: dict[str, int]) -> int:
    """Items in one pass of ``read``: the manifests' samples of this reader's part."""
    return sum(1 for i in range(sum(expected[u] for u in urls)) if mine(i))


def shuffle(stream: Iterator, size: int, rng: random.Random, buf: list | None = None) -> Iterator:
    """Stage 4, a shuffle buffer of ``size`` encoded samples (~30 KB each for a 256-px JPEG, not
    ~200 KB of pixels): a part that fits in it comes out as one permutation. Each item out is one
    draw from ``rng`` among the items held, to the last, so after any number out ``buf`` (the
    caller's list, if given) holds exactly the items still to come and ``rng`` is where the next
    draw starts: ``replay`` rebuilds that state, and ``shuffle(rest, size, rng, buf)`` goes on."""
    buf = [] if buf is None else buf
    for item in stream:
        buf.append(item)
        if len(buf) >= size:
            yield _draw(buf, rng)
    while buf:
        yield _draw(buf, rng)


def _draw(buf: list, rng: random.Random):
    i = rng.randrange(len(buf))  # swapped to the end first, as popping mid-list moves the rest
    buf[i], buf[-1] = buf[-1], buf[i]
    return buf.pop()


def replay(length: int, size: int, rng: random.Random, taken: int) -> list[int]:
    """Stage 4 over the positions of a pass of ``length`` items, without reading a byte: the
    positions still held after ``taken`` items came out, in buffer order, with ``rng`` where the
    real shuffle leaves it. ``taken + len(result)`` positions have gone in."""
    buf: list[int] = []
    for _ in itertools.islice(shuffle(iter(range(length)), size, rng, buf), taken):
        pass
    return buf


def label(raw: Sample, num_classes: int | None = None) -> int:
    """A sample's .cls: ASCII digits (surrounding whitespace allowed), a class index below
    ``num_classes``. ``int()`` would take ``-100`` (the loss's ignore_index: a sample silently
    dropped), ``+3``, ``1_0`` or non-ASCII digits; a label past the classes crashes deep in the loss."""
    text = raw["cls"].strip()
    if not (0 < len(text) <= 18 and text.isdigit() and (num_classes is None or int(text) < num_classes)):
        shown = text[:24].decode("ascii", "replace")
        top = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise BadSample(f"{where(raw)}: label {shown!r} is not a class index {top}")
    return int(text)


def decode(raw: Sample, transform: Transform, rng: random.Random | None, into: np.ndarray | None = None,
           windowed: bool = True, num_classes: int | None = None) -> tuple[np.ndarray | Placed, int]:
    """Stage 5, raw sample -> (transformed HxWx3 uint8, label); or, for a windowed transform given
    ``into`` (the batch's next slot), (where its window lay, label), the pixels already in ``into``.
    ``windowed=False`` decodes whole images even where the windowed decoder is built (the same
    pixels; shards/decoders.py picks the faster). A label outside [0, ``num_classes``) is bad too.
    Any failure is a BadSample naming URL and key."""
    ext = "jpg" if "jpg" in raw else next((e for e in codec.IMAGE_EXTS if e in raw), None)
    if ext is None or "cls" not in raw:
        raise BadSample(f"{where(raw)} lacks an image or a .cls member")
    target = label(raw, num_classes)
    try:
        if into is not None and transform.windowed:
            return transform.load_into(raw[ext], ext, rng, into, windowed=windowed), target
        return transform(transform.load(raw[ext], ext, rng, windowed=windowed), rng), target
    except (codec.BadImage, ValueError) as exc:  # simplejpeg raises ValueError for corrupt data
        raise BadSample(f"{where(raw)}: {exc}") from None


def plan(raw: Sample, transform: Transform, rng: random.Random, num_classes: int | None = None) -> tuple[Plan, int]:
    """Stage 5 under data.decoder=device: raw sample -> (its Plan, label), nothing decoded but the
    JPEG's header. The window is drawn from ``rng`` exactly as ``decode`` draws it, so the batches'
    keys and windows are the same either way; shards/device_decode.py decodes the plans. Only JPEGs
    of a windowed transform or of ScaleJitter (decoders.device_problem refuses the rest up front)."""
    ext = next((e for e in ("jpg", "jpeg") if e in raw), None)
    if ext is None or "cls" not in raw:
        other = next((e for e in codec.IMAGE_EXTS if e in raw), None)
        raise BadSample(f"{where(raw)}: " + (f"a .{other}, and data.decoder=device decodes JPEGs only" if other
                                             else "lacks an image or a .cls member"))
    target = label(raw, num_classes)
    data = raw[ext]
    try:
        if not codec.is_jpeg(data, ext):
            raise codec.BadImage("not a JPEG (it does not start with a JPEG's SOI marker)")
        h, w = codec.jpeg_size(data)
        if isinstance(transform, ScaleJitter):
            s, box = transform.plan(w, h, rng)
            return Plan(data, where(raw), h, w, jitter=(s, box, rng.random() < 0.5)), target
        return Plan(data, where(raw), h, w, window=transform.window(h, w, rng)), target
    except (codec.BadImage, ValueError) as exc:  # simplejpeg raises ValueError for a corrupt header
        raise BadSample(f"{where(raw)}: {exc}") from None


def in_frame(raw: Sample, placed: Placed | Plan, frame: int) -> tuple[int, int, bool]:
    """A windowed sample's (top, left, flip) in its image's central square, which must be ``frame``
    px (a per-pixel mean image's side)."""
    side, top, left, flip = placed.in_square()
    if side != frame:
        raise BadSample(f"{where(raw)}: its central square is {side}px, not the mean image's {frame}px")
    return top, left, flip


def where(raw: Sample) -> str:
    return f"{raw.get('__url__')}: sample {raw.get('__key__')!r}"
