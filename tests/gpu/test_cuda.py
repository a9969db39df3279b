"""The GPU path: LRN on CUDA, bf16 autocast and channels_last in the Trainer over an NCCL group.

Marked `gpu`: without CUDA they are deselected (the pytest header says so), never skipped after
starting. Run them on a GPU machine with `pytest -q tests/gpu`. NCCL takes one GPU per rank, so
on a one-GPU machine the group has one rank; the tower pair's NCCL collectives need two GPUs.
"""

from __future__ import annotations

import pytest
import torch

from cnnctl.models.lrn import PAPER, lrn
from tests.orchestrator.test_precision import run_trainer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_lrn_on_cuda_matches_cpu(fmt):
    torch.manual_seed(0)
    x = (torch.randn(8, 96, 27, 27) * 20).relu().contiguous(memory_format=fmt)
    g = torch.randn_like(x)
    out = {}
    for device in ("cpu", "cuda"):
        a = x.to(device).detach().requires_grad_()  # a fresh leaf on each device
        y = lrn(a, *PAPER, groups=2)
        y.backward(g.to(device))
        out[device] = (y.detach().cpu(), a.grad.cpu())
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-4, atol=1e-6)


def test_lrn_in_bf16_keeps_the_alpha_term():
    """bf16 in, bf16 out, but the normalisation is fp32 inside: within bf16 rounding of the fp32 result."""
    torch.manual_seed(0)
    x = (torch.randn(8, 96, 27, 27, device="cuda") * 20).relu()  # conv1-like magnitudes: alpha*sum(a^2) ~ 0.2
    ref = lrn(x, *PAPER)
    a = x.bfloat16().requires_grad_()
    y = lrn(a, *PAPER)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    r = x.clone().requires_grad_()
    lrn(r, *PAPER).sum().backward()
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad.float(), r.grad, rtol=2e-2, atol=2e-3)


def test_trainer_on_cuda_bf16_channels_last_over_nccl(fmnist_root, tmp_path):
    """The Trainer on a one-rank NCCL group: the forward runs in bf16 on the GPU, channels_last, and it learns."""
    seen, metrics = run_trainer(fmnist_root, tmp_path, backend="nccl", sets=["parallel.gpus=true", "schedule.epochs=8"])
    assert seen == {("cuda", torch.bfloat16, True)}, seen
    # 600 images, 4 steps an epoch: it learns, if noisily (seen on an H100: val loss 2.26 -> 1.76, top-1 0.22 -> 0.33).
    loss, top1 = [m["val_loss"] for m in metrics], [m["val_top1"] for m in metrics]
    assert loss[-1] < loss[0] - 0.2 and top1[-1] > 0.2, (loss, top1)  # 10 classes: chance is 0.1
