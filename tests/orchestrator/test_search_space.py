"""Search spaces: presets, validation before anything starts, and the `cnnctl tune` refusal/dry-run."""

import pytest
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import ConfigError, resolve
from cnnctl.orchestrator.tune import plan as tune_plan
from cnnctl.orchestrator.tune import space as search_space
from cnnctl.orchestrator.tune.space import SearchSpace, apply, validate

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

    dims = space(model__lrn__n={"randint": [3, 9]}, model__lrn__alpha={"loguniform": [1e-5, 1e-2]},
                 optim__lr={"grid": [0.1, 0.01]}).to_tune()
    n = dims["model.lrn.n"]
    assert isinstance(n, Integer) and (n.lower, n.upper) == (3, 10)
    assert isinstance(dims["model.lrn.alpha"], Float) and dims["model.lrn.alpha"].lower == 1e-5
    assert dims["optim.lr"] == tune.grid_search([0.1, 0.01])


def test_apply_sets_dotted_paths(base):
    cfg = apply(base.model_dump(mode="json"), {"model.lrn.alpha": 2e-4, "schedule.kind": "plateau"})
    assert (cfg.model.lrn.alpha, cfg.schedule.kind, cfg.model.lrn.n) == (2e-4, "plateau", 5)


def test_cli_refuses_an_invalid_space_before_anything_starts(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("space:\n  model.lrn.n: {choice: [3, 4]}\n  model.lrn.alpha: {choice: [-1.0e-4]}\n  optim.lrr: "
                 "{choice: [0.1]}\n")
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", str(f), "--set",
                              f"run.storage={tmp_path / 'runs'}"])
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
                              "--trial-workers", "2", "--num-samples", "4", "--max-concurrent", "2",
                              "--set", f"run.storage={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert "workers_per_node: 2" in res.output and "scheduler: asha" in res.output
    assert "# search space" in res.output and "model.lrn.alpha:" in res.output and "loguniform:" in res.output
    # the plan is drawn before anything starts: 4 draws of the conditional lrn space (seeded by run.seed)
    draws = tune_plan.make(resolve("demo-fashion", sets=["tune.num_samples=4"]), search_space.load("lrn"))
    assert f"# cluster: 4 draw(s) of the space: {len(draws.cells)} distinct configuration(s)" in res.output
    assert f"{len(draws.trials)} trial(s) (1 seed(s) each), at most 2 at once; each trial 2 worker(s)" in res.output
    assert list(tmp_path.iterdir()) == []


LRN_KNOBS = {"model.lrn.k", "model.lrn.n", "model.lrn.alpha", "model.lrn.beta"}


@pytest.mark.parametrize("name", ["lrn", "lrn+lr"])
def test_conditional_presets_never_draw_lrn_knobs_with_lrn_off(name, base):
    import random

    space_, rng, seen = search_space.load(name), random.Random(3), set()
    for _ in range(300):
        (values,) = space_.draws(rng, base.model_dump(mode="json"))
        seen.add(values["model.lrn.enabled"])
        assert LRN_KNOBS.isdisjoint(values) if not values["model.lrn.enabled"] else LRN_KNOBS <= set(values), values
    assert seen == {True, False}


def test_optuna_define_by_run_suggests_lrn_knobs_only_with_lrn_on(base):
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    space_ = search_space.load("lrn")
    study.optimize(lambda t: (space_.define_by_run(t, base.model_dump(mode="json")),
                              t.params.get("model.lrn.alpha", 0.0))[1], n_trials=25)
    off = [t.params for t in study.trials if not t.params["model.lrn.enabled"]]
    on = [t.params for t in study.trials if t.params["model.lrn.enabled"]]
    assert off and on
    assert all(set(p) == {"model.lrn.enabled"} for p in off)
    assert all(set(p) == {"model.lrn.enabled"} | LRN_KNOBS for p in on)


def test_a_conditional_grid_is_expanded_only_where_it_applies(base):
    import random

    grid = search_space.load("lrn-grid")
    draws = grid.draws(random.Random(0), base.model_dump(mode="json"))
    assert grid.grid_size() == len(draws) == 5  # 2 x 2 with LRN on, one LRN off: not 2 x 2 x 2
    assert [d for d in draws if not d["model.lrn.enabled"]] == [{"model.lrn.enabled": False}]


def test_unknown_or_circular_conditions_are_refused(base):
    bad = space(model__lrn__alpha={"choice": [1e-4], "when": {"model.lrn.enabeld": True}},
                model__lrn__beta={"choice": [0.75], "when": {"model.lrn.k": 2.0}},
                model__lrn__k={"choice": [2.0], "when": {"model.lrn.beta": 0.75}},
                model__lrn__n={"choice": [5], "when": {"model.lrn.enabled": "yes"}})
    problems = validate(bad, base)
    assert any(p.startswith("search model.lrn.alpha: when model.lrn.enabeld: unknown path") for p in problems), problems
    assert any(p.startswith("search when: conditions form a cycle among model.lrn.beta, model.lrn.k")
               for p in problems), problems
    # pydantic reads "yes" as true, but a trial's value would be True, never "yes": the condition could never hold
    assert ("search model.lrn.n: when model.lrn.enabled='yes': the config holds it as True, "
            "which never equals 'yes': write True") in problems
    assert len(problems) == 3, problems


