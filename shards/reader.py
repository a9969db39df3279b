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
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import codec
from shards import manifest as mf
from shards.transforms import Transform

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
    for each of a sample's three members; this walk costs a few. It reads USTAR (what the writer
    writes), GNU long names and pax path records, checks each header's checksum, and raises
    BadSample on a short member, so a truncated shard is never taken for a shorter one.
    """
    long_name, pos, end = None, 0, len(blob)
    while True:
        header = blob[pos : pos + BLOCK]
        if len(header) < BLOCK:
            raise BadSample(f"truncated tar header ({len(header)} of {BLOCK} bytes)")
        if header == ZERO_BLOCK:
            return
        if int(header[148:156].strip(b" \0") or b"0", 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise BadSample("damaged tar header (checksum mismatch)")
        size = int(header[124:136].strip(b" \0") or b"0", 8)
        start, pos = pos + BLOCK, pos + BLOCK + size + (-size % BLOCK)
        if start + size > end:
            raise BadSample(f"truncated tar member ({end - start} of {size} bytes)")
        data = blob[start : start + size]
        kind = header[156:157]
        if kind in (b"L", b"x"):  # the next member's long name: GNU (the name itself) or pax (a path= record)
            long_name = data.rstrip(b"\0").decode() if kind == b"L" else _pax_path(data)
            continue
        if kind in (b"0", b"\0"):
            name = long_name or header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" and not long_name else b""
            yield (prefix.decode() + "/" + name if prefix else name), data
        long_name = None


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


def decode_sample(raw: Sample, transform: Transform, rng: random.Random | None) -> tuple[np.ndarray, int]:
    """Raw sample -> (transformed HxWx3 uint8, label). Any failure is a BadSample naming URL and key."""
    where = f"{raw.get('__url__')}: sample {raw.get('__key__')!r}"
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None or "cls" not in raw:
        raise BadSample(f"{where} lacks an image or a .cls member")
    try:
        label = int(raw["cls"])
        return transform(transform.load(raw[ext], ext, rng), rng), label
    except (codec.BadImage, ValueError) as exc:  # simplejpeg raises ValueError for corrupt data
        raise BadSample(f"{where}: {exc}") from None


class ShardStream(IterableDataset):
    """Batches of (uint8 N×3×H×W images, int64 labels) for one dp rank; see the module docstring.

    The images tensor is a channels_last view of an N×H×W×3 buffer (ten-crop: N×10×3×H×W).
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
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample {on_bad_sample!r}: error or skip")
        self.manifest = mf.load(manifest_url)
        self.urls = mf.shard_urls(manifest_url, self.manifest)
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.on_bad_sample = on_bad_sample
        total = self.manifest["num_samples"] if limit is None else min(limit, self.manifest["num_samples"])
        self.samples_per_rank = total // split.dp_size
        self.steps = self.samples_per_rank // batch_size if train else -(-self.samples_per_rank // batch_size)
        self.epoch = 0
        # Shared with DataLoader workers (inherited, or passed at spawn), so their counts reach the trainer.
        self._bad = multiprocessing.get_context().Value("q", 0)
        self._reported = 0
        # Batched augmentation the trainer applies on its device after normalising (PCA lighting);
        # set by whoever builds the stream. It follows set_epoch, so the same seed gives the same batches.
        self.device_augment: Callable = _identity
        # Shared-memory batch buffers, one ring per DataLoader worker, made once by loader(recycle=True)
        # in this process: workers of every epoch inherit and reuse them (see _Batch).
        self.rings: list[list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return self.steps

    @property
    def bad_samples(self) -> int:
        """Bad samples skipped so far (all epochs, all workers) under on_bad_sample=skip."""
        return int(self._bad.value)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.device_augment, "set_epoch"):
            self.device_augment.set_epoch(epoch)

    def _unit(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.split.dp_rank * workers + worker, self.split.dp_size * workers, workers

    def _my_part(self) -> tuple[list[str], Callable[[int], bool]]:
        """Shard-level split when there are enough shards, else sample-level (every k-th sample).

        The shard order is shuffled with a seed shared by all ranks (seed, epoch), so the ranks'
        parts stay disjoint; it changes every epoch, and a wrap-around re-reads the same part.
        """
        unit, units, _ = self._unit()
        urls = list(self.urls)
        if self.train:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
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

    def _samples(self) -> Iterator[Sample]:
        """This reader's raw (still encoded) samples, one pass."""
        urls, mine = self._my_part()
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

    def _stream(self) -> Iterator[Sample]:
        """Training: the part, forever, reshuffled each pass. Evaluation: the part, once."""
        while True:
            count = 0
            for sample in self._samples():
                count += 1
                yield sample
            if not self.train or count == 0:
                return

    def __iter__(self):
        unit, units, workers = self._unit()
        rng = random.Random(f"{self.seed}/{self.epoch}/{unit}")
        info = get_worker_info()
        worker = info.id if info else 0
        # The DataLoader takes batches from workers in turn, so worker w owns steps w, w+W, ...
        my_steps = len(range(worker, self.steps, workers))
        stream = self._stream()
        # No larger than this reader's part: filling it must not wrap around and re-read the part.
        buffer = min(self.shuffle_buffer, max(self.samples_per_rank // workers, 1))
        if self.train and buffer > 1:
            stream = _shuffled(stream, buffer, rng)
        ring = self.rings[worker] if info is not None and self.rings and len(self.rings) == workers else None
        batch, done, bad_run = _Batch(self.batch_size, shared=info is not None, ring=ring), 0, 0
        for raw in stream:
            if self.train and done == my_steps:
                break
            try:
                image, label = decode_sample(raw, self.transform, rng)
            except BadSample as exc:
                self._skip(exc)  # training: the endless stream makes up for it, so steps stay equal
                bad_run += 1
                if bad_run > self.samples_per_rank + self.shuffle_buffer:  # a whole pass and more, all bad
                    break
                continue
            bad_run = 0
            if batch.add(image, label):
                yield batch.take()
                done += 1
        if batch.n and not self.train:
            yield batch.take()
        elif self.train and done < my_steps:
            raise BadSample(f"dp rank {self.split.dp_rank}: its shards hold no readable samples")


class _Batch:
    """Samples are copied once, straight into an N×H×W×3 buffer (in shared memory in a DataLoader
    worker, so handing it to the trainer copies nothing more).

    Fresh shared memory costs ~110 us per 227-px image on first touch here (page faults), a third of
    a JPEG decode, and workers restart every epoch; so with a ``ring`` (made once in the parent
    process) a worker cycles through those buffers instead. That is safe only for a consumer that
    lets go of each batch soon: the DataLoader keeps at most PREFETCH batches per worker in flight,
    so a ring of PREFETCH + 3 leaves the consumer the current batch and the two before it.
    `loader(..., recycle=True)` makes the rings; `list(loader)` must not use them.
    """

    def __init__(self, size: int, shared: bool, ring: list[torch.Tensor] | None = None):
        self.size, self.shared, self.n = size, shared, 0
        self.buf = self.arr = None
        self.labels: list[int] = []
        self.ring, self.turn = ring, 0

    def _new(self, shape: tuple) -> torch.Tensor:
        if self.ring and self.ring[0].shape == shape:
            self.turn += 1
            return self.ring[(self.turn - 1) % len(self.ring)]
        if self.shared:
            return shared_uint8(shape)
        return torch.empty(shape, dtype=torch.uint8)

    def add(self, image: np.ndarray, label: int) -> bool:
        if self.buf is None:
            self.buf = self._new((self.size, *image.shape))
            self.arr = self.buf.numpy()
        elif image.shape != self.arr.shape[1:]:
            raise BadSample(f"sample of shape {image.shape} in a batch of {self.arr.shape[1:]} (batch size 1 for full images)")
        flips = [d for d, step in enumerate(image.strides) if step < 0]
        if flips:  # a flipped view: numpy copies it ~15x slower than torch flips it
            image = image[tuple(slice(None, None, -1) if d in flips else slice(None) for d in range(image.ndim))]
            self.buf[self.n].copy_(torch.from_numpy(image).flip(flips))
        else:
            self.arr[self.n] = image
        self.labels.append(label)
        self.n += 1
        return self.n == self.size

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.buf[: self.n].movedim(-1, -3)  # N×H×W×3 -> N×3×H×W view: channels_last
        out = images, torch.tensor(self.labels, dtype=torch.int64)
        self.buf = self.arr = None
        self.labels, self.n = [], 0
        return out


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
        if len(buf) >= size:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


PREFETCH = 4  # batches in flight per DataLoader worker
RING_LIMIT = 1 << 30  # bytes of recycled buffers per stream at most (a ten-crop batch is 10x a training one)


def loader(stream: ShardStream, workers: int = 0, pin_memory: bool = False, recycle: bool = False) -> DataLoader:
    """Wrap a ShardStream: batching already happened inside it, so batch_size=None.

    ``recycle``: workers reuse their shared-memory batch buffers (see _Batch), for a consumer that
    keeps no more than the current batch and the two before it (a training or evaluation loop).
    """
    shape = stream.transform.sample_shape()
    ring_bytes = workers * (PREFETCH + 3) * stream.batch_size * int(np.prod(shape or (0,)))
    if recycle and workers and 0 < ring_bytes <= RING_LIMIT and not (stream.rings and len(stream.rings) == workers):
        stream.rings = [[shared_uint8((stream.batch_size, *shape)) for _ in range(PREFETCH + 3)] for _ in range(workers)]
    elif not recycle:
        stream.rings = None
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=PREFETCH if workers else None)
