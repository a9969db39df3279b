"""AlexNet training-step throughput on one GPU: precision x memory format (x torch.compile), in one run.

The step is the Trainer's: uint8 batch already on the GPU -> normalise -> forward (optionally under
bf16 autocast) -> cross-entropy -> backward -> SGD (momentum 0.9, wd 5e-4), fp32 weights. Synthetic
data, so this is the compute ceiling; the decode-bound figure comes from `cnnctl train --gpus`.
Every variant is timed in the same process, taking turns over rounds; each prints img/s and its
ratio to the first (fp32, contiguous: the paper's setting).

Run on a GPU machine: python bench/gpu_step.py [--model alexnet] [--batch 128] [--steps 30] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnctl import models  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


class Variant:
    def __init__(self, name: str, size: int, args, bf16: bool, channels_last: bool, compiled: bool = False):
        torch.manual_seed(0)
        self.name, self.bf16 = name, bf16
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = models.build(args.model, num_classes=1000).cuda().to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.model = torch.compile(model) if compiled else model
        g = torch.Generator(device="cuda").manual_seed(0)
        self.images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device="cuda", generator=g)
        self.labels = torch.randint(0, 1000, (args.batch,), device="cuda", generator=g)
        self.mean, self.std = MEAN.cuda(), STD.cuda()

    def step(self) -> None:
        x = ((self.images.float() - self.mean) / self.std).contiguous(memory_format=self.fmt)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(x), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, steps: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        torch.cuda.synchronize()
        return steps * len(self.labels) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="alexnet",
                    help="a `cnnctl models` name (alexnet: the paper's two-tower net at mp=1)")
    ap.add_argument("--batch", type=int, default=128, help="images per step (the paper: 128)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add bf16 + channels_last under torch.compile")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    size = models.describe(args.model)["input_size"]
    specs = [("fp32 contiguous", False, False), ("fp32 channels_last", False, True),
             ("bf16 contiguous", True, False), ("bf16 channels_last", True, True)]
    variants = [Variant(name, size, args, bf16, cl) for name, bf16, cl in specs]
    if args.compile:
        variants.append(Variant("bf16 channels_last compiled", size, args, True, True, compiled=True))
    for v in variants:  # warm-up: cuDNN autotuning, compilation
        v.timed(5)
    best = {v.name: 0.0 for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            best[v.name] = max(best[v.name], v.timed(args.steps))
    base = best[variants[0].name]
    print(f"{args.model} {size}px batch {args.batch}, {torch.cuda.get_device_name()}, torch {torch.__version__} "
          f"(best of {args.rounds} rounds x {args.steps} steps)")
    for name, rate in best.items():
        print(f"  {name:<28} {rate:9.0f} img/s   {rate / base:5.2f}x fp32 contiguous")


if __name__ == "__main__":
    main()
