"""Config -> model survives the trip to the workers: what a Ray worker, a Tune trial or `cnnctl eval`
builds from a serialised config is the model the driver resolved."""

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnctl import models
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import CONFIGS_DIR, ConfigError, RunConfig, resolve, to_yaml
from cnnctl.orchestrator.modeling import build_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shipped(cfg: RunConfig) -> RunConfig:
    """The config as a worker (model_dump -> model_validate) and a checkpoint (YAML) see it."""
    worker = RunConfig.model_validate(cfg.model_dump(mode="json"))
    return RunConfig.model_validate(yaml.safe_load(to_yaml(worker)))


@pytest.mark.parametrize("name", models.names())
def test_every_model_builds_as_registered_after_serialisation(name):
    cfg = shipped(resolve(None, None, [f"model.name={name}"]))
    with torch.device("meta"):
        built, registered = build_model(cfg, 10), models.build(name, num_classes=10)
    assert type(built) is type(registered)
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (built, registered)]
    assert shapes[0] == shapes[1]
    assert built.towers == registered.towers and built.lrn == registered.lrn


def test_alexnet_owt_stays_one_tower_without_lrn():
    # The one weird trick net: 57,044,810 weights at 10 classes (the two-tower net with LRN has 56,153,930).
    with torch.device("meta"):
        owt = build_model(shipped(resolve(None, None, ["model.name=alexnet-owt"])), 10)
    assert n_params(owt) == 57_044_810 and owt.towers == 1 and owt.lrn is None


def test_set_fields_survive_and_unset_ones_stay_the_models_own():
    cfg = shipped(resolve(None, None, ["model.name=alexnet-owt", "model.dropout=0.3", "model.lrn.alpha=2e-4"]))
    assert cfg.model.overrides() == {"dropout": 0.3, "lrn": {"k": 2.0, "n": 5, "alpha": 2e-4, "beta": 0.75}}
    with torch.device("meta"):
        model = build_model(cfg, 10)
    assert model.towers == 1 and model.lrn.alpha == 2e-4  # towers unset: OWT's own one tower
    off = shipped(resolve(None, None, ["model.name=alexnet", "model.lrn.enabled=false"]))
    with torch.device("meta"):
        assert build_model(off, 10).lrn is None


@pytest.mark.parametrize("sets,line", [
    (["model.name=vgg-a", "model.towers=2"], "model.towers: does not apply to vgg-a (it takes width, dropout, init)"),
    (["model.name=vgg16", "model.lrn.alpha=1e-3"],
     "model.lrn: does not apply to vgg-d (it takes width, dropout, init)"),
    (["model.name=alexnet", "model.init=glorot"],
     "model.init: 'glorot' is not an init of alexnet (one of paper, kaiming, torch)"),
    (["model.name=resnet50"], "model.name: unknown model 'resnet50'; known models: alexnet, alexnet-owt"),
])
def test_a_field_the_model_does_not_take_is_refused_on_the_driver(sets, line):
    with pytest.raises(ConfigError) as err:
        resolve(None, None, sets)
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith(line)
    res = CliRunner().invoke(app, ["train", "--dry-run", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and line in res.output


@pytest.mark.parametrize("name", ["alexnet", "alexnet-owt", "alexnet-small", "vgg-a"])
def test_the_catalog_knows_each_models_towers_and_mp2_needs_two(name):
    from cnnctl.models import catalog

    with torch.device("meta"):
        built = build_model(resolve(None, None, [f"model.name={name}"]), 10)
    assert catalog.towers(name) == getattr(built, "towers", 1)
    sets = [f"model.name={name}", "parallel.mp=2"]
    if catalog.towers(name) == 2:
        resolve(None, None, sets)
    else:
        with pytest.raises(ConfigError) as err:
            resolve(None, None, sets)
        assert err.value.lines == [f"parallel.mp: 2 splits a model's two towers over a rank pair; {name} is built "
                                   "with 1 (set model.towers=2 for an AlexNet, or parallel.mp=1)"]


def test_the_model_catalog_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; from cnnctl.orchestrator.config import resolve; resolve('demo-fashion'); "
            "resolve(None, None, ['model.name=vgg-a']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("preset", ["demo-fashion"] + sorted(p.stem for p in CONFIGS_DIR.glob("imagenet-*.yaml")))
def test_every_preset_builds_the_same_model_after_serialisation(preset):
    cfg = resolve(preset)
    with torch.device("meta"):
        driver, worker = build_model(cfg, 10), build_model(shipped(cfg), 10)
    assert {k: v.shape for k, v in driver.state_dict().items()} == {k: v.shape for k, v in worker.state_dict().items()}
    assert (driver.towers, driver.lrn) == (worker.towers, worker.lrn)


def test_demo_preset_leaves_the_models_own_defaults_to_the_model():
    # --preset demo-fashion with another network: the preset sets no field of alexnet-small's own
    with torch.device("meta"):
        owt = build_model(shipped(resolve("demo-fashion", None, ["model.name=alexnet-owt"])), 10)
    assert n_params(owt) == 57_044_810 and owt.towers == 1 and owt.lrn is None


@pytest.mark.parametrize("sets,line", [
    (["eval.scales=[256]"], "eval.scales: apply to eval.tta dense only, not center"),
    (["eval.tta=dense", "eval.scales=[20,28]", "data.image_size=24"],
     "eval.scales: every Q must be at least the crop size data.image_size=24"),
    (["model.name=vgg-d", "tune.scheduler=pbt", "tune.pbt_lrn=true"],
     "tune.pbt_lrn: vgg-d has no LRN for PBT to mutate"),
])
def test_eval_and_pbt_settings_that_cannot_work_are_refused_before_training(sets, line):
    with pytest.raises(ConfigError) as err:
        resolve(None, None, sets)
    assert err.value.lines == [line] or err.value.lines[0].startswith(line)