def test_cli_refuses_an_unknown_condition_before_anything_starts(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("space:\n  model.lrn.enabled: {choice: [true, false]}\n"
                 "  model.lrn.alpha: {loguniform: [1.0e-5, 1.0e-2], when: {model.lrn.on: true}}\n")
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", str(f), "--set",
                              f"run.storage={tmp_path / 'runs'}"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["error: search model.lrn.alpha: when model.lrn.on: unknown path "
                                               "(model.lrn has no field 'on'; known: enabled, k, n, alpha, beta)"]
    assert not (tmp_path / "runs").exists()


def test_repeated_configurations_are_planned_once_or_as_more_seeds():
    cfg = resolve("demo-fashion", sets=["tune.num_samples=8", "run.seed=11"])
    plan = tune_plan.make(cfg, search_space.load("lrn"))
    base_ = cfg.model_dump(mode="json")
    keys = [search_space.effective_key(base_, c) for c in plan.cells]
    assert len(set(keys)) == len(keys) == len(plan.trials) and sum(plan.draws) == 8
    off = [i for i, c in enumerate(plan.cells) if not c["model.lrn.enabled"]]
    assert len(off) == 1 and plan.draws[off[0]] >= 2 and plan.repeats == plan.draws[off[0]] - 1  # on-draws never repeat
    assert {t[tune_plan.SEED] for t in plan.trials} == {11}  # same: every configuration's seed 0 is run.seed
    # distinct seeds: each repeat of LRN off is one more seed of it; trial i trains with run.seed + i
    cfg.tune.trial_seeds = "distinct"
    plan = tune_plan.make(cfg, search_space.load("lrn"))
    assert len(plan.trials) == 8 and len(plan.cells) == len(keys)
    assert [t[tune_plan.SEED] for t in plan.trials] == list(range(11, 19))
    assert sum(t[tune_plan.CELL] == off[0] for t in plan.trials) == plan.draws[off[0]]
    # --seeds 3, same: every configuration 3 times, seeds run.seed + 0, 1, 2 (paired across configurations)
    cfg.tune.trial_seeds, cfg.tune.seeds = "same", 3
    plan = tune_plan.make(cfg, search_space.load("lrn"))
    assert len(plan.trials) == 3 * len(plan.cells)
    for cell in range(len(plan.cells)):
        assert sorted(t[tune_plan.SEED] for t in plan.trials if t[tune_plan.CELL] == cell) == [11, 12, 13]


def test_a_drawn_value_equal_to_the_base_is_the_same_configuration(base):
    f = space(optim__lr={"choice": [base.optim.lr, base.optim.lr * 2]}, schedule__kind={"choice": ["step", "cosine"]},
              schedule__gamma={"choice": [0.1, 0.5], "when": {"schedule.kind": "step"}})
    cfg = base.model_copy(deep=True)
    cfg.tune.num_samples = 200
    plan = tune_plan.make(cfg, f)
    assert len(plan.cells) == 2 * (1 + 2) and sum(plan.draws) == 200


def test_optuna_searcher_trains_each_configuration_with_its_seeds_and_tells_tpe_the_mean(base):
    from ray.tune.search import Searcher

    from cnnctl.orchestrator.tune.optuna_cells import OptunaCells

    cfg = base.model_copy(deep=True)
    cfg.tune.num_samples, cfg.tune.seeds, cfg.run.seed = 6, 2, 5
    cells = OptunaCells(cfg, space(model__lrn__enabled={"choice": [True, False]}))  # 2 configurations at most
    given = []
    while (config := cells.suggest(f"t{len(given)}")) not in (None, Searcher.FINISHED):
        given.append(config)
        value = 0.5 + 0.1 * config["model.lrn.enabled"] + 0.01 * config[tune_plan.SEED]
        cells.on_trial_complete(f"t{len(given) - 1}", {cfg.tune.metric: value})
    # same seeds: a repeated suggestion is not trained; each configuration trained with seeds 5 and 6
    by_cell = {}
    for c in given:
        by_cell.setdefault(c["model.lrn.enabled"], []).append(c[tune_plan.SEED])
    assert all(sorted(s) == [5, 6] for s in by_cell.values()) and len(given) == 2 * len(by_cell)
    told = [t for t in cells.inner._ot_study.trials if t.state.name == "COMPLETE"]
    assert len(told) == 6  # every draw, repeats too, heard its configuration's mean
    for t in told:
        assert t.value == pytest.approx(0.5 + 0.1 * t.params["model.lrn.enabled"] + 0.055)
