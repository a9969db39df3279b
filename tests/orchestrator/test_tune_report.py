"""The sweep report on synthetic results (no training): per-configuration statistics, Welch's
t-test and its one-sentence verdicts, the baseline, and the CSVs' agreement with the table."""

import csv
import json
import math
import statistics

import pytest
from scipy import stats

from cnnctl.orchestrator.config import ConfigError, resolve
from cnnctl.orchestrator.tune import stats as tune_stats
from cnnctl.orchestrator.tune.plan import CELL, SEED
from cnnctl.orchestrator.tune.report import write
from cnnctl.orchestrator.tune.space import SearchSpace
from cnnctl.orchestrator.tune.spec import save_spec


@pytest.mark.parametrize("df", [1, 2, 3, 4.6, 9, 30])
def test_t_distribution_matches_scipy(df):
    assert tune_stats.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    for t in (0.3, 1.0, 2.5, 7.0):
        assert tune_stats.t_sf2(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9)


@pytest.mark.parametrize("a, b", [([0.85, 0.86, 0.855], [0.84, 0.845, 0.85]), ([1.0, 2.0], [3.0, 5.0, 4.0, 9.0]),
                                  ([0.1, 0.12, 0.11, 0.5], [0.3, 0.31])])
def test_welch_matches_scipy(a, b):
    ours, ref = tune_stats.welch(a, b), stats.ttest_ind(a, b, equal_var=False)
    assert (ours.t, ours.p, ours.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df), rel=1e-9)


def test_the_verdict_flips_between_a_difference_far_beyond_the_spread_and_one_inside_it():
    base = [0.850, 0.852, 0.848]
    far = [0.900, 0.902, 0.898]  # 5 points above, spread 0.2 points
    near = [0.851, 0.847, 0.853]  # 0.03 points above, the same spread
    resolved = tune_stats.verdict("c1", "c0", far, base, "val_top1")
    unresolved = tune_stats.verdict("c2", "c0", near, base, "val_top1")
    assert "resolved at 3 and 3 seed(s), higher beyond the seed-to-seed noise" in resolved
    assert "not resolved at 3 and 3 seed(s)" in unresolved and "not resolved" not in resolved
    assert "not testable with 1 and 3 seed(s)" in tune_stats.verdict("c3", "c0", [0.9], base, "val_top1")


