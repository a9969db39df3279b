import pytest
import torch
from torch import nn

from cnnctl import models
from cnnctl.models.dense import dense_scores, to_dense


def build_with_signal(name: str, **overrides) -> nn.Module:
    """A CPU model with He-scaled pseudo-random weights, so the logits are far from zero.

    The weights repeat a random block of prime length (no period lines up with a layer's shape):
    sampling 100M+ values for every VGG weight would take seconds.
    """
    with torch.device("meta"):
        model = models.build(name, **overrides)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    block = torch.randn(10_007, generator=gen)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight.view(-1)
                w.copy_(block.repeat(w.numel() // block.numel() + 1)[: w.numel()])
                w.mul_((2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(block[: m.bias.numel()] * 0.1)
    return model.eval()


# (name, overrides, a larger input side, the score map's side there)
CASES = [
    ("alexnet", {"towers": 2}, 259, 2),
    ("alexnet", {"towers": 1}, 291, 3),
    ("alexnet-owt", {}, 256, 2),
    ("alexnet-small", {"num_classes": 10}, 36, 2),
    ("vgg-a", {"num_classes": 10}, 256, 2),
]


@pytest.mark.slow  # paper-size models: ~10 s of CPU in all
@pytest.mark.parametrize("name,overrides,large,side", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_dense_matches_logits_and_grows(name, overrides, large, side):
    model = build_with_signal(name, **overrides)
    dense = to_dense(model).eval()
    size = model.input_size
    x = torch.randn(2 if size < 224 else 1, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        scores = dense(x)
        assert scores.shape == (x.shape[0], logits.shape[1], 1, 1)
        torch.testing.assert_close(dense_scores(dense, x), logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())
        assert logits.abs().max() > 0.1  # a real signal, not zeros matching zeros
        big = dense(torch.randn(1, 3, large, large))
    assert big.shape == (1, logits.shape[1], side, side)


def test_dense_shares_weights():
    model = models.build("alexnet-small", num_classes=10).eval()
    dense = to_dense(model)
    fc6, conv6 = model.fcs[0], dense.classifier[0]
    assert isinstance(conv6, nn.Conv2d) and conv6.kernel_size == (2, 2)
    assert conv6.weight.data_ptr() == fc6.weight.data_ptr()
    assert dense.features is model.features
    assert [type(m).__name__ for m in dense.classifier] == [
        "Conv2d", "ReLU", "Dropout", "Conv2d", "ReLU", "Dropout", "Conv2d"]
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        before = dense(x).clone()
        fc6.weight.mul_(2.0)  # training the original moves the dense net too
        assert not torch.allclose(dense(x), before)
    assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for p in model.parameters())


def test_vgg_fc6_becomes_7x7():
    with torch.device("meta"):
        dense = to_dense(models.build("vgg-d"))
    convs = [m for m in dense.classifier if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (512, 4096, (7, 7)), (4096, 4096, (1, 1)), (4096, 1000, (1, 1))]
    assert dense.input_size == 224


@pytest.mark.parametrize("name,overrides,size", [
    ("vgg-a", {"width": 0.125}, 32),     # a 1x1 feature map stretched to 7x7
    ("vgg-d", {"width": 0.125}, 96),     # 3x3 -> 7x7: uneven pooling windows
    ("alexnet", {"width": 0.25}, 99),    # 2x2 -> 6x6 across two towers
])
def test_dense_below_the_native_size_folds_the_avgpool_into_fc6(name, overrides, size):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, **overrides).eval()
    dense = to_dense(model, size).eval()
    assert dense.input_size == size
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        logits = model(x)
        torch.testing.assert_close(dense_scores(dense, x), logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())
        assert dense(torch.randn(1, 3, size + 64, size + 64)).shape[-1] > 1  # larger Q: a score map
