import pytest
import torch

from cnnctl import models

NAMES = ["alexnet", "alexnet-owt", "alexnet-small", "vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e"]


def test_names():
    assert models.names() == NAMES
    assert models.ALIASES == {"vgg11": "vgg-a", "vgg13": "vgg-b", "vgg16": "vgg-d", "vgg19": "vgg-e"}


@pytest.mark.parametrize("num_classes", [10, 1000])
@pytest.mark.parametrize("name", NAMES + list(models.ALIASES))
def test_every_model_builds_with_the_interface(name, num_classes):
    with torch.device("meta"):
        model = models.build(name, num_classes=num_classes)
        x = torch.empty(2, 3, model.input_size, model.input_size)
        assert model(x).shape == (2, num_classes)
    assert model.input_size in (28, 224, 227)
    assert model.towers in (1, 2)
    assert model.lrn is None or isinstance(model.lrn, models.LRNParams)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*alexnet-small.*vgg19"):
        models.build("resnet50")


@pytest.mark.parametrize("name,override", [("vgg-d", "towers"), ("vgg-b", "lrn"), ("alexnet", "depth")])
def test_unknown_override_is_a_type_error(name, override):
    with pytest.raises(TypeError, match=f"{name}.*{override}"):
        models.build(name, **{override: 1})


def alexnet_macs() -> int:
    """The paper net's multiply-adds by hand: conv1..conv5 (grouped: half the inputs), fc6..fc8."""
    convs = [55 * 55 * 96 * 3 * 11 * 11, 27 * 27 * 256 * 48 * 25, 13 * 13 * 384 * 256 * 9,
             13 * 13 * 384 * 192 * 9, 13 * 13 * 256 * 192 * 9]
    return sum(convs) + 9216 * 4096 + 4096 * 4096 + 4096 * 1000


def test_describe_alexnet():
    row = models.describe("alexnet")
    assert row == {
        "name": "alexnet", "params": 60_965_224, "gmacs": pytest.approx(alexnet_macs() / 1e9, rel=1e-12),
        "input_size": 227, "towers": 2, "lrn": {"n": 5, "k": 2.0, "alpha": 1e-4, "beta": 0.75},
    }


# torchvision's published GFLOPS (which are multiply-adds) for the same layouts.
@pytest.mark.parametrize("name,gmacs", [("alexnet-owt", 0.71), ("vgg11", 7.61), ("vgg13", 11.31),
                                        ("vgg16", 15.47), ("vgg19", 19.63)])
def test_describe_matches_torchvision_gmacs(name, gmacs):
    assert round(models.describe(name)["gmacs"], 2) == gmacs


def test_table_has_a_row_per_model():
    rows = models.table()
    assert [r["name"] for r in rows] == NAMES
    assert [r["params"] for r in rows if r["name"].startswith("vgg")] == [
        132_863_336, 132_863_336, 133_047_848, 133_638_952, 138_357_544, 143_667_240]
    assert [r["lrn"] is not None for r in rows] == [True, False, True, False, True, False, False, False, False]


def test_load_matching_skips_the_new_classifier():
    torch.manual_seed(0)
    trained = models.build("alexnet-small", num_classes=10)
    state = dict(trained.state_dict(), **{"extra.weight": torch.zeros(3)})
    model = models.build("alexnet-small", num_classes=5)
    fc8_before = model.fcs[-1].weight.clone()
    copied = models.load_matching(model, state)
    keys = list(model.state_dict())
    assert copied == [k for k in keys if not k.startswith("classifier.6.")]
    assert len(copied) == len(keys) - 2
    for key, value in model.state_dict().items():
        if key in copied:
            assert torch.equal(value, state[key]), key
    assert torch.equal(model.fcs[-1].weight, fc8_before)


def test_load_matching_copies_nothing_across_layouts():
    with torch.device("meta"):
        vgg = models.build("vgg-a")
    small = models.build("alexnet-small", num_classes=10)
    assert models.load_matching(small, vgg.state_dict()) == []
    fc8_bias = {"classifier.6.bias": torch.ones(10)}  # a matching name and shape is all it takes
    assert models.load_matching(small, fc8_bias) == ["classifier.6.bias"]
    assert torch.equal(small.fcs[-1].bias, torch.ones(10))
