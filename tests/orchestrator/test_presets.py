"""The papers' presets resolve (through `cnnctl train --dry-run`) to the papers' numbers, pinned here
one by one (AlexNet §4-5, torchvision's reference recipe for the one-tower AlexNet, VGG §3)."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import CONFIGS_DIR

VGGS = ["vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e"]
PRESETS = ["imagenet-alexnet", "imagenet-alexnet-owt"] + [f"imagenet-{v}" for v in VGGS]
PAPER_LRN = {"enabled": True, "k": 2.0, "n": 5, "alpha": 1e-4, "beta": 0.75}

ALEXNET = {
    "data.batch_size": 128, "data.image_size": 227, "data.augment": "alexnet", "data.lighting_std": 0.1,
    "data.mean_image": True, "model.name": "alexnet", "model.towers": 2, "model.dropout": 0.5, "model.lrn": PAPER_LRN,
    "model.init": "paper", "optim.lr": 0.01, "optim.momentum": 0.9, "optim.weight_decay": 5e-4,
    "optim.scale_lr": "none",
    "schedule.kind": "plateau", "schedule.max_drops": 3, "schedule.epochs": 90, "schedule.warmup_epochs": 0.0,
    "parallel.mp": 2, "parallel.workers_per_node": 2, "eval.tta": "ten-crop",
}
ALEXNET_OWT = {
    "data.batch_size": 256, "data.image_size": 224, "data.augment": "alexnet", "data.lighting_std": 0.0,
    "data.mean_image": False, "model.name": "alexnet-owt", "model.towers": None, "model.lrn": None,
    "model.dropout": 0.5,
    "model.init": "torch", "optim.lr": 0.01, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
    "schedule.kind": "step", "schedule.step_epochs": 30, "schedule.gamma": 0.1, "schedule.epochs": 90,
    "parallel.mp": 1, "eval.tta": "center",
}
VGG = {
    "data.batch_size": 256, "data.image_size": 224, "data.augment": "vgg", "data.scale_min": 256, "data.scale_max": 512,
    "data.mean_image": False, "model.dropout": 0.5, "model.init": "paper", "optim.lr": 0.01, "optim.momentum": 0.9,
    "optim.weight_decay": 5e-4, "schedule.kind": "plateau", "schedule.max_drops": 3, "schedule.epochs": 74,
    "parallel.mp": 1, "eval.tta": "dense", "eval.scales": [256, 384, 512], "eval.flip": True,
}


def expected(preset: str) -> dict:
    if preset == "imagenet-alexnet":
        return ALEXNET
    if preset == "imagenet-alexnet-owt":
        return ALEXNET_OWT
    name = preset.removeprefix("imagenet-")
    deeper = name not in ("vgg-a", "vgg-a-lrn")
    return {**VGG, "model.name": name, "model.lrn": PAPER_LRN if name == "vgg-a-lrn" else None,
            "model.init_from": "runs/imagenet-vgg-a" if deeper else None,
            "model.init_mode": "vgg-a" if deeper else "auto"}


def dry_run(preset: str) -> dict:
    res = CliRunner().invoke(app, ["train", "--preset", preset, "--dry-run"])
    assert res.exit_code == 0, res.output
    return yaml.safe_load(res.output)


def get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_resolves_to_the_papers_numbers(preset):
    cfg = dry_run(preset)
    want = expected(preset)
    assert {k: get(cfg, k) for k in want} == want
    assert cfg["run"]["name"] == preset


def test_every_imagenet_preset_is_pinned_and_cites_its_paper():
    assert sorted(p.stem for p in CONFIGS_DIR.glob("imagenet-*.yaml")) == sorted(PRESETS)
    for preset in PRESETS:
        lines = (CONFIGS_DIR / f"{preset}.yaml").read_text().splitlines()
        # every number the paper fixes carries a comment that says where it comes from
        for key in ("batch_size", "lr", "momentum", "weight_decay", "epochs", "image_size"):
            (line,) = [line for line in lines if line.strip().startswith(f"{key}:")]
            assert "#" in line, f"{preset}: {line.strip()} cites no source"


def test_an_unknown_preset_lists_the_known_ones():
    res = CliRunner().invoke(app, ["train", "--preset", "imagenet-vgg", "--dry-run"])
    assert res.exit_code == 1
    assert "preset 'imagenet-vgg': not found" in res.output
    for preset in PRESETS + ["demo-fashion"]:
        assert preset in res.output


def test_deploy_trains_from_the_preset_without_repeating_its_numbers():
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "alexnet-imagenet.yaml"
    layered = yaml.safe_load(deploy.read_text())
    assert "model" not in layered and "augment" not in layered.get("data", {})
    assert {"momentum", "weight_decay"}.isdisjoint(layered.get("optim", {}))
