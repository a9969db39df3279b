"""Rank-aware WebDataset loader.

The chain, per data-parallel rank and DataLoader worker:
    manifest -> shard list -> per-epoch shuffle -> split by dp rank -> split by worker
    -> tar (fsspec) -> decode -> transform -> batch (uint8)

Data is split by *data-parallel* rank, not world rank: the two ranks holding the towers of one
model must see the same batch.

Equal steps: in training every dp rank takes exactly ``steps = samples // (dp * batch)`` batches
per epoch. Each (rank, worker) reads its own part of the split; a part that runs short wraps around
its own samples (reshuffled), and a part with samples to spare leaves them for later epochs'
different split. So an uneven shard count can never make one rank stop early and hang DDP.
Evaluation (``train=False``) is an exact partition instead: every sample is read exactly once
across ranks, and ranks may take different batch counts (evaluation runs no collectives per step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import codec
from shards import manifest as mf

Sample = dict  # {"__key__", "__url__", "image": HxWx3 uint8, "label": int}


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


def decode_sample(raw: dict) -> Sample:
    ext = next((e for e in ("jpg", "jpeg", "png") if e in raw), None)
    if ext is None or "cls" not in raw:
        raise BadSample(f"{raw.get('__url__')}: sample {raw.get('__key__')!r} lacks an image or a .cls member")
    try:
        image = codec.decode(raw[ext], ext)
        label = int(raw["cls"])
    except (codec.BadImage, ValueError) as exc:
        raise BadSample(f"{raw.get('__url__')}: sample {raw.get('__key__')!r}: {exc}") from None
    return {"__key__": raw["__key__"], "__url__": raw["__url__"], "image": image, "label": label}


class ShardStream(IterableDataset):
    """Batches of (uint8 N×3×H×W images, int64 labels) for one dp rank; see the module docstring."""

    def __init__(
        self,
        manifest_url: str,
        split: Split,
        batch_size: int,
        transform: Callable[[np.ndarray, random.Random], np.ndarray],
        *,
        train: bool = True,
        seed: int = 0,
        limit: int | None = None,
        shuffle_buffer: int = 2000,
        on_bad_sample: str = "error",
    ):
        self.manifest = mf.load(manifest_url)
        self.urls = mf.shard_urls(manifest_url, self.manifest)
        self.split, self.batch_size, self.transform = split, batch_size, transform
        self.train, self.seed, self.shuffle_buffer = train, seed, shuffle_buffer
        self.on_bad_sample = on_bad_sample
        total = self.manifest["num_samples"] if limit is None else min(limit, self.manifest["num_samples"])
        self.samples_per_rank = total // split.dp_size
        self.steps = self.samples_per_rank // batch_size if train else -(-self.samples_per_rank // batch_size)
        self.epoch = 0
        self.bad_samples = 0  # counted in this process; workers report theirs through their batches

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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

    def _samples(self) -> Iterator[Sample]:
        urls, mine = self._my_part()
        expected = {mf.join(u.rsplit("/", 1)[0], sh["name"]): sh["count"] for u, sh in zip(self.urls, self.manifest["shards"])}
        i = 0
        for url in urls:
            count = 0
            try:
                raw = wds.tariterators.tar_file_expander(open_shards(iter([url])), handler=wds.reraise_exception)
                for sample in wds.tariterators.group_by_keys(raw, handler=wds.reraise_exception):
                    count += 1
                    i += 1
                    if mine(i - 1):
                        yield decode_sample(sample)
                if count != expected[url]:
                    raise BadSample(f"{url}: truncated or damaged, {count} of {expected[url]} samples")
            except BadSample:
                if self.on_bad_sample == "error":
                    raise
                self.bad_samples += 1
            except Exception as exc:  # tarfile and fsspec errors: name the shard
                if self.on_bad_sample == "error":
                    raise BadSample(f"{url}: unreadable after {count} samples ({type(exc).__name__}: {exc})") from exc
                self.bad_samples += 1

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
        images, labels, done = [], [], 0
        for sample in stream:
            if self.train and done == my_steps:
                break
            images.append(self.transform(sample["image"], rng))
            labels.append(sample["label"])
            if len(images) == self.batch_size:
                yield _collate(images, labels)
                images, labels, done = [], [], done + 1
        if images and not self.train:
            yield _collate(images, labels)
        elif self.train and done < my_steps:
            raise BadSample(f"dp rank {self.split.dp_rank}: its shards hold no readable samples")


def _collate(images: list[np.ndarray], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


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
