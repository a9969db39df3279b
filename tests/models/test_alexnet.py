import pytest
import torch
from torch import nn

from cnnctl import models
from cnnctl.models.alexnet import AlexNet
from cnnctl.models.lrn import LRN, PAPER, LRNParams


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name,overrides,expected",
    [
        ("alexnet", {}, 60_965_224),
        ("alexnet-owt", {}, 61_100_840),
        # One tower: conv2/4/5 read all 96/384/384 inputs, 1,413,120 more weights.
        ("alexnet", {"towers": 1}, 62_378_344),
    ],
)
def test_parameter_counts(name, overrides, expected):
    assert n_params(models.build(name, **overrides)) == expected


def test_paper_shapes_at_227():
    model = models.build("alexnet").eval()
    assert model.input_size == 227
    shapes = []
    for m in model.features:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:])))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 227, 227))
    assert logits.shape == (1, 1000)
    assert shapes == [
        (96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 13, 13),
        (384, 13, 13), (384, 13, 13), (256, 13, 13), (256, 6, 6),
    ]


def test_layer_order_lrn_pool_dropout():
    model = models.build("alexnet")
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "LRN", "MaxPool2d", "Conv2d", "ReLU", "LRN", "MaxPool2d",
                     "Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d"]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)  # overlapping pooling
    lrns = [m for m in model.features if isinstance(m, LRN)]
    assert [(m.params, m.groups) for m in lrns] == [(PAPER, 2), (PAPER, 2)]
    # The paper drops fc6's and fc7's outputs.
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]


@pytest.mark.parametrize("towers", [1, 2])
def test_groups_on_conv2_conv4_conv5(towers):
    model = models.build("alexnet", towers=towers)
    assert [c.groups for c in model.convs] == [1, towers, 1, towers, towers]
    assert list(model.layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


def test_paper_init():
    torch.manual_seed(0)
    layers = models.build("alexnet").layers
    for name, m in layers.items():
        assert m.weight.mean().abs().item() < 1e-3, name
        assert m.weight.std().item() == pytest.approx(0.01, rel=0.05), name
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # §5: biases 1 in these, 0 elsewhere
    for name, m in layers.items():
        assert torch.equal(m.bias, torch.full_like(m.bias, 1.0 if name in ones else 0.0)), name


def test_owt_has_torchvision_keys():
    shapes = {k: tuple(v.shape) for k, v in models.build("alexnet-owt").state_dict().items()}
    assert shapes == {
        "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
        "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
        "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
        "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
        "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
        "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
        "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
        "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
    }
    assert models.build("alexnet-owt").input_size == 224


def test_towers_only_meet_at_conv3_and_fc():
    torch.manual_seed(0)
    model = models.build("alexnet-small", num_classes=10).eval()
    conv1, conv2, conv3, conv4 = model.convs[:4]
    outs = {}
    for name, conv in (("conv2", conv2), ("conv3", conv3)):
        conv.register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o.clone()))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        model(x)
        before = dict(outs)
        conv1.weight[conv1.out_channels // 2 :] += 1.0  # change tower 1 only
        model(x)
    half = conv2.out_channels // 2
    assert torch.equal(outs["conv2"][:, :half], before["conv2"][:, :half])  # tower 0 did not see it
    assert not torch.allclose(outs["conv2"][:, half:], before["conv2"][:, half:])
    half3 = conv3.out_channels // 2
    assert not torch.allclose(outs["conv3"][:, :half3], before["conv3"][:, :half3])  # conv3 crosses


@pytest.mark.parametrize("size,pooled", [(28, 2), (32, 3), (64, 7)])
def test_small_variant_inputs(size, pooled):
    model = models.build("alexnet-small", num_classes=10).eval()
    assert (model.input_size, model.towers, model.lrn) == (28, 2, PAPER)
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, size, size))
        logits = model(torch.randn(2, 3, size, size))
    assert feats.shape[2:] == (pooled, pooled)
    assert logits.shape == (2, 10)


def test_small_kaiming_init():
    torch.manual_seed(0)
    layers = models.build("alexnet-small", num_classes=10).layers
    conv3 = layers["conv3"]
    fan_in = conv3.weight[0].numel()
    assert conv3.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert all(torch.count_nonzero(m.bias) == 0 for m in layers.values())
    assert layers["fc8"].weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_width_and_overrides():
    model = models.build("alexnet-small", num_classes=10, width=2.0, towers=1, dropout=0.3, lrn=None)
    assert [c.out_channels for c in model.convs] == [64, 128, 192, 192, 128]
    assert [fc.out_features for fc in model.fcs] == [1024, 1024, 10]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert not any(isinstance(m, LRN) for m in model.features) and model.lrn is None
    odd = models.build("alexnet-small", width=0.3)  # widths stay divisible by the two towers
    assert all(c.out_channels % 2 == 0 for c in odd.convs)


def test_lrn_override_in_paper_convention():
    model = models.build("alexnet", lrn={"k": 1.0, "n": 3, "alpha": 2e-4, "beta": 0.5})
    assert {m.params for m in model.features if isinstance(m, LRN)} == {LRNParams(3, 1.0, 2e-4, 0.5)}
    partial = models.build("alexnet-small", lrn={"k": 1.0})
    assert partial.lrn == PAPER._replace(k=1.0)


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        ({"towers": 3}, ValueError, "towers"),
        ({"width": 0}, ValueError, "width"),
        ({"lrn": {"size": 5}}, ValueError, "size"),
        ({"lrn": {"n": 4}}, ValueError, "odd"),
        ({"lrn": 5}, TypeError, "lrn"),
        ({"init": "xavier"}, ValueError, "init"),
        ({"depth": 8}, TypeError, "depth"),
    ],
)
def test_bad_overrides(overrides, error, match):
    with pytest.raises(error, match=match):
        models.build("alexnet-small", **overrides)


def test_one_class_for_the_family():
    assert {type(models.build(n)) for n in ("alexnet", "alexnet-owt", "alexnet-small")} == {AlexNet}
