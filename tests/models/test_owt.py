"""One-weird-trick AlexNet (models/owt.py) against the one-device AlexNet, over gloo on loopback:
dropout's masks, the canonical state, and what the split refuses."""

from __future__ import annotations

import pytest
import torch

from cnnctl.models.alexnet import AlexNet, alexnet_small
from cnnctl.models.owt import OneWeirdTrickAlexNet
from cnnctl.models.parallel import Mesh, apply_fc_split, canonical_state_dict
from cnnctl.orchestrator.local_ranks import run_local

K, B = 2, 3


def small(dropout_first: bool) -> AlexNet:
    torch.manual_seed(0)
    return alexnet_small(num_classes=10, width=0.5, towers=1, dropout=0.5, dropout_first=dropout_first)


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def _rank(rank: int, world: int, dropout_first: bool, out: str) -> None:
    mesh = Mesh.init(1, world)
    canonical = small(dropout_first)
    model = apply_fc_split(canonical, mesh).train()
    gathered, want = canonical_state_dict(model), canonical.state_dict()
    # the slices gather back
    assert list(gathered) == list(want) and all(torch.equal(gathered[k], w) for k, w in want.items())
    torch.manual_seed(7)  # the group's shared dropout stream, as the Trainer seeds it by Mesh.replica
    torch.save(model(images(world * B)[rank * B:(rank + 1) * B]).detach(), f"{out}-{rank}.pt")


@pytest.mark.slow  # a gloo process group
@pytest.mark.timeout(90)
@pytest.mark.parametrize("dropout_first", [False, True], ids=["paper", "torchvision"])
def test_dropout_masks_are_the_one_device_masks_of_the_group_batch(tmp_path, dropout_first):
    """Dropout 0.5 in training: each rank's logits are the one-device logits of its rows, so every
    mask (on the gathered features and on each FC slice) is the one a single device draws."""
    run_local(_rank, K, dropout_first, str(tmp_path / "l"), timeout_s=75)
    model = small(dropout_first)
    torch.manual_seed(7)
    want = model.train()(images(K * B)).detach()
    other = model.eval()(images(K * B)).detach()
    assert not torch.allclose(want, other, atol=1e-3)  # dropout did change the logits
    got = torch.cat([torch.load(f"{tmp_path / 'l'}-{r}.pt", weights_only=True) for r in range(K)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_split_refuses_two_towers_and_a_width_k_does_not_divide():
    mesh = Mesh(world=2, rank=0, fc=2)
    with pytest.raises(ValueError, match="one-tower AlexNet"):
        apply_fc_split(alexnet_small(num_classes=10), mesh)  # towers=2
    with pytest.raises(ValueError, match="K=3"):
        OneWeirdTrickAlexNet(alexnet_small(num_classes=10, towers=1, width=0.5), 0, _Group(3))
    with pytest.raises(ValueError, match="K=3 must be at least 2 and divide the world size 2"):
        Mesh(world=2, rank=0, fc=3)


class _Group:
    """A stand-in process group of `n` ranks (the refusal needs only its size)."""

    def __init__(self, n: int):
        self.n = n

    def size(self) -> int:
        return self.n
