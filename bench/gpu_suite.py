"""Every GPU figure the docs quote, in one command, each with its baseline measured in the same run.

Builds its own JPEG shards in a temporary folder (scikit-image's bundled photos, cut and scaled as
bench/shard.py's corpus; `cnnctl shard`'s --resize 256 --center-crop, so AlexNet's mean image is
written too), then measures, every figure as the median and [min-max] of --rounds rounds:

- synthetic step: AlexNet and VGG-A training steps (bench/gpu_step.py's loop) in img/s, fp32/bf16 x
  contiguous/channels_last eager, and channels_last under parallel.compile (inductor), against fp32
  contiguous eager;
- LRN: cnnctl's fused LRN forward+backward against torch's local_response_norm (bench/lrn.py);
- train: `cnnctl train --gpus` (paper AlexNet at mp=1, bf16) on the shards with the loader workers'
  windowed decoder and with data.decoder=device, each at the best of the --workers counts, against
  the synthetic step's ceiling (the device decoder against the worker-side one); epochs after the
  first are the rounds;
- eval: `cnnctl eval --gpus` on one Ray worker, AlexNet's ten views and VGG-A's dense multi-scale
  evaluation with flips, end to end and the evaluation alone, against one CPU process.

Prints a markdown table and writes every figure to --json. `--device cpu` is the dry form: the same
code on the CPU at tiny sizes (width-1/8 models, a few steps and images, one loader worker, dynamo's
eager backend in place of inductor), so that the suite runs in a minute and its test keeps it working;
its figures mean nothing.

Usage: python bench/gpu_suite.py [--device cuda|cpu] [--images 4800] [--workers 4,8,14] [--rounds 3]
                                 [--json runs/gpu_suite.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # run as a script: its siblings and the repository

import torch  # noqa: E402

from cnnctl.shards.layouts import class_folders  # noqa: E402
from cnnctl.shards.writer import PackOptions, pack  # noqa: E402
from gpu_suite_ray import PRECISION, PREFIX, eval_rows, train_rows  # noqa: E402  (this folder)
from gpu_suite_rows import Sizes, lrn_rows, step_rows  # noqa: E402
from shard import build_corpus  # noqa: E402  (bench/shard.py)

SIZES = {
    "cuda": Sizes("cuda", rounds=3, steps=20, step_batch={"alexnet": 128, "vgg-a": 64}, width=None,
                  compile_backend="inductor", train_images=4800, val_images=256, eval_images=2048, cpu_images=8,
                  loader_workers=[4, 8, 14], epochs=4, train_batch=128, scales=[256, 384, 512],
                  lrn_shape=(128, 96, 55, 55)),
    "cpu": Sizes("cpu", rounds=1, steps=1, step_batch={"alexnet": 2, "vgg-a": 2}, width=0.125,
                 compile_backend="eager", train_images=48, val_images=8, eval_images=8, cpu_images=4,
                 loader_workers=[1], epochs=2, train_batch=16, scales=[256], lrn_shape=(2, 16, 13, 13)),
}
SOURCES = 300  # distinct photos cut for the corpus; a split of more links to them again under new names


def build_shards(tmp: Path, sizes: Sizes, cores: int) -> Path:
    """The suite's shards under tmp/shards: splits train, val (training's validation, VGG's dense
    evaluation), eval (AlexNet's ten views) and cpu (the CPU baselines' evaluation)."""
    photos = build_corpus(tmp / "photos", min(SOURCES, sizes.train_images))
    dest = tmp / "shards"
    splits = {"train": sizes.train_images, "val": sizes.val_images, "eval": sizes.eval_images,
              "cpu": sizes.cpu_images}
    for split, n in splits.items():
        for i in range(n):
            src = photos[i % len(photos)]  # a photo again under a new name, in its own class folder
            folder = tmp / split / src.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            os.link(src, folder / f"{split}_{i}.JPEG")
        pack(class_folders(tmp / split, split), str(dest), PREFIX,
             PackOptions(resize=256, center_crop=True, quality=90, shard_size=500, workers=cores))
    return dest


def num(v: float) -> str:
    """10,140 rather than 1.01e+04; three significant digits below 100."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def table(rows: list[dict]) -> str:
    lines = ["| section | figure | value, median [min-max] | baseline | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['group']} | {r['name']} | skipped: {r['skipped']} | | |")
            continue
        lo, hi = r["spread"]
        value = f"{num(r['value'])} {r['unit']} [{num(lo)}-{num(hi)}]"
        base = f"{r['baseline']}: {num(r['baseline_value'])}" if r["baseline"] else "(the baseline)"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['group']} | {r['name']}{note} | {value} | {base} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=sorted(SIZES), default="cuda", help="cpu: the dry form, tiny sizes")
    ap.add_argument("--images", type=int, help="training split's images (cuda: 4800, as docs/training.md's figure)")
    ap.add_argument("--workers", type=lambda v: [int(w) for w in v.split(",")],
                    help="loader worker counts swept per decoder (cuda: 4,8,14)")
    ap.add_argument("--rounds", type=int, help="rounds per figure (cuda: 3)")
    ap.add_argument("--json", default="runs/gpu_suite.json", help="where every figure is written")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_suite: --device cuda but torch sees no CUDA device; --device cpu runs the dry form")
    given = {"train_images": args.images, "loader_workers": args.workers, "rounds": args.rounds}
    sizes = dataclasses.replace(SIZES[args.device], **{k: v for k, v in given.items() if v is not None})
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    cores = len(os.sched_getaffinity(0))
    rows, seconds, t0 = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        shards = build_shards(Path(tmp), sizes, cores)
        seconds["shards"] = time.perf_counter() - t0
        step, rates = step_rows(sizes)
        rows += step
        seconds["synthetic step"] = time.perf_counter() - t0 - sum(seconds.values())
        rows += lrn_rows(sizes)
        seconds["LRN"] = time.perf_counter() - t0 - sum(seconds.values())
        ceiling = rates[f"alexnet {PRECISION} channels_last"]  # the training runs' model and precision
        rows += train_rows(sizes, shards, Path(tmp, "runs"), cores, ceiling)
        seconds["train"] = time.perf_counter() - t0 - sum(seconds.values())
        rows += eval_rows(sizes, shards, Path(tmp, "checkpoints"), cores)
        seconds["eval"] = time.perf_counter() - t0 - sum(seconds.values())
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry form: the figures mean nothing)"
    header = (f"gpu_suite on {device}, {cores} cores, torch {torch.__version__}; {sizes.train_images} training "
              f"images; {sizes.rounds} rounds; {time.perf_counter() - t0:.0f} s ("
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")")
    print(header)
    print(table(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"header": header, "device": args.device, "seconds": seconds,
                                           "rows": rows}, indent=1))
    print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
