"""parallel.grad_compression=bf16 (torch's bf16_compress_hook) trains, and the gradient all-reduce
sends half the bytes of fp32's, as bench/comm.py's counter counts them in the collectives; under
parallel.fc=model only the data-parallel parts' all-reduce halves, the FC exchanges stay fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnctl import models
from bench.comm import Counter
from cnnctl.models.parallel import Mesh, apply_data_parallel, apply_fc_split, canonical_state_dict
from cnnctl.orchestrator.local_ranks import run_local

pytestmark = pytest.mark.slow  # gloo process groups

STEPS = 8


def _rank(rank: int, world: int, fc: int, out: str) -> None:
    counter = Counter()
    mesh = Mesh.init(1, fc)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(8, 3, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    result = {}
    for compression in ("none", "bf16"):
        torch.manual_seed(0)
        model = apply_fc_split(models.build("alexnet-small", num_classes=10, width=0.5, dropout=0.0, towers=1), mesh)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        model = apply_data_parallel(model, mesh, compression, bucket_mb=0.05)  # several buckets
        losses, counted = [], {}
        for step in range(STEPS):
            counter.calls.clear()
            counter.on = step == 1
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            counter.on = False
            losses.append(loss.item())
            counted = counted or counter.totals()
        result[compression] = {"losses": losses, "bytes": counted, "weights": canonical_state_dict(model)}
    torch.save(result, f"{out}-{rank}.pt")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world, fc", [(2, 1), (4, 2)], ids=["dp2", "owt2xdp2"])
def test_bf16_compression_trains_on_half_the_all_reduce_bytes(tmp_path, world, fc):
    run_local(_rank, world, fc, str(tmp_path / "r"), timeout_s=100)
    got = torch.load(f"{tmp_path / 'r'}-0.pt", weights_only=True)
    fp32, bf16 = got["none"], got["bf16"]
    assert bf16["losses"][-1] < 0.9 * bf16["losses"][0]  # it trains, as fp32 does
    assert bf16["losses"][-1] == pytest.approx(fp32["losses"][-1], rel=0.05)
    # half the gradient bytes, call by call's sizes summed, in the same number of calls
    assert fp32["bytes"]["all_reduce"]["calls"] == bf16["bytes"]["all_reduce"]["calls"] > 1
    assert bf16["bytes"]["all_reduce"]["payload"] * 2 == fp32["bytes"]["all_reduce"]["payload"]
    assert bf16["bytes"]["all_reduce"]["sent"] * 2 == pytest.approx(fp32["bytes"]["all_reduce"]["sent"])
    for op in ("all_gather", "reduce_scatter"):  # the OWT exchanges: activations, not compressed
        assert bf16["bytes"].get(op) == fp32["bytes"].get(op) and (op in fp32["bytes"]) == (fc > 1)
    # rounded gradients: near fp32's weights, not equal to them
    flat = {c: torch.cat([w.flatten() for w in got[c]["weights"].values()]) for c in ("none", "bf16")}
    assert 0 < float((flat["bf16"] - flat["none"]).norm() / flat["none"].norm()) < 0.01