def _sweep(tmp_path, values: dict[int, list[float]], params: dict[int, dict], **tune) -> str:
    cfg = resolve("demo-fashion", sets=[f"run.storage={tmp_path}", "tune.name=s",
                                        *[f"tune.{k}={v}" for k, v in tune.items()]])
    alpha = {"grid": [1e-4, 1e-3], "when": {"model.lrn.enabled": True}}
    space = SearchSpace.model_validate({"space": {"model.lrn.enabled": {"grid": [True, False]},
                                                  "model.lrn.alpha": alpha}})
    folder = save_spec(cfg, space)
    n = 0
    for cell, seeds in values.items():
        for j, v in enumerate(seeds):
            trial = tmp_path / "s" / f"trial_x_{n:05d}"
            trial.mkdir()
            config = {CELL: cell, SEED: j, **params[cell]}
            rows = [{"epoch": 0, "val_top1": v - 0.1, "config": config}, {"epoch": 1, "val_top1": v, "config": config}]
            (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
            n += 1
    return folder


PARAMS = {0: {"model.lrn.enabled": True, "model.lrn.alpha": 1e-4},
          1: {"model.lrn.enabled": True, "model.lrn.alpha": 1e-3},
          2: {"model.lrn.enabled": False}}


def test_report_gives_each_configuration_its_mean_interval_and_seeds_and_compares_with_the_baseline(tmp_path):
    values = {0: [0.90, 0.902, 0.898], 1: [0.851, 0.847, 0.853], 2: [0.850, 0.852, 0.848]}
    out = write(_sweep(tmp_path, values, PARAMS), baseline="model.lrn.enabled=false")
    with open(tmp_path / "s" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["c0", "c1", "c2"]  # best mean first
    for r in rows:
        seeds = [float(x) for x in r["val_top1_per_seed"].split()]
        assert seeds == values[int(r["config"][1:])]  # the best epoch of each seed
        mean, sd = statistics.fmean(seeds), statistics.stdev(seeds)
        low, high = stats.t.interval(0.95, len(seeds) - 1, loc=mean, scale=sd / math.sqrt(len(seeds)))
        assert (float(r["val_top1_mean"]), float(r["val_top1_sd"])) == pytest.approx((mean, sd), rel=1e-9)
        assert (float(r["ci95_low"]), float(r["ci95_high"])) == pytest.approx((low, high), rel=1e-9)
        assert r["seeds"] == "3" and r["seed_values"] == "0 1 2"
    assert [r["resolved"] for r in rows] == ["yes", "no", "baseline"]
    assert rows[2]["model.lrn.alpha"] == ""  # n/a with LRN off
    assert len(out["comparisons"]) == 2
    assert out["comparisons"][0].startswith("c0 vs c2, the baseline (model.lrn.enabled=false): val_top1 +0.0500")
    assert "resolved at 3 and 3 seed(s), higher" in out["comparisons"][0]
    assert "not resolved at 3 and 3 seed(s)" in out["comparisons"][1]
    with open(tmp_path / "s" / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    assert (tmp_path / "s" / "best.yaml").read_text().startswith("# best configuration c0 of sweep s: val_top1 mean "
                                                                 "0.9000 over 3 seed(s), 95 % CI")
    assert (tmp_path / "s" / "metric_vs_params.png").stat().st_size > 1000
    # the paper's cell as the baseline, and the best when none is named
    out = write(str(tmp_path / "s"), baseline="model.lrn.alpha=1e-4,model.lrn.enabled=true")
    assert [line.split(":")[0] for line in out["comparisons"]] == [
        "c1 vs c0, the baseline (model.lrn.alpha=1e-4,model.lrn.enabled=true)",
        "c2 vs c0, the baseline (model.lrn.alpha=1e-4,model.lrn.enabled=true)"]
    assert write(str(tmp_path / "s"))["comparisons"][0].startswith("c1 vs c0, the best:")


@pytest.mark.parametrize("baseline, message", [
    ("model.lrn.enabled=true", "matches 2 (c1, c0); name more paths of the sweep's 3 configuration(s)"),
    ("model.lrn.alpha=0.5", "matches none of the sweep's 3 configuration(s)"),
    ("model.lrn.enabld=false", "unknown path"),
])
def test_a_baseline_that_names_no_single_configuration_is_refused(tmp_path, baseline, message):
    folder = _sweep(tmp_path, {0: [0.8, 0.81], 1: [0.9, 0.91], 2: [0.7, 0.71]}, PARAMS)  # ranked c1, c0, c2
    with pytest.raises(ConfigError) as err:
        write(folder, baseline=baseline)
    assert len(err.value.lines) == 1 and message in err.value.lines[0]


def test_tune_report_prints_the_table_and_one_sentence_per_comparison_and_refuses_a_bad_baseline(tmp_path):
    from typer.testing import CliRunner

    from cnnctl.orchestrator.cli import app

    folder = _sweep(tmp_path, {0: [0.90, 0.902, 0.898], 1: [0.851, 0.847, 0.853], 2: [0.850, 0.852, 0.848]}, PARAMS)
    res = CliRunner().invoke(app, ["tune", "report", folder, "--baseline", "model.lrn.enabled=false"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("s: 3 distinct configuration(s), 9 trial(s)")
    sentences = [line for line in res.output.splitlines() if " vs c2, the baseline (model.lrn.enabled=false)" in line]
    assert [s.split(" ")[0] for s in sentences] == ["c0", "c1"]
    assert "0.9 0.902 0.898" in res.output  # each seed's value in the table
    res = CliRunner().invoke(app, ["tune", "report", folder, "--baseline", "model.lrn.enabled=true"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["error: tune.baseline model.lrn.enabled=true: matches 2 (c0, c1); name "
                                               "more paths of the sweep's 3 configuration(s)"]
