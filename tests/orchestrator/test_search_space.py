"""Search spaces: presets, validation before anything starts, and the `cnnctl tune` refusal/dry-run."""

import pytest
from typer.testing import CliRunner

from orchestrator import search_space
from orchestrator.cli import app
from orchestrator.config import ConfigError, resolve
from orchestrator.search_space import SearchSpace, apply, validate

runner = CliRunner()


@pytest.fixture(scope="module")
def base():
    return resolve("demo-fashion")


def space(**dims) -> SearchSpace:
    return SearchSpace.model_validate({"space": {k.replace("__", "."): v for k, v in dims.items()}})


@pytest.mark.parametrize("name", ["lrn", "lr-schedule", "lrn+lr"])
def test_presets_are_valid_against_the_demo_config(name, base):
    assert validate(search_space.load(name), base) == []


def test_lrn_preset_spans_the_papers_choice():
    """AlexNet §3.3 picked k=2, n=5, alpha=1e-4, beta=0.75 by hand: each lies inside the preset."""
    s = search_space.load("lrn").space
    assert s["model.lrn.k"].choice == [1.0, 2.0, 3.0]
    assert s["model.lrn.n"].choice == [3, 5, 7, 9]
    assert s["model.lrn.alpha"].loguniform == (1e-5, 1e-2)
    assert s["model.lrn.beta"].uniform == (0.5, 1.0)
    assert s["model.lrn.enabled"].choice == [True, False]


def test_lr_schedule_preset_covers_every_schedule():
    s = search_space.load("lr-schedule").space
    assert set(s["schedule.kind"].choice) == {"plateau", "step", "cosine", "onecycle"}
    assert s["optim.lr"].loguniform == (1e-3, 1e-1)
    assert 1.0 in s["schedule.warmup_epochs"].choice


def test_every_problem_gets_its_own_line(base):
    bad = space(model__lrn__n={"randint": [3, 6]}, model__lrn__alpha={"choice": [0, 1e-4]},
                model__lrn__gama={"choice": [1]}, model__lrn={"choice": [1]}, tune__num_samples={"choice": [2]},
                optim__lr={"grid": [0.1, -1.0]})
    problems = validate(bad, base)
    assert "search model.lrn.n=4 (randint): model.lrn.n: must be odd (the window is centred), got 4" in problems
    assert any(p.startswith("search model.lrn.n=6 (randint)") for p in problems)
    assert not any("model.lrn.n=3" in p or "model.lrn.n=5" in p for p in problems)
    assert any(p.startswith("search model.lrn.alpha=0 (choice): model.lrn.alpha:") for p in problems)
    assert any(p.startswith("search model.lrn.gama: unknown path") for p in problems)
    assert "search model.lrn: is a section, not a field" in problems
    assert "search tune.num_samples: set by the sweep itself, not searchable" in problems
    assert any(p.startswith("search optim.lr=-1.0 (grid): optim.lr:") for p in problems)
    assert len(problems) == 7


@pytest.mark.parametrize("dim, message", [
    ({"uniform": [1.0, 0.5]}, "low < high"),
    ({"loguniform": [0, 1e-2]}, "low > 0"),
    ({"randint": [5, 5]}, "low < high"),
    ({"choice": [1], "grid": [2]}, "exactly one of"),
    ({}, "exactly one of"),
    ({"normal": [0, 1]}, "unknown key"),
])
def test_bad_dimensions_are_refused_when_loaded(tmp_path, dim, message):
    f = tmp_path / "s.yaml"
    f.write_text(f"space:\n  model.lrn.beta: {dim}\n".replace("'", ""))
    with pytest.raises(ConfigError) as err:
        search_space.load(str(f))
    assert len(err.value.lines) == 1 and err.value.lines[0].startswith("search model.lrn.beta")
    assert message in err.value.lines[0]


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match="known: lr-schedule, lrn, lrn\\+lr"):
        search_space.load("lrm")


def test_tune_domains_and_randint_includes_both_ends():
    from ray import tune
    from ray.tune.search.sample import Float, Integer

    dims = space(model__lrn__n={"randint": [3, 9]}, model__lrn__alpha={"loguniform": [1e-5, 1e-2]}, optim__lr={"grid": [0.1, 0.01]}).to_tune()
    assert isinstance(dims["model.lrn.n"], Integer) and (dims["model.lrn.n"].lower, dims["model.lrn.n"].upper) == (3, 10)
    assert isinstance(dims["model.lrn.alpha"], Float) and dims["model.lrn.alpha"].lower == 1e-5
    assert dims["optim.lr"] == tune.grid_search([0.1, 0.01])


def test_apply_sets_dotted_paths(base):
    cfg = apply(base.model_dump(mode="json"), {"model.lrn.alpha": 2e-4, "schedule.kind": "plateau"})
    assert (cfg.model.lrn.alpha, cfg.schedule.kind, cfg.model.lrn.n) == (2e-4, "plateau", 5)


def test_cli_refuses_an_invalid_space_before_anything_starts(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("space:\n  model.lrn.n: {choice: [3, 4]}\n  model.lrn.alpha: {choice: [-1.0e-4]}\n  optim.lrr: {choice: [0.1]}\n")
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", str(f), "--set", f"run.storage={tmp_path / 'runs'}"])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, res.output
    assert any("model.lrn.n=4" in e and "must be odd" in e for e in errors)
    assert not (tmp_path / "runs").exists()  # no sweep folder, no Ray


def test_cli_even_n_in_the_base_config_is_refused(tmp_path):
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--set", "model.lrn.n=4"])
    assert res.exit_code == 1 and "model.lrn.n: must be odd" in res.output


def test_dry_run_prints_config_space_and_shape_and_starts_nothing(tmp_path):
    res = runner.invoke(app, ["tune", "--dry-run", "--preset", "demo-fashion", "--search", "lrn", "--scheduler", "asha",
                              "--trial-workers", "2", "--num-samples", "4", "--max-concurrent", "2", "--set", f"run.storage={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert "workers_per_node: 2" in res.output and "scheduler: asha" in res.output
    assert "# search space" in res.output and "model.lrn.alpha:" in res.output and "loguniform:" in res.output
    assert "# cluster: 4 trial(s), at most 2 at once; each trial 2 worker(s)" in res.output
    assert list(tmp_path.iterdir()) == []
