"""`cnnctl eval --gpus`'s worker body on CUDA: `evaluate.eval_part` on the GPU against the CPU, for a
centre crop and for dense multi-scale with flips (marked `gpu`: deselected without CUDA)."""

from __future__ import annotations

import pytest
import torch

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import RunConfig
from cnnctl.orchestrator.evaluate import eval_part, plan_eval
from cnnctl.shards.reader import Split

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("tta, scales, flip", [("center", None, False), ("dense", [28, 36], True)])
def test_eval_part_on_cuda_matches_the_cpu(fmnist_root, tmp_path, tta, scales, flip):
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.data.root, cfg.model.num_classes, cfg.model.width = fmnist_root, 10, 0.25
    model = models.build("alexnet-small", num_classes=10, width=0.25)
    state = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "epoch": 0, "step": 0}
    ckpt.save(tmp_path / "checkpoint_000000", model.state_dict(), cfg, state, {"epoch": 0})
    plan = plan_eval([str(tmp_path / "checkpoint_000000")], tta=tta, scales=scales, flip=flip)
    cpu, gpu = (eval_part(plan, Split(1, 2), threads=2, device=d) for d in ("cpu", "cuda"))
    assert gpu["count"] == cpu["count"] == 100
    assert abs(gpu["top1"] - cpu["top1"]) <= 2 and abs(gpu["top5"] - cpu["top5"]) <= 2  # TF32 convs may flip a near tie
    assert gpu["loss_sum"] == pytest.approx(cpu["loss_sum"], rel=1e-3)
