"""LRN forward+backward cost against ReLU (the baseline) and torch's eager LRN, in one process.

    .venv/bin/python bench/lrn.py [--shape 128 64 32 32] [--threads N] [--repeat 10] [--channels-last]
                                  [--device cuda] [--dtype bf16]

Timing is the minimum of --repeat rounds after one warm-up; candidates take turns in each round.
The issue's target: ours/ReLU <= 5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cnnctl.models.lrn import PAPER, lrn, to_torch  # noqa: E402


def fwd_bwd_ms(candidates: dict, x: torch.Tensor, grad: torch.Tensor, repeat: int) -> dict[str, float]:
    """Min-of-repeat fwd+bwd milliseconds per candidate. The candidates take turns within each round,
    so a burst of load elsewhere on the machine hits all of them alike."""
    def once(fn) -> float:
        a = x.detach().requires_grad_()
        sync()
        start = time.perf_counter()
        fn(a).backward(grad)
        sync()
        return time.perf_counter() - start

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    for fn in candidates.values():
        once(fn)  # warm-up
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):
        for name, fn in candidates.items():
            best[name] = min(best[name], once(fn))
    return {name: t * 1e3 for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[128, 64, 32, 32])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: ours computes in fp32 inside")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    x = torch.randn(*args.shape, device=args.device).to(dtype=dtype, memory_format=fmt)
    grad = torch.randn_like(x)
    p = PAPER
    candidates = {
        "relu": F.relu,
        "torch_lrn": lambda a: F.local_response_norm(a, **to_torch(p)),
        "cnnctl_lrn": lambda a: lrn(a, *p),
    }
    ms = fwd_bwd_ms(candidates, x, grad, args.repeat)
    layout = "channels_last" if args.channels_last else "contiguous"
    print(f"shape={tuple(x.shape)} {args.dtype} {args.device} {layout} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} lrn={tuple(p)} (paper convention)")
    for name, t in ms.items():
        print(f"  {name:<11} fwd+bwd {t:8.2f} ms   {t / ms['relu']:6.2f}x relu")
    print(f"ratio ours/relu  = {ms['cnnctl_lrn'] / ms['relu']:.2f}  (target <= 5)")
    print(f"ratio torch/ours = {ms['torch_lrn'] / ms['cnnctl_lrn']:.2f}")


if __name__ == "__main__":
    main()
