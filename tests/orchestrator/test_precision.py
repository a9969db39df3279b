"""parallel.precision=bf16: the Trainer's forward runs under bf16 autocast; weights stay fp32.

`run_trainer` drives the plain-PyTorch Trainer (no Ray) on a one-rank process group; the GPU test
in tests/gpu uses it with NCCL.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cnnctl.orchestrator.cluster import free_port
from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.train import Trainer, prepare_run


def run_trainer(data: str, out, backend: str, sets: list[str]) -> tuple[set, list[dict]]:
    """Train on a one-rank `backend` group with bf16 (unless `sets` say otherwise); returns ({(device
    type, conv input dtype, channels_last)} seen by conv1, the epochs' metrics). Each epoch's
    checkpoint is copied to out/checkpoint_<epoch> (Ray Train would persist it)."""
    cfg = resolve("demo-fashion", None, [f"data.root={data}", f"run.storage={out}", "run.name=bf16",
                                         "parallel.workers_per_node=1", "parallel.precision=bf16", "run.log_every=1000",
                                         *sets])
    prepare_run(cfg)  # build_trainer does this before the workers start
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        trainer = Trainer(cfg)
        seen = set()
        conv1 = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv1.register_forward_hook(lambda m, args, out: seen.add(
            (out.device.type, out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
        metrics = []
        def report(m: dict, folder: str | None) -> None:
            metrics.append(m)
            if folder:
                shutil.copytree(folder, Path(out) / f"checkpoint_{m['epoch']:06d}")

        trainer.run(report)
    finally:
        dist.destroy_process_group()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    return seen, metrics


@pytest.mark.slow  # a Trainer on a gloo process group
def test_bf16_autocast_on_cpu(fmnist_root, tmp_path):
    seen, metrics = run_trainer(fmnist_root, tmp_path, backend="gloo", sets=["schedule.epochs=1", "data.limit=256"])
    assert seen == {("cpu", torch.bfloat16, True)}
    assert len(metrics) == 1 and metrics[0]["train_loss"] == metrics[0]["train_loss"]  # finite, not NaN
    assert 0.0 <= metrics[0]["val_top1"] <= 1.0 and metrics[0]["val_count"] == 200
