import typing
from pathlib import Path

import pytest
import yaml

from cnnctl.orchestrator.config import ConfigError, RunConfig, parse_set, resolve


def test_defaults_validate_and_every_field_is_described():
    cfg = RunConfig()
    assert cfg.model.lrn is None and cfg.model.overrides() == {}  # unset: the model's own defaults
    set_one = resolve(None, None, ["model.lrn.alpha=2e-4"]).model.lrn  # setting one key: the paper's others
    assert (set_one.alpha, set_one.k, set_one.n, set_one.beta, set_one.enabled) == (2e-4, 2.0, 5, 0.75, True)

    def walk(model_cls, path=""):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{path}{name} has no description"
            for ann in typing.get_args(field.annotation) or (field.annotation,):  # LRNConfig | None too
                if isinstance(ann, type) and hasattr(ann, "model_fields"):
                    walk(ann, f"{path}{name}.")

    walk(RunConfig)


def test_precedence_defaults_preset_file_set_flags(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"optim": {"lr": 0.2, "momentum": 0.5}, "schedule": {"epochs": 3}}))
    cfg = resolve("demo-fashion", f, ["optim.lr=0.3", "schedule.epochs=4"], {"schedule.epochs": 5, "run.name": None})
    assert cfg.optim.momentum == 0.5  # file beats preset
    assert cfg.optim.lr == 0.3  # --set beats file
    assert cfg.schedule.epochs == 5  # flag beats --set
    assert cfg.run.name == "demo-fashion"  # None flag = not given; the preset stands
    assert cfg.model.name == "alexnet-small"  # from the preset


def test_set_parses_yaml_scalars():
    assert parse_set(["model.lrn.alpha=2e-4", "parallel.gpus=true", "a.b=x"]) == {
        "model": {"lrn": {"alpha": 2e-4}}, "parallel": {"gpus": True}, "a": {"b": "x"}}


@pytest.mark.parametrize("sets, field", [
    (["model.lrn.bogus=1"], "model.lrn.bogus: unknown key"),
    (["optim.lr=abc"], "optim.lr:"),
    (["optim.lr=-1"], "optim.lr:"),
    (["model.lrn.n=4"], "model.lrn.n: must be odd"),
    (["parallel.mp=2", "parallel.workers_per_node=3"], "parallel.mp"),
    (["data.batch_size=127"], "data.batch_size"),
    (["model.name=alexnet-owt", "parallel.fc=model", "parallel.mp=2"], "parallel.fc: model slices a one-tower"),
    (["model.name=vgg-a", "parallel.fc=model"],
     "parallel.fc: model slices the FC layers of a one-tower AlexNet; vgg-a is not"),
    (["model.name=alexnet-owt", "model.width=0.5", "parallel.fc=model", "parallel.fc_group=1"],
     "parallel.fc_group: K=1"),
    (["model.name=alexnet-small", "model.towers=1", "model.width=0.3", "parallel.fc=model",
      "parallel.workers_per_node=4", "data.batch_size=128"],
     "parallel.fc_group: K=4 must be at least 2 and divide the world size 4 and alexnet-small's FC width 154"),
    (["parallel.grad_compression=fp16"], "parallel.grad_compression:"),
    (["parallel.bucket_mb=0"], "parallel.bucket_mb:"),
])
def test_bad_values_name_the_field(sets, field):
    with pytest.raises(ConfigError) as exc:
        resolve(None, None, sets)
    assert any(line.startswith(field) for line in exc.value.lines), exc.value.lines


def test_one_line_per_problem():
    with pytest.raises(ConfigError) as exc:
        resolve(None, None, ["optim.lr=abc", "data.nope=1", "schedule.epochs=0"])
    assert len(exc.value.lines) == 3


def test_missing_preset_and_bad_set_syntax():
    with pytest.raises(ConfigError, match="not found in configs/"):
        resolve("no-such-preset")
    with pytest.raises(ConfigError, match="expected a.b=value"):
        resolve(None, None, ["novalue"])
