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

Each contender is measured in CPU-seconds per image (user + sys of every process it runs: this one,
the DataLoader workers, the pool; bench/cputime.py), which other jobs on the machine barely change,
and in img/s, which they do; both as the median and the spread [min-max] over the rounds. The ratios
are per round, and their median and spread are printed with every round's value. The loader's JPEG
decoder is data.decoder's choice (--decoder; auto: shards/decoders.py measures and caches it).

With --augment vgg it measures VGG's scale jitter instead (S in [256, 512], random 224 crop of the
rescaled image, flip): the loader decoding only the pixels the crop's resize reads, against the same
loader decoding whole images, interleaved.

With --decoder device it measures data.decoder=device on its CPU backend: the loader's workers batch
the JPEG bytes and the consuming process decodes them (as the trainer's `counted` does), against the
worker-side decoder (auto's choice), interleaved (--augment alexnet or vgg).

With a list of worker counts (--workers 1,2,6,14) it measures only the loader, as the trainer takes
its batches (pinned and copied to --device cuda; the same loop without either on the CPU), at each
count, interleaved, and prints each count's CPU-seconds per image over the first count's (goal: within
1.1x at 14 workers, where the batch rings must still be on).

Usage: python bench/loader.py [--images 4000] [--workers 2|1,2,6,14] [--rounds 3] [--batch 128]
                              [--augment alexnet|vgg] [--decoder auto|windowed|whole|device] [--device cpu|cuda]
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

from cnnctl.shards import codec, decoders, reader
from cnnctl.shards import manifest as mf
from cnnctl.shards.batching import shared_memory_bytes
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.transforms import AlexNetCrop, ScaleJitter
from cnnctl.shards.writer import PackOptions, pack
from cputime import Rounds  # bench/cputime.py
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


def window_loop(jpegs: list[bytes]) -> int:
    """decode of the crop's window only, flipped in the decoder, into one reused buffer."""
    out = np.empty((CROP, CROP, 3), np.uint8)
    for data, top, left, flip in _plans(jpegs):
        codec.decode_window(data, out, top, left, flip)
    return len(jpegs)


def codec_loop(jpegs: list[bytes]) -> int:
    """decode -> random crop of the central square -> flip -> contiguous copy; returns images."""
    rng = random.Random(0)
    for data in jpegs:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        h, w = img.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2 + rng.randrange(side - CROP + 1), (w - side) // 2 + rng.randrange(side - CROP + 1)
        img = img[top : top + CROP, left : left + CROP]
        out = torch.from_numpy(img)  # copied out the way the reader does it: torch flips ~15x faster than numpy
        (out.flip(1) if rng.random() < 0.5 else out.clone())
    return len(jpegs)


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
        left = (w - side) // 2 + random.randrange(side - CROP + 1)
        top = (h - side) // 2 + random.randrange(side - CROP + 1)
        img = img.crop((left, top, left + CROP, top + CROP))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()), self.labels[i]


def run_loader(stream: ShardStream, workers: int, epoch: int) -> int:
    """One epoch; the stream lives across rounds as the trainer's does across epochs, and so do its
    workers (recycle=True keeps them): each round pays the epoch's start (reading and walking the
    shards, filling the shuffle buffer) but not the workers' start, which the warm-up round took."""
    stream.set_epoch(epoch)
    return sum(len(images) for images, _ in loader(stream, workers=workers, recycle=True))  # as make_loader does


def run_to_device(stream: ShardStream, workers: int, epoch: int, device: torch.device) -> int:
    """One epoch as the trainer takes it (orchestrator/data.py make_loader): pinned batches on CUDA,
    each copied to the device; on the CPU the same loop, with nothing to pin or copy."""
    stream.set_epoch(epoch)
    n = 0
    for images, labels in loader(stream, workers=workers, pin_memory=device.type == "cuda", recycle=True):
        images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        n += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n


def compare_workers(url: str, transform, windowed: bool, args: argparse.Namespace) -> None:
    """The loader's CPU-seconds per image at each worker count, against 1 worker's, interleaved."""
    device, counts = torch.device(args.device), args.workers
    streams = {w: ShardStream(url, Split(), args.batch, transform, seed=0, windowed=windowed) for w in counts}
    for w, stream in streams.items():
        run_to_device(stream, w, 0, device)  # start its persistent workers, untimed
    # The fallback: the most workers without rings (each batch in fresh shared memory), as a stream
    # whose rings exceed its share of the shared memory runs.
    top, no_rings = counts[-1], ShardStream(url, Split(), args.batch, transform, seed=0, windowed=windowed)
    budget, reader.ring_budget = reader.ring_budget, lambda: 0
    run_to_device(no_rings, top, 0, device)
    reader.ring_budget = budget
    rounds = Rounds()
    for r in range(args.rounds):
        for w, stream in streams.items():
            rounds.run(f"w{w}", run_to_device, stream, w, r + 1, device)
        rounds.run("off", run_to_device, no_rings, top, r + 1, device)
    print(f"medians and [min-max] over {args.rounds} interleaved rounds; CPU-s: user + sys of every process involved; "
          f"batches to {device}{' (pinned)' if device.type == 'cuda' else ' (no pinning or copy on the CPU)'}; "
          f"shared memory {shared_memory_bytes() / 1e9:.1f} GB")
    for w, stream in streams.items():
        rings = f"rings of {len(stream.rings[0].buffers)}" if stream.rings else "rings off"
        print(rounds.line(f"w{w}", f"loader, {w:2d} workers ({rings})"))
    print(rounds.line("off", f"loader, {top:2d} workers (rings off)"))
    for w in counts[1:]:
        print(rounds.ratio(f"w{counts[0]}", f"w{w}", f"{w} workers / {counts[0]}") + "  (goal <= 1.1x)")
    print(rounds.ratio(f"w{top}", "off", f"{top} workers, rings off / on"))
    for stream in [*streams.values(), no_rings]:
        stream.close()


def run_codec(pool: ProcessPoolExecutor, jpegs: list[bytes], workers: int, loop=codec_loop) -> int:
    """W simultaneous bare loops over a W-th of the images each."""
    return sum(pool.map(loop, [jpegs[i::workers] for i in range(workers)]))


def run_naive(jpegs: list[bytes], workers: int, batch: int) -> int:
    data = DataLoader(NaivePIL(jpegs, [0] * len(jpegs)), batch_size=batch, shuffle=True, drop_last=True,
                      num_workers=workers)
    return sum(len(images) for images, _ in data)


def compare_vgg(url: str, args: argparse.Namespace) -> None:
    """VGG scale jitter: windowed decoding against whole-image decoding, the same loader otherwise."""
    streams = {way: ShardStream(url, Split(), args.batch, ScaleJitter(224, 256, 512), seed=0,
                                windowed=way == "windowed")
               for way in ("whole", "windowed")}
    for stream in streams.values():
        run_loader(stream, args.workers[0], 0)  # start the persistent workers, untimed
    load0 = os.getloadavg()[0]
    rounds = Rounds()
    for r in range(args.rounds):
        for way, stream in streams.items():
            rounds.run(way, run_loader, stream, args.workers[0], r + 1)
    print(rounds.line("whole", "loader, VGG scale jitter, whole-image decode"))
    print(rounds.line("windowed", "loader, VGG scale jitter, windowed decode"))
    print(rounds.ratio("windowed", "whole", "windowed / whole"))
    print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")


def run_decoded(stream: ShardStream, workers: int, epoch: int) -> int:
    """One epoch, each batch as the trainer takes it (ShardStream.counted): under data.decoder=device
    decoded here, in this process, after the loader's workers batched the JPEG bytes."""
    stream.set_epoch(epoch)
    return sum(len(stream.decoded(batch)[0]) for batch in loader(stream, workers=workers, recycle=True))


def compare_device(url: str, transform, args: argparse.Namespace) -> None:
    """data.decoder=device on its CPU backend (the consuming process decodes) against the worker-side
    decoder (auto's choice), the same loader otherwise, interleaved; CPU-s of every process."""
    w, worker_way = args.workers[0], decoders.windowed("auto", transform, url, mf.load(url))
    streams = {way: ShardStream(url, Split(), args.batch, transform, seed=0, windowed=worker_way)
               for way in ("worker", "device")}
    streams["device"].decode_on_device("cpu")
    for stream in streams.values():
        run_decoded(stream, w, 0)  # start the persistent workers, untimed
    load0, rounds = os.getloadavg()[0], Rounds()
    for r in range(args.rounds):
        for way, stream in streams.items():
            rounds.run(way, run_decoded, stream, w, r + 1)
    print(f"medians and [min-max] over {args.rounds} interleaved rounds; CPU-s: user + sys of every process involved")
    print(rounds.line("worker", f"loader, {type(transform).__name__}, {w} workers decoding "
                                f"({'windowed' if worker_way else 'whole image'})"))
    print(rounds.line("device", f"loader, {type(transform).__name__}, {w} workers batching bytes, "
                                "decoded in the consuming process (data.decoder=device, CPU backend)"))
    print(rounds.ratio("device", "worker", "device (CPU backend) / worker-side"))
    print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    for stream in streams.values():
        stream.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000, help="corpus size")
    ap.add_argument("--workers", type=lambda v: [int(w) for w in v.split(",")], default=[2],
                    help="DataLoader workers (and bare codec processes); a list (1,2,6,14) compares the loader's "
                         "CPU-s per image at each count with the first's")
    ap.add_argument("--device", default="cpu", help="with a list of --workers: where batches go (cuda: pinned, copied)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--batch", type=int, default=128, help="batch size")
    ap.add_argument("--augment", choices=("alexnet", "vgg"), default="alexnet", help="the train transform measured")
    ap.add_argument("--decoder", choices=decoders.CHOICES, default="auto",
                    help="the loader's JPEG decoder (data.decoder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, dest = Path(tmp, "corpus"), Path(tmp, "shards")
        t0 = time.perf_counter()
        build_corpus(root, args.images)
        manifest, _ = pack(class_folders(root, "train"), str(dest), "bench",
                           PackOptions(resize=256, quality=90, shard_size=250,
                                       workers=min(max(args.workers), os.cpu_count() or 1)))
        url = mf.manifest_url(str(dest), "bench", "train")
        jpegs = tar_jpegs(sorted(dest.glob("bench-train-*.tar")))
        sizes = [simplejpeg.decode_jpeg_header(j)[:2] for j in jpegs[:200]]
        print(f"corpus: {len(jpegs)} JPEGs in {len(manifest['shards'])} shards, shorter side 256 "
              f"(e.g. {sizes[0][1]}x{sizes[0][0]}), "
              f"{sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB each; built in {time.perf_counter() - t0:.1f}s")
        if args.decoder == "device":
            return compare_device(url, ScaleJitter(224, 256, 512) if args.augment == "vgg" else AlexNetCrop(CROP), args)
        if args.augment == "vgg":
            return compare_vgg(url, args)
        transform = AlexNetCrop(CROP)
        windowed = decoders.windowed(args.decoder, transform, url, manifest)
        print(f"loader decoder: {'windowed' if windowed else 'whole image'} (data.decoder={args.decoder}; "
              f"cache {decoders.cache_file()})")
        load0 = os.getloadavg()[0]  # other jobs on the machine skew wall-clock ratios: say how busy it was
        if len(args.workers) > 1:
            compare_workers(url, transform, windowed, args)
            print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} CPUs")
            return
        rounds, w = Rounds(), args.workers[0]
        with ProcessPoolExecutor(w) as pool:
            run_codec(pool, jpegs[:50], w)  # start the processes, warm imports and the page cache
            run_codec(pool, jpegs[:50], w, window_loop)
            stream = ShardStream(url, Split(), args.batch, transform, seed=0, windowed=windowed)
            run_loader(stream, w, 0)  # likewise: start its (persistent) workers, untimed
            for r in range(args.rounds):
                rounds.run("loader", run_loader, stream, w, r + 1)
                rounds.run("codec", run_codec, pool, jpegs, w)
                rounds.run("window", run_codec, pool, jpegs, w, window_loop)
                rounds.run("naive", run_naive, jpegs, w, args.batch)
        print(f"medians and [min-max] over {args.rounds} interleaved rounds; "
              "CPU-s: user + sys of every process involved")
        print(rounds.line("loader", f"loader (ShardStream, AlexNet crop+flip, {w} workers, batch {args.batch})"))
        print(rounds.line("codec", f"codec  (bare simplejpeg decode+crop+flip loop x {w} processes)"))
        print(rounds.line("window", f"window (bare windowed-decode loop x {w} processes)"))
        print(rounds.line("naive", f"naive  (per-sample PIL pipeline, DataLoader {w} workers)"))
        fastest = min(("codec", "window"), key=lambda k: statistics.median(rounds.cpu[k]))
        print(rounds.ratio("loader", fastest, f"loader / fastest bare loop ({fastest})") + "  (goal >= 0.9x)")
        print(rounds.ratio("loader", "naive", "loader / naive PIL") + "  (goal >= 1.8x)")
        print(rounds.ratio("loader", "window", "loader / window loop")
              + "  (the loader's own overhead over its decoder)")
        print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
