"""Rank-aware WebDataset loader.

The chain, per data-parallel rank and DataLoader worker:
    manifest -> shard list -> per-epoch shuffle -> split by dp rank -> split by worker
    -> tar (fsspec, one read per shard, headers walked here) -> sample shuffle (still encoded)
    -> decode + transform -> batch (uint8, channels_last)

Data is split by *data-parallel* rank, not world rank: the two ranks holding the towers of one
model must see the same batch.

Equal steps: in training every dp rank takes exactly ``steps = samples // (dp * batch)`` batches
per epoch, with ``samples`` the manifest's count (or ``limit``). Worker w of W takes steps w, w+W, ...
(the DataLoader's round-robin). Each (rank, worker) reads its own part of the split; a part that runs
short wraps around its own samples (reshuffled), and a part with samples to spare leaves them for
later epochs' different split. Skipped bad samples are made up the same way. So an uneven shard
count or a damaged shard can never make one rank stop early and hang DDP.
Evaluation (``train=False``) is an exact partition instead: every sample is read exactly once
across ranks, and ranks may take different batch counts (evaluation runs no collectives per step).

Bad samples (undecodable image, missing member, truncated shard): by default an error naming the
shard URL and the sample key. With ``on_bad_sample="skip"`` each is counted (a truncated shard counts
its missing samples), the first few are printed with their URL and key, and ``bad_samples`` holds
the count across DataLoader workers (a shared counter), so the trainer can report it.

The shuffle buffer holds encoded samples (~30 KB for a 256-px JPEG, not ~200 KB of pixels), and
decoding happens after it, so a transform can crop and scale while decoding.
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import codec
from shards import manifest as mf
from shards.transforms import Placed, Transform

Sample = dict  # raw: {"__key__", "__url__", "jpg"|"jpeg"|"png": bytes, "cls": bytes, ...}
IMAGE_EXTS = ("jpg", "jpeg", "png")
REPORT_FIRST = 10  # bad samples printed per process; the rest are only counted
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


class BadSample(RuntimeError):
    pass


@dataclass(frozen=True)
class Split:
    """Which part of the shards one reader owns."""

    dp_rank: int = 0
    dp_size: int = 1


def _tar_members(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular members of a tar held in memory, read straight off its headers.

    tarfile's streaming reader costs ~75 us per member in Python, a quarter of decoding a 256-px JPEG
    for each of a sample's three members; this walk costs about one. It reads USTAR (what the writer
    writes), GNU long names and pax path records, checks every header's checksum (all at once, see
    _checksums_fail), and raises BadSample where a header is damaged or a member is short, after the
    members before it, so a truncated shard is never taken for a shorter one.
    """
    members, headers, error = [], [], None
    long_name, pos, end = None, 0, len(blob)
    try:
        while True:
            header = blob[pos : pos + BLOCK]
            if len(header) < BLOCK:
                raise BadSample(f"truncated tar header ({len(header)} of {BLOCK} bytes)")
            if header == ZERO_BLOCK:
                break
            headers.append(pos)
            size = int(header[124:136].strip(b" \0") or b"0", 8)
            start, pos = pos + BLOCK, pos + BLOCK + size + (-size % BLOCK)
            if start + size > end:
                raise BadSample(f"truncated tar member ({end - start} of {size} bytes)")
            kind = header[156:157]
            if kind in (b"L", b"x"):  # the next member's long name: GNU (the name itself) or pax (a path= record)
                data = blob[start : start + size]
                long_name = data.rstrip(b"\0").decode() if kind == b"L" else _pax_path(data)
                continue
            if kind in (b"0", b"\0"):
                name = long_name or header[:100].split(b"\0", 1)[0].decode()
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" and not long_name else b""
                members.append((len(headers), prefix.decode() + "/" + name if prefix else name, start, size))
            long_name = None
    except (BadSample, ValueError, UnicodeDecodeError) as exc:  # ValueError: a size field that is not octal
        error = exc if isinstance(exc, BadSample) else BadSample(f"damaged tar header ({exc})")
        if len(blob) - pos >= BLOCK and (not headers or headers[-1] != pos):
            headers.append(pos)  # the header it failed on: a checksum mismatch says more
    first_bad = _checksums_fail(blob, headers)
    if first_bad is not None:
        members = [m for m in members if m[0] <= first_bad]
        error = BadSample("damaged tar header (checksum mismatch)")
    for _, name, start, size in members:
        yield name, blob[start : start + size]
    if error is not None:
        raise error


