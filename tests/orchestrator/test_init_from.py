"""model.init_from: VGG §3.1 (B-E from a trained A) and name-and-shape matching, from real checkpoints."""

import pytest
import torch
from typer.testing import CliRunner

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.modeling import build_model, init_source, initialise

SMALL = ["model.width=0.125", "model.num_classes=10"]
# A's first four convs (blocks 1 and 2, both of block 3) and its three FC layers, at D's positions.
D_FROM_A = [f"features.{i}.{p}" for i in (0, 5, 10, 12) for p in ("weight", "bias")] + \
           [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


def checkpoint(tmp_path, name: str, *sets: str, seed: int = 1):
    """A real checkpoint folder of a model whose weights are not any fresh init's."""
    cfg = resolve(None, None, [f"model.name={name}", *sets])
    torch.manual_seed(seed)
    model = build_model(cfg, cfg.model.num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # "trained": far from what any init draws
    return ckpt.save(tmp_path / name, model.state_dict(), cfg, {}, {"epoch": 0}), model.state_dict()


def test_vgg_d_from_a_copies_exactly_a_s_layers_and_draws_the_rest(tmp_path):
    path, a = checkpoint(tmp_path, "vgg-a", *SMALL)
    cfg = resolve(None, None, ["model.name=vgg-d", f"model.init_from={tmp_path / 'vgg-a'}", *SMALL])
    assert init_source(cfg)[2] == "vgg-a"  # auto: D started from an A is §3.1
    torch.manual_seed(0)
    d = build_model(cfg, 10)
    torch.manual_seed(0)
    fresh = build_model(cfg, 10).state_dict()
    message = initialise(d, cfg)
    a_names = ([f"features.{i}.{p}" for i in (0, 3, 6, 8) for p in ("weight", "bias")]
               + [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")])
    a_positions = dict(zip(D_FROM_A, [a[k] for k in a_names]))
    for name, tensor in d.state_dict().items():
        if name in a_positions:
            assert torch.equal(tensor, a_positions[name]), name
        else:
            assert torch.equal(tensor, fresh[name]), name  # freshly initialised, as model.init draws it
    assert "copied 14 tensors" in message and ", ".join(D_FROM_A) in message
    assert f"{len(fresh) - 14} as model.init draws them" in message


def test_fine_tuning_matches_names_and_shapes(tmp_path):
    # §3.1's S in [256, 512] net fine-tuned from the S = 384 one: the same column, every tensor.
    path, d384 = checkpoint(tmp_path, "vgg-d", *SMALL)
    cfg = resolve(None, None, ["model.name=vgg-d", f"model.init_from={path}", *SMALL])
    assert init_source(cfg)[2] == "matching"
    d = build_model(cfg, 10)
    assert f"copied {len(d384)} tensors" in initialise(d, cfg)
    assert all(torch.equal(d.state_dict()[k], v) for k, v in d384.items())


@pytest.mark.parametrize("target,source,mode,line", [
    (["model.name=vgg-d"], ("alexnet-small", "model.num_classes=10"), "vgg-a",
     "VGG §3.1 needs a trained vgg-a, this checkpoint is alexnet-small"),
    (["model.name=vgg-a"], ("vgg-a", *SMALL), "vgg-a", "VGG §3.1 initialises VGG B-E from A, not vgg-a"),
    (["model.name=vgg-d", "model.width=0.25"], ("vgg-a", *SMALL), "auto",
     "its vgg-a has width 0.125, vgg-d here has width 0.25"),
    (["model.name=vgg-d"], ("alexnet-small", "model.num_classes=5"), "matching",
     "no tensor of its alexnet-small matches vgg-d"),
    (["model.name=vgg-d"], ("alexnet", "model.num_classes=10"), "auto",
     "VGG §3.1 starts vgg-d from a trained vgg-a, this checkpoint is alexnet"),
    (["model.name=vgg-d", "model.width=0.125"], ("vgg-a", "model.width=0.125", "model.num_classes=5"), "vgg-a",
     r"classifier.6.weight is \(10, 512\) but A's is \(5, 512\)"),
])
def test_a_source_that_cannot_serve_is_refused(tmp_path, target, source, mode, line):
    path, _ = checkpoint(tmp_path, source[0], *source[1:])
    cfg = resolve(None, None, [*target, "model.num_classes=10", f"model.init_from={path}", f"model.init_mode={mode}"])
    with pytest.raises(ValueError, match=line):
        init_source(cfg)  # on the driver: shapes and matches are rehearsed on the meta device


def test_the_cli_refuses_a_bad_source_before_ray_starts(tmp_path, fmnist_root):
    path, _ = checkpoint(tmp_path, "alexnet-small", "model.num_classes=10")
    base = ["train", "--data", fmnist_root, "--set", "model.name=vgg-d", "--set", f"run.storage={tmp_path}"]
    res = CliRunner().invoke(app, [*base, "--set", f"model.init_from={path}", "--set", "model.init_mode=vgg-a"])
    assert res.exit_code == 1 and res.output.count("error:") == 1
    assert "VGG §3.1 needs a trained vgg-a, this checkpoint is alexnet-small" in res.output
    res = CliRunner().invoke(app, [*base, "--set", f"model.init_from={tmp_path / 'nothing'}"])
    assert res.exit_code == 1 and "model.init_from:" in res.output and "no complete checkpoint" in res.output
    assert not (tmp_path / "demo-fashion").exists()  # nothing started, nothing written


def test_the_run_records_the_one_checkpoint_every_rank_loads(tmp_path, monkeypatch):
    from cnnctl.orchestrator import checkpoint as ck

    path, _ = checkpoint(tmp_path / "runs" / "a" , "vgg-a", *SMALL)  # runs/a/vgg-a: a checkpoint folder
    monkeypatch.chdir(tmp_path)
    cfg = resolve(None, None, ["model.name=vgg-d", "model.init_from=runs/a/vgg-a", "data.root=shards", *SMALL])
    ck.absolute_paths(cfg)  # what prepare_run and a Tune sweep do before the config travels
    assert cfg.model.init_from == str(path.resolve()) and cfg.data.root == str(tmp_path / "shards")
