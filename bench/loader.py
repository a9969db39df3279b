"""How close the training loader comes to the codec limit, for AlexNet's train transforms.

Builds an ImageNet-like corpus (random crops and scales of scikit-image's photos, ~500x375 JPEGs in
class folders), packs it with `cnnctl shard`'s defaults (shorter side 256, q90), then measures in the
same run, interleaved over rounds, on the same tar bytes:

- loader: ShardStream + DataLoader with W workers, AlexNet train transforms (random 227 crop of the
          central square, flip; lighting runs later on the device), uint8 batches of 128, one epoch
          a round, after an untimed first epoch that starts its workers (they persist, as in training);
- codec:  a bare loop over the JPEG bytes of the same shards (already in memory): simplejpeg decode,
          random 227 crop, flip, copy out; one loop per process, W processes at once (the codec limit;
          the goal is loader >= 0.9x this);
- window: the same bare loop with the loader's own decoder, which decodes only the crop's window,
          straight into a reused buffer (shards/_jpegcrop.c): loader / window is the loader's own
          overhead, now that it no longer decodes whole images;
- naive:  a plain per-sample PIL pipeline in a DataLoader with W workers: Image.open, crop,
          transpose, to a CHW tensor, default collate (the goal is loader >= 1.8x this).

With --augment vgg it measures VGG's scale jitter instead (S in [256, 512], random 224 crop of the
rescaled image, flip): the loader decoding only the pixels the crop's resize reads, against the same
loader decoding whole images (shards/_jpegcrop.c switched off in its workers), interleaved.

Usage: python bench/loader.py [--images 4000] [--workers 2] [--rounds 3] [--batch 128] [--augment alexnet|vgg]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from shards import codec
from shards import manifest as mf
from shards.reader import ShardStream, Split, loader
from shards.sources import class_folders
from shards.transforms import AlexNetCrop, ScaleJitter
from shards.writer import PackOptions, pack
from shard import build_corpus  # bench/shard.py (this folder): the same ImageNet-like corpus

CROP = 227


def tar_jpegs(shards: list[Path]) -> list[bytes]:
    out = []
    for p in shards:
        with tarfile.open(p) as t:
            out += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")]
    return out


def _plans(jpegs: list[bytes]):
    """(data, top, left, flip) per image: a random crop of the central square, as AlexNetCrop draws."""
    rng, crop = random.Random(0), AlexNetCrop(CROP)
    for data in jpegs:
        yield data, *crop.window(*codec.jpeg_size(data), rng)


def window_loop(jpegs: list[bytes]) -> tuple[int, float]:
    """decode of the crop's window only, flipped in the decoder, into one reused buffer."""
    out = np.empty((CROP, CROP, 3), np.uint8)
    plans = list(_plans(jpegs))
    t0 = time.perf_counter()
    for data, top, left, flip in plans:
        codec.decode_window(data, out, top, left, flip)
    return len(jpegs), time.perf_counter() - t0


def codec_loop(jpegs: list[bytes]) -> tuple[int, float]:
    """decode -> random crop of the central square -> flip -> contiguous copy; returns (images, seconds)."""
    rng = random.Random(0)
    t0 = time.perf_counter()
    for data in jpegs:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        h, w = img.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2 + rng.randrange(side - CROP + 1), (w - side) // 2 + rng.randrange(side - CROP + 1)
        img = img[top : top + CROP, left : left + CROP]
        out = torch.from_numpy(img)  # copied out the way the reader does it: torch flips ~15x faster than numpy
        (out.flip(1) if rng.random() < 0.5 else out.clone())
    return len(jpegs), time.perf_counter() - t0


class NaivePIL(Dataset):
    """What a plain per-sample PIL pipeline does (torchvision-style, without torchvision)."""

    def __init__(self, jpegs: list[bytes], labels: list[int]):
        self.jpegs, self.labels = jpegs, labels

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, i: int):
        img = Image.open(io.BytesIO(self.jpegs[i])).convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2 + random.randrange(side - CROP + 1), (h - side) // 2 + random.randrange(side - CROP + 1)
        img = img.crop((left, top, left + CROP, top + CROP))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()), self.labels[i]


def run_loader(stream: ShardStream, workers: int, epoch: int) -> tuple[int, float]:
    """One epoch; the stream lives across rounds as the trainer's does across epochs, and so do its
    workers (recycle=True keeps them): each round pays the epoch's start (reading and walking the
    shards, filling the shuffle buffer) but not the workers' start, which the warm-up round took."""
    stream.set_epoch(epoch)
    t0, n = time.perf_counter(), 0
    for images, _ in loader(stream, workers=workers, recycle=True):  # as make_loader does for training
        n += len(images)
    return n, time.perf_counter() - t0


def run_codec(pool: ProcessPoolExecutor, jpegs: list[bytes], workers: int, loop=codec_loop) -> float:
    """img/s of W simultaneous bare loops: the sum of their rates."""
    return sum(n / t for n, t in pool.map(loop, [jpegs[i::workers] for i in range(workers)]))


