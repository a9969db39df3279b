"""How close `cnnctl shard --resize 256` comes to the codec limit.

Builds an ImageNet-like corpus (JPEGs of about 500x375 at quality 96, random crops and scales of
scikit-image's photos, in class folders), then measures in the same run, interleaved over rounds:

- pack:  the pack function with `cnnctl shard`'s options (--resize 256, --workers 2), listing included;
- codec: a bare read -> decode (DCT-scaled) -> resize -> encode loop over the same files, one loop
         per worker process: what the codecs alone allow (the goal is pack >= 0.9x this);
- naive: a one-process Pillow loop (open, convert, resize, save), as a script would do it.

Each in CPU-seconds per image (user + sys of every process it runs; bench/cputime.py), which other
jobs on the machine barely change, and in img/s, which they do: medians and [min-max] over rounds.

Usage: python bench/shard.py [--images 2000] [--workers 2] [--rounds 3] [--stats-fraction F]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image
from skimage import data as photos

from cputime import Rounds  # bench/cputime.py
from cnnctl.shards import codec
from cnnctl.shards.sources import open_source
from cnnctl.shards import writer
from cnnctl.shards.writer import PackOptions, pack

SHORT = 256
IMAGENET_STATS_FRACTION = writer.STATS_SAMPLE / 1_281_167
QUALITY = 90


def build_corpus(root: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    srcs = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket(), photos.immunohistochemistry(),
            photos.hubble_deep_field()]
    paths = []
    for i in range(n):
        src = srcs[rng.integers(len(srcs))]
        h, w = src.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = int(h * scale), int(w * scale)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (500, int(rng.integers(333, 376))) if rng.random() < 0.75 else (int(rng.integers(333, 376)), 500)
        img = Image.fromarray(src[top : top + ch, left : left + cw]).resize(size, Image.BICUBIC)
        folder = root / f"n{i % 50:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"n{i % 50:08d}_{i}.JPEG"
        img.save(path, quality=96)
        paths.append(path)
    return paths


def codec_loop(paths: list[Path]) -> int:
    """Bare decode -> resize -> encode, the same codec calls the sharder makes; returns bytes out."""
    out = 0
    for p in paths:
        data = p.read_bytes()
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        tw, th = codec.output_size(w, h, SHORT)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=tw, min_height=th)
        if arr.shape[:2] != (th, tw):
            arr = np.asarray(Image.fromarray(arr).resize((tw, th), codec.RESAMPLE))
        out += len(simplejpeg.encode_jpeg(arr, quality=QUALITY, colorspace="RGB", colorsubsampling="420"))
    return out


def naive_loop(paths: list[Path]) -> int:
    out = 0
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        img = img.resize((round(w * SHORT / min(w, h)), round(h * SHORT / min(w, h))))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=QUALITY)
        out += buf.tell()
    return out


def run_pack(root: Path, dest: Path, workers: int, out: dict) -> int:
    _, _, [listing] = open_source(str(root))
    manifest, _ = pack(listing, str(dest), "bench", PackOptions(resize=SHORT, quality=QUALITY, workers=workers,
                                                                overwrite=True))
    out["shard_bytes"] = sum(s["bytes"] for s in manifest["shards"])
    return manifest["num_samples"]


def run_codec(paths: list[Path], workers: int) -> int:
    with ProcessPoolExecutor(workers) as pool:  # a pool per round, as pack starts its own
        list(pool.map(codec_loop, [paths[i::workers] for i in range(workers)]))
    return len(paths)


def run_naive(paths: list[Path]) -> int:
    naive_loop(paths)
    return len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="corpus size")
    ap.add_argument("--workers", type=int, default=2, help="worker processes for pack and the codec loop")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--stats-fraction", type=float, default=IMAGENET_STATS_FRACTION,
                    help="fraction of the images whose pixels go into the RGB statistics and the mean image "
                         "(default: ImageNet's, 10,000 of 1,281,167; 1 samples every image)")
    args = ap.parse_args()
    # pack samples up to STATS_SAMPLE images for its statistics: every image of a small corpus, under
    # 1 % of ImageNet. Sample the corpus at the rate a full-size run would, or pack pays for statistics
    # a real run does not compute.
    writer.STATS_SAMPLE = max(1, round(args.images * args.stats_fraction))
    with tempfile.TemporaryDirectory() as tmp:
        root, dest = Path(tmp, "corpus"), Path(tmp, "shards")
        t0 = time.perf_counter()
        paths = build_corpus(root, args.images)
        mean_in = sum(p.stat().st_size for p in paths) / len(paths)
        print(f"corpus: {len(paths)} JPEGs, ~500x375 q96, {mean_in / 1024:.1f} KiB each, "
              f"built in {time.perf_counter() - t0:.1f}s; "
              f"statistics from {writer.STATS_SAMPLE} of them (--stats-fraction {args.stats_fraction:.4g})")
        n, out = len(paths), {}
        codec_loop(paths[:20]), naive_loop(paths[:20])  # warm the page cache and imports
        load0 = os.getloadavg()[0]
        rounds = Rounds()
        for _ in range(args.rounds):
            rounds.run("pack", run_pack, root, dest, args.workers, out)
            rounds.run("codec", run_codec, paths, args.workers)
            rounds.run("naive", run_naive, paths[: n // 4])  # a quarter is enough for a one-process baseline
        codec_bytes = codec_loop(paths[:200]) / 200
        print(f"medians and [min-max] over {args.rounds} interleaved rounds; "
              "CPU-s: user + sys of every process involved")
        print(rounds.line("pack", f"pack  (cnnctl shard --resize {SHORT} --workers {args.workers}, listing included)"))
        print(rounds.line("codec", f"codec (decode->resize->encode x {args.workers} processes)"))
        print(rounds.line("naive", "naive (one-process PIL loop)"))
        print(rounds.ratio("pack", "codec", "pack / codec limit") + "  (goal >= 0.9x)")
        print(rounds.ratio("pack", "naive", "pack / naive PIL"))
        print(f"bytes per image: {out['shard_bytes'] / n:.0f} in shards (tar headers, .cls, .json included), "
              f"{codec_bytes:.0f} JPEG alone")
        print(f"load average (1 min) before and after the rounds: {load0:.1f}, {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