def _checksums_fail(blob: bytes, headers: list[int]) -> int | None:
    """Index of the first header (by offset) whose checksum is wrong, or None.

    All headers at once, in numpy: a Python sum over a 512-byte header costs ~2.5 us, three times
    per sample. The stored checksum is the octal digits of its field (then NUL or space); a field
    whose digits are not one run reads as another number, so it fails too.
    """
    if not headers:
        return None
    blocks = np.frombuffer(blob, np.uint8, count=len(blob) // BLOCK * BLOCK).reshape(-1, BLOCK)  # headers are block-aligned
    rows = blocks[np.asarray(headers) // BLOCK]
    field = rows[:, 148:156].astype(np.int64)
    digit = (field >= 0x30) & (field <= 0x37)
    weight = 8 ** (np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - 1).clip(0)  # 8^(digits after this one)
    stored = (np.where(digit, field - 0x30, 0) * weight).sum(1)
    bad = np.flatnonzero(rows.sum(1, dtype=np.int64) - field.sum(1) + 8 * 0x20 != stored)  # the field itself sums as spaces
    return int(bad[0]) if len(bad) else None


def _pax_path(data: bytes) -> str | None:
    for record in data.decode("utf-8", "replace").splitlines():
        _, _, kv = record.partition(" ")
        key, _, value = kv.partition("=")
        if key == "path":
            return value
    return None


def tar_samples(url: str) -> Iterator[Sample]:
    """Samples of one shard, grouped webdataset's way: members sharing the name up to the basename's
    first dot form one sample. Opened through fsspec (never webdataset's shell-capable gopen)."""
    mf.check_url(url)
    sample: Sample = {}
    with fsspec.open(url, "rb") as stream:
        blob = stream.read()  # one read: shards are ~100 MB, and per-member reads cost more than the walk
    for name, data in _tar_members(blob):
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        if dot < 0:
            continue
        key, ext = name[:dot], name[dot + 1 :]
        if sample and key != sample["__key__"]:
            yield sample
            sample = {}
        if not sample:
            sample = {"__key__": key, "__url__": url}
        elif ext in sample:
            raise BadSample(f"sample {key!r} has two .{ext} members")
        sample[ext] = data
    if sample:
        yield sample


def decode_sample(raw: Sample, transform: Transform, rng: random.Random | None,
                  into: np.ndarray | None = None) -> tuple[np.ndarray | Placed, int]:
    """Raw sample -> (transformed HxWx3 uint8, label); or, for a windowed transform given ``into``
    (the batch's next slot), (where its window lay, label), the pixels already in ``into``
    (Transform.load_into). Any failure is a BadSample naming URL and key."""
    ext = "jpg" if "jpg" in raw else next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None or "cls" not in raw:
        raise BadSample(f"{_where(raw)} lacks an image or a .cls member")
    try:
        label = int(raw["cls"])
        if into is not None and transform.windowed:
            return transform.load_into(raw[ext], ext, rng, into), label
        return transform(transform.load(raw[ext], ext, rng), rng), label
    except (codec.BadImage, ValueError) as exc:  # simplejpeg raises ValueError for corrupt data
        raise BadSample(f"{_where(raw)}: {exc}") from None


def _where(raw: Sample) -> str:
    return f"{raw.get('__url__')}: sample {raw.get('__key__')!r}"


class ShardStream(IterableDataset):
    """Batches of (uint8 N×3×H×W images, int64 labels) for one dp rank; see the module docstring.

    The images tensor is a channels_last view of an N×H×W×3 buffer (ten-crop: N×10×3×H×W).
    With ``frame`` = S (a per-pixel mean image's side), a batch also carries each sample's window,
    an int64 N×3 of (top, left, flip) in the frame of its image's central square, which must be
    S×S (else the sample is bad); the transform must be windowed.
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
        on_bad_sample: str = "error",
        frame: int | None = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample {on_bad_sample!r}: error or skip")
        if frame is not None and not transform.windowed:
            raise ValueError(f"{type(transform).__name__} is not one window of the image: it has no place in a {frame}px frame")
        self.frame = frame
        self.manifest = mf.load(manifest_url)
        self.urls = mf.shard_urls(manifest_url, self.manifest)
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.on_bad_sample = on_bad_sample
        total = self.manifest["num_samples"] if limit is None else min(limit, self.manifest["num_samples"])
        self.samples_per_rank = total // split.dp_size
        self.steps = self.samples_per_rank // batch_size if train else -(-self.samples_per_rank // batch_size)
        # Shared with DataLoader workers (inherited, or passed at spawn): their bad-sample counts reach
        # the trainer, and the trainer's set_epoch reaches workers that persist across epochs.
        self._bad = multiprocessing.get_context().Value("q", 0)
        self._epoch = multiprocessing.get_context().Value("q", 0, lock=False)
        self._reported = 0
        # Batched augmentation the trainer applies on its device after normalising (PCA lighting);
        # set by whoever builds the stream. It follows set_epoch, so the same seed gives the same batches.
        self.device_augment: Callable = _identity
        # Shared-memory batch buffers, one ring per DataLoader worker, made once by loader(recycle=True)
        # in this process: workers inherit and reuse them (see _Batch).
        self.rings: list[_Ring] | None = None
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
        """Bad samples skipped so far (all epochs, all workers) under on_bad_sample=skip."""
        return int(self._bad.value)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def set_epoch(self, epoch: int) -> None:
        """Before iterating the epoch's loader: persistent workers read it when the iteration starts."""
        self.epoch = epoch
        if hasattr(self.device_augment, "set_epoch"):
            self.device_augment.set_epoch(epoch)

    def _unit(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.split.dp_rank * workers + worker, self.split.dp_size * workers, workers

    def _my_part(self, epoch: int) -> tuple[list[str], Callable[[int], bool]]:
        """Shard-level split when there are enough shards, else sample-level (every k-th sample).

        The shard order is shuffled with a seed shared by all ranks (seed, epoch), so the ranks'
        parts stay disjoint; it changes every epoch, and a wrap-around re-reads the same part.
        """
        unit, units, _ = self._unit()
        urls = list(self.urls)
        if self.train:
            random.Random(f"{self.seed}/{epoch}").shuffle(urls)
        if len(urls) >= units:
            return urls[unit::units], lambda i: True
        return urls, lambda i: i % units == unit

    def _skip(self, exc: Exception, count: int = 1) -> None:
        if self.on_bad_sample == "error":
            raise exc
        with self._bad.get_lock():
            self._bad.value += count
        if self._reported < REPORT_FIRST:
            self._reported += 1
            print(f"cnnctl: skipped bad sample(s): {exc}", file=sys.stderr, flush=True)

    def _samples(self, epoch: int) -> Iterator[Sample]:
        """This reader's raw (still encoded) samples, one pass."""
        urls, mine = self._my_part(epoch)
        expected = {u: sh["count"] for u, sh in zip(self.urls, self.manifest["shards"])}
        i = 0
        for url in urls:
            count = 0
            try:
                for sample in tar_samples(url):
                    count += 1
                    i += 1
                    if mine(i - 1):
                        yield sample
                if count != expected[url]:
                    raise BadSample(f"{url}: truncated or damaged, {count} of {expected[url]} samples")
            except BadSample as exc:
                msg = str(exc) if str(exc).startswith(url) else f"{url}: {exc} after {count} samples"
                self._skip(BadSample(msg), max(expected[url] - count, 1))
            except Exception as exc:  # fsspec and decoding errors: name the shard
                self._skip(BadSample(f"{url}: unreadable after {count} samples ({type(exc).__name__}: {exc})"),
                           max(expected[url] - count, 1))

    def _stream(self, epoch: int, rng: random.Random, buffer: int, wanted: Callable[[], int]) -> Iterator[Sample]:
        """Training: the part, pass after pass, each pass shuffled on its own through a buffer of
        ``buffer`` samples, so a part that fits in it comes as one permutation and no pass is read
        before the last one is used up. A later pass (a part that runs short of the epoch's steps)
        fills its buffer only as far as the samples still ``wanted()``: it is there for a batch or so,
        not for a whole part. Evaluation: the part, once, in order.
        """
        first = True
        while True:
            count = 0
            samples = self._samples(epoch)
            size = min(buffer, max(wanted(), 1)) if not first else buffer
            if self.train and size > 1:
                samples = _shuffled(samples, size, rng)
            for sample in samples:
                count += 1
                yield sample
            if not self.train or count == 0:
                return
            first = False

    def __iter__(self):
        unit, units, workers = self._unit()
        epoch = self.epoch  # once: a persistent worker's next epoch may be set while this one drains
        rng = random.Random(f"{self.seed}/{epoch}/{unit}")
        info = get_worker_info()
        worker = info.id if info else 0
        # The DataLoader takes batches from workers in turn, so worker w owns steps w, w+W, ...
        my_steps = len(range(worker, self.steps, workers))
        ring = self.rings[worker] if info is not None and self.rings and len(self.rings) == workers else None
        batch, done, bad_run = _Batch(self.batch_size, shared=info is not None, ring=ring, windows=self.frame is not None), 0, 0
        shape = self.transform.sample_shape()
        # A buffer no larger than this reader's part: a larger one would hold nothing more.
        buffer = min(self.shuffle_buffer, max(self.samples_per_rank // workers, 1))
        stream = self._stream(epoch, rng, buffer, lambda: (my_steps - done) * self.batch_size - batch.n)
        # Evaluation of whole images, whose sizes vary: a batch per size (ImageNet's are mostly 4:3),
        # each handed on when full; at most OPEN_SIZES part-filled at once (a new size hands on the
        # oldest), the rest at the end. Every sample is still read exactly once.
        by_size = {} if shape is None and not self.train else None
        for raw in stream:
            if self.train and done == my_steps:
                break
            try:
                image, label = decode_sample(raw, self.transform, rng, batch.slot(shape))
                window = self._in_frame(raw, image)
            except BadSample as exc:
                self._skip(exc)  # training: the endless stream makes up for it, so steps stay equal
                bad_run += 1
                if bad_run > self.samples_per_rank + self.shuffle_buffer:  # a whole pass and more, all bad
                    break
                continue
            bad_run = 0
            if by_size is not None:
                if image.shape not in by_size and len(by_size) == OPEN_SIZES:
                    yield by_size.pop(next(iter(by_size))).take()
                batch = by_size.setdefault(image.shape, _Batch(self.batch_size, shared=info is not None))
            if batch.add(image, label, window):
                yield batch.take()
                done += 1
                if by_size is not None:
                    del by_size[image.shape]
        if not self.train:
            yield from (b.take() for b in (by_size.values() if by_size is not None else [batch]) if b.n)
        elif done < my_steps:
            raise BadSample(f"dp rank {self.split.dp_rank}: its shards hold no readable samples")


    def _in_frame(self, raw: Sample, image: np.ndarray | Placed) -> tuple[int, int, bool] | None:
        if self.frame is None:
            return None
        side, top, left, flip = image.in_square()
        if side != self.frame:
            raise BadSample(f"{_where(raw)}: its central square is {side}px, not the mean image's {self.frame}px")
        return top, left, flip


class _Ring:
    """One DataLoader worker's recycled batch buffers, in shared memory, made once in the parent.

    Fresh shared memory costs ~110 us per 227-px image on first touch here (page faults), a third of
    a JPEG decode; so a worker cycles through these instead. That is safe only for a consumer that
    lets go of each batch soon: the DataLoader keeps at most PREFETCH batches per worker in flight,
    so a ring of PREFETCH + 3 leaves the consumer the current batch and the two before it. ``turn``
    lives in the worker's copy, so a persistent worker goes on round the ring across epochs and the
    guarantee holds over an epoch's boundary too.
    """

    def __init__(self, shape: tuple, size: int):
        self.buffers = [shared_uint8(shape) for _ in range(size)]
        self.turn = 0

    def next(self, shape: tuple) -> torch.Tensor | None:
        if self.buffers[0].shape != shape:
            return None
        self.turn += 1
        return self.buffers[(self.turn - 1) % len(self.buffers)]


class _Batch:
    """Samples are copied once, straight into an N×H×W×3 buffer (in shared memory in a DataLoader
    worker, so handing it to the trainer copies nothing more), taken from the worker's ``ring``
    when it has one (`loader(..., recycle=True)`; `list(loader)` must not use one).
    """

    def __init__(self, size: int, shared: bool, ring: _Ring | None = None, windows: bool = False):
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


def _identity(x):
    return x


def _shuffled(stream: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for item in stream:
        buf.append(item)
        if len(buf) >= size:  # a random one out: swapped to the end first, as popping mid-list moves the rest
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


PREFETCH = 4  # batches in flight per DataLoader worker
OPEN_SIZES = 4  # evaluation of whole images: part-filled batches of distinct sizes held at once
RING_LIMIT = 1 << 30  # bytes of recycled buffers per stream at most (a ten-crop batch is 10x a training one)


def loader(stream: ShardStream, workers: int = 0, pin_memory: bool = False, recycle: bool = False) -> DataLoader:
    """Wrap a ShardStream: batching already happened inside it, so batch_size=None.

    ``recycle``, for a consumer that keeps no more than the current batch and the two before it (a
    training or evaluation loop that calls this every epoch): workers reuse their shared-memory batch
    buffers (see _Ring), and they persist across epochs: the stream keeps this DataLoader and hands
    it out again, and set_epoch reaches its workers through shared memory. Starting W workers costs
    a fork, and their first touch of the inherited buffers, every epoch otherwise.
    """
    key = (workers, bool(pin_memory))
    if recycle and key in stream._loaders:
        return stream._loaders[key]
    shape = stream.transform.sample_shape()
    ring_bytes = workers * (PREFETCH + 3) * stream.batch_size * int(np.prod(shape or (0,)))
    if recycle and workers and 0 < ring_bytes <= RING_LIMIT:
        stream.rings = [_Ring((stream.batch_size, *shape), PREFETCH + 3) for _ in range(workers)]
    elif not recycle:
        stream.rings = None
    persistent = bool(recycle and workers)
    data = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=persistent, prefetch_factor=PREFETCH if workers else None)
    if persistent:
        stream._loaders[key] = data
    return data