def run_naive(jpegs: list[bytes], workers: int, batch: int) -> tuple[int, float]:
    data = DataLoader(NaivePIL(jpegs, [0] * len(jpegs)), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for images, _ in data:
        n += len(images)
    return n, time.perf_counter() - t0


def compare_vgg(url: str, args: argparse.Namespace) -> None:
    """VGG scale jitter: windowed decoding against whole-image decoding, the same loader otherwise."""
    streams = {}
    for windowed in (False, True):  # workers fork at the warm-up and keep the flag they saw
        codec.WINDOWED = windowed and codec._decode_into is not None
        streams[windowed] = ShardStream(url, Split(), args.batch, ScaleJitter(224, 256, 512), seed=0)
        run_loader(streams[windowed], args.workers, 0)
    load0 = os.getloadavg()[0]
    rates = {False: [], True: []}
    for r in range(args.rounds):
        for windowed, stream in streams.items():
            n, t = run_loader(stream, args.workers, r + 1)
            rates[windowed].append(n / t)
    whole, window = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"loader, VGG scale jitter, whole-image decode:  {whole:7.1f} img/s")
    print(f"loader, VGG scale jitter, windowed decode:     {window:7.1f} img/s")
    print(f"windowed / whole: {window / whole:.2f}x; per round:", " ".join(f"{b / a:.2f}" for a, b in zip(rates[False], rates[True])))
    print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000, help="corpus size")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (and bare codec processes)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--batch", type=int, default=128, help="batch size")
    ap.add_argument("--augment", choices=("alexnet", "vgg"), default="alexnet", help="the train transform measured")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, dest = Path(tmp, "corpus"), Path(tmp, "shards")
        t0 = time.perf_counter()
        build_corpus(root, args.images)
        manifest, _ = pack(class_folders(root, "train"), str(dest), "bench", PackOptions(resize=256, quality=90, shard_size=250, workers=args.workers))
        url = mf.manifest_url(str(dest), "bench", "train")
        jpegs = tar_jpegs(sorted(dest.glob("bench-train-*.tar")))
        sizes = [simplejpeg.decode_jpeg_header(j)[:2] for j in jpegs[:200]]
        print(f"corpus: {len(jpegs)} JPEGs in {len(manifest['shards'])} shards, shorter side 256 (e.g. {sizes[0][1]}x{sizes[0][0]}), "
              f"{sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB each; built in {time.perf_counter() - t0:.1f}s")
        if args.augment == "vgg":
            return compare_vgg(url, args)
        rates = {"loader": [], "codec": [], "window": [], "naive": []}
        load0 = os.getloadavg()[0]  # other jobs on the machine skew the ratios: say how busy it was
        with ProcessPoolExecutor(args.workers) as pool:
            run_codec(pool, jpegs[:50], args.workers)  # start the processes, warm imports and the page cache
            run_codec(pool, jpegs[:50], args.workers, window_loop)
            stream = ShardStream(url, Split(), args.batch, AlexNetCrop(CROP), seed=0)
            run_loader(stream, args.workers, 0)  # likewise: start its (persistent) workers, untimed
            for r in range(args.rounds):
                n, t = run_loader(stream, args.workers, r + 1)
                rates["loader"].append(n / t)
                rates["codec"].append(run_codec(pool, jpegs, args.workers))
                rates["window"].append(run_codec(pool, jpegs, args.workers, window_loop))
                n, t = run_naive(jpegs, args.workers, args.batch)
                rates["naive"].append(n / t)
        rate = {k: statistics.median(v) for k, v in rates.items()}
        w = args.workers
        print(f"loader (ShardStream, AlexNet crop+flip, {w} workers, batch {args.batch}): {rate['loader']:7.1f} img/s")
        print(f"codec  (bare decode+crop+flip loop x {w} processes):            {rate['codec']:7.1f} img/s")
        print(f"window (bare windowed-decode loop x {w} processes):             {rate['window']:7.1f} img/s")
        print(f"naive  (per-sample PIL pipeline, DataLoader {w} workers):        {rate['naive']:7.1f} img/s")
        print(f"loader / codec limit: {rate['loader'] / rate['codec']:.2f}x (goal >= 0.9x)")
        print(f"loader / naive PIL:   {rate['loader'] / rate['naive']:.2f}x (goal >= 1.8x)")
        print(f"loader / window loop: {rate['loader'] / rate['window']:.2f}x (the loader's own overhead over its decoder)")
        rounds = list(zip(rates["loader"], rates["codec"], rates["window"], rates["naive"]))  # each round's, back to back
        for name, i in (("codec", 1), ("naive", 3), ("window", 2)):
            print(f"per round, loader / {name}:", " ".join(f"{r[0] / r[i]:.2f}" for r in rounds))
        print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
