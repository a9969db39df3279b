"""Rank-aware WebDataset loader.

The chain, per data-parallel rank and DataLoader worker:
    manifest -> shard list -> per-epoch shuffle -> split by dp rank -> split by worker
    -> tar (fsspec) -> sample shuffle (still encoded) -> decode + transform -> batch (uint8)

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
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import codec
from shards import manifest as mf
from shards.transforms import Transform

Sample = dict  # raw: {"__key__", "__url__", "jpg"|"jpeg"|"png": bytes, "cls": bytes, ...}
IMAGE_EXTS = ("jpg", "jpeg", "png")
REPORT_FIRST = 10  # bad samples printed per process; the rest are only counted


class BadSample(RuntimeError):
    pass


@dataclass(frozen=True)
class Split:
    """Which part of the shards one reader owns."""

    dp_rank: int = 0
    dp_size: int = 1


def open_shards(urls: Iterator[str]) -> Iterator[dict]:
    """Shard URLs -> open byte streams, through fsspec (never webdataset's shell-capable gopen)."""
    for url in urls:
        mf.check_url(url)
        with fsspec.open(url, "rb") as stream:
            yield {"url": url, "stream": stream}


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
                raw = wds.tariterators.tar_file_expander(open_shards(iter([url])), handler=wds.reraise_exception)
                for sample in wds.tariterators.group_by_keys(raw, handler=wds.reraise_exception):
                    count += 1
                    i += 1
                    if mine(i - 1):
                        yield sample
                if count != expected[url]:
                    raise BadSample(f"{url}: truncated or damaged, {count} of {expected[url]} samples")
            except BadSample as exc:
                self._skip(exc, max(expected[url] - count, 1))
            except Exception as exc:  # tarfile and fsspec errors: name the shard
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
        if self.train and self.shuffle_buffer > 1:
            stream = _shuffled(stream, self.shuffle_buffer, rng)
        batch, done, bad_run = _Batch(self.batch_size, shared=info is not None), 0, 0
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
    worker, so handing it to the trainer copies nothing more)."""

    def __init__(self, size: int, shared: bool):
        self.size, self.shared, self.n = size, shared, 0
        self.buf = self.arr = None
        self.labels: list[int] = []

    def add(self, image: np.ndarray, label: int) -> bool:
        if self.buf is None:
            shape = (self.size, *image.shape)
            if self.shared:
                storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
                self.buf = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
            else:
                self.buf = torch.empty(shape, dtype=torch.uint8)
            self.arr = self.buf.numpy()
        elif image.shape != self.arr.shape[1:]:
            raise BadSample(f"sample of shape {image.shape} in a batch of {self.arr.shape[1:]} (batch size 1 for full images)")
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


def loader(stream: ShardStream, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Wrap a ShardStream: batching already happened inside it, so batch_size=None."""
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers else None)
