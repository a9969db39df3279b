import pytest
import torch
from torch import nn

from cnnctl import models
from cnnctl.models.lrn import LRN, PAPER, LRNParams
from cnnctl.models.vgg import CFGS, conv_positions, init_from

# Table 2 / torchvision, at 224 px and 1000 classes.
PARAMS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
          "D": 138_357_544, "E": 143_667_240}
# torchvision's features.N index of every conv (vgg11, vgg13, vgg16, vgg19).
TORCHVISION_CONVS = {
    "A": [0, 3, 6, 8, 11, 13, 16, 18],
    "B": [0, 2, 5, 7, 10, 12, 15, 17, 20, 22],
    "D": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "E": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}


def build_meta(cfg: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.build(f"vgg-{cfg.lower()}", **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg_a():
    torch.manual_seed(0)
    return models.build("vgg-a").eval()


@pytest.mark.parametrize("num_classes", [1000, 10])
@pytest.mark.parametrize("cfg", list(PARAMS))
def test_parameter_counts(cfg, num_classes):
    # fc8 has 4096 weights and a bias per class.
    expected = PARAMS[cfg] - 4097 * (1000 - num_classes)
    assert n_params(build_meta(cfg, num_classes=num_classes)) == expected


@pytest.mark.parametrize("cfg", list(PARAMS))
def test_shapes_at_224(cfg):
    model = build_meta(cfg)
    assert model.input_size == 224
    x = torch.empty(2, 3, 224, 224, device="meta")
    assert model.features(x).shape == (2, 512, 7, 7)
    assert model(x).shape == (2, 1000)
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert sum(isinstance(m, nn.MaxPool2d) and m.kernel_size == 2 for m in model.features) == 5


@pytest.mark.parametrize("cfg", list(TORCHVISION_CONVS))
def test_torchvision_key_names(cfg):
    keys = list(build_meta(cfg).state_dict())
    expected = [f"features.{i}.{t}" for i in TORCHVISION_CONVS[cfg] for t in ("weight", "bias")]
    expected += [f"classifier.{i}.{t}" for i in (0, 3, 6) for t in ("weight", "bias")]
    assert keys == expected


def test_config_c_has_three_1x1_convs():
    convs = [m for m in build_meta("C").features if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [3] * 6 + [1] + [3, 3, 1] + [3, 3, 1]
    assert [(c.in_channels, c.out_channels) for c in convs if c.kernel_size == (1, 1)] == [
        (256, 256), (512, 512), (512, 512)]
    assert all(c.padding == (c.kernel_size[0] // 2,) * 2 for c in convs)


def test_depths_follow_table_1():
    depth = {cfg: sum(isinstance(v, int) or v.startswith("conv1-") for v in CFGS[cfg] if v not in ("M", "LRN"))
             for cfg in CFGS}
    assert depth == {"A": 8, "A-LRN": 8, "B": 10, "C": 13, "D": 13, "E": 16}  # + 3 FC = 11..19 layers


def test_a_lrn_has_lrn_after_the_first_conv_only():
    model = build_meta("A-LRN")
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == ["Conv2d", "ReLU", "LRN", "MaxPool2d"]
    assert [m.params for m in model.features if isinstance(m, LRN)] == [PAPER]
    assert model.lrn == PAPER and build_meta("A").lrn is None
    tuned = build_meta("A-LRN", lrn={"n": 3, "k": 1.0, "alpha": 1e-3, "beta": 0.5})
    assert [m.params for m in tuned.features if isinstance(m, LRN)] == [LRNParams(3, 1.0, 1e-3, 0.5)]
    assert not any(isinstance(m, LRN) for m in build_meta("A-LRN", lrn=None).features)
    # The other columns have no LRN slot: the override changes nothing.
    with pytest.raises(TypeError, match="lrn"):  # D has no LRN layer to set
        build_meta("D", lrn={"k": 1.0})


@pytest.mark.parametrize("alias,name", [("vgg11", "vgg-a"), ("vgg13", "vgg-b"), ("vgg16", "vgg-d"), ("vgg19", "vgg-e")])
def test_torchvision_aliases(alias, name):
    assert models.resolve(alias) == name
    with torch.device("meta"):
        assert list(models.build(alias).state_dict()) == list(models.build(name).state_dict())


def test_init_normal_001_zero_bias(vgg_a):
    for m in vgg_a.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.weight.std().item() == pytest.approx(0.01, rel=0.05)
            assert m.weight.mean().abs().item() < 2e-3
            assert torch.count_nonzero(m.bias) == 0


def test_forward_small_input(vgg_a):
    with torch.no_grad():
        assert vgg_a(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


# D's convs by (block, position) -> features.N: A's first four convs land on 0, 5, 10, 12.
D_COPIED = [f"features.{i}.{t}" for i in (0, 5, 10, 12) for t in ("weight", "bias")]
D_COPIED += [f"classifier.{i}.{t}" for i in (0, 3, 6) for t in ("weight", "bias")]


def filled(cfg: str, sign: float) -> nn.Module:
    """A real (CPU) model whose i-th tensor is the constant sign * (i + 1): cheaper than random init."""
    model = build_meta(cfg).to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(sign * (i + 1))
    return model


def test_init_from_copies_exactly_four_convs_and_three_fcs():
    shallow, deep = filled("A", 1.0), filled("D", -1.0)
    copied = init_from(deep, shallow)
    assert copied == D_COPIED
    a_names = [f"features.{i}.{t}" for i in (0, 3, 6, 8) for t in ("weight", "bias")] + D_COPIED[8:]
    source = dict(zip(D_COPIED, a_names, strict=True))
    a_state = shallow.state_dict()
    for i, (key, value) in enumerate(deep.state_dict().items()):
        if key in source:
            assert torch.equal(value, a_state[source[key]]), key
        else:
            assert bool((value == -(i + 1)).all()), key  # left as it was


@pytest.mark.parametrize("cfg", ["B", "C", "E"])
def test_init_from_targets_in_other_columns(cfg):
    deep, shallow = build_meta(cfg), build_meta("A")
    copied = init_from(deep, shallow)
    positions = conv_positions(deep.features)
    names = {id(m.weight): n.removesuffix(".weight") for n, m in deep.named_modules() if hasattr(m, "weight")}
    convs = [names[id(positions[key].weight)] for key in ((0, 0), (1, 0), (2, 0), (2, 1))]
    expected = [f"{c}.{t}" for c in convs for t in ("weight", "bias")]
    assert copied == expected + [f"classifier.{i}.{t}" for i in (0, 3, 6) for t in ("weight", "bias")]


def test_init_from_refuses_mismatched_classifier():
    with pytest.raises(ValueError, match="classifier.6"):
        init_from(build_meta("D", num_classes=10), build_meta("A"))
