"""Real `cnnctl tune` sweeps on the shared 2-node Ray cluster and the Fashion-MNIST subset.

lr=1e-9 trials learn nothing, so their val_loss stays at the initial ~ln(10) while lr=0.02 trials
drop below it: ASHA must stop one, and PBT must make one exploit the other.
"""

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.tune.plan import flat
from cnnctl_cli import cli

pytestmark = pytest.mark.timeout(600)
runner = CliRunner()
TINY = ["model.width=0.25", "data.batch_size=64", "schedule.kind=constant", "schedule.warmup_epochs=0",
        "optim.label_smoothing=0", "run.log_every=1000", "tune.metric=val_loss", "tune.mode=min"]


def sets(fmnist_root, storage, *extra) -> list[str]:
    out = []
    for item in [f"data.root={fmnist_root}", f"run.storage={storage}", *TINY, *extra]:
        out += ["--set", item]
    return out


def lr_grid(tmp_path: Path, *lrs) -> str:
    f = tmp_path / "lr-grid.yaml"
    f.write_text(yaml.safe_dump({"space": {"optim.lr": {"grid": list(lrs)}}}))
    return str(f)


def results(sweep: Path, name: str = "results.csv") -> list[dict]:
    """results.csv: one row per configuration; trials.csv: one per trial."""
    with open(sweep / name) as f:
        return list(csv.DictReader(f))


def trial_rows(sweep: Path) -> dict[str, list[dict]]:
    out = {}
    for d in sorted(sweep.glob("trial_*")):
        f = d / "result.json"
        out[d.name] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.exists() else []
    return out


def test_asha_stops_a_weak_trial_early_and_exports_a_trainable_best_config(ray_cluster, fmnist_root, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(Path(fmnist_root).parent)  # a relative data root, as the README's commands give it
    fmnist_root = Path(fmnist_root).name
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", lr_grid(tmp_path, 0.02, 1e-9),
                              "--scheduler", "asha", "--num-samples", "2", "--max-concurrent", "2", "--epochs", "2",
                              "--name", "asha", "--address", ray_cluster.address,
                              *sets(fmnist_root, tmp_path / "runs", "tune.grace_period=1", "tune.trial_seeds=distinct",
                                    "run.seed=7")])
    assert res.exit_code == 0, res.output
    sweep = tmp_path / "runs" / "asha"
    rows = results(sweep, "trials.csv")
    assert len(rows) == 4 and all(r["status"] != "error" for r in rows)
    seeds = {}
    for trial, reports in trial_rows(sweep).items():
        run = sweep / "train" / f"{trial.removeprefix('trial_')}-0"
        # a one-worker trial trains in the trial's own process: Tune's pid is the training rank's
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert {r["pid"] for r in reports} == {m["pid_of_rank"][0] for m in metrics}
        seeds[trial.removeprefix("trial_")] = yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"]
    # tune.trial_seeds=distinct: trial i of the sweep trains with run.seed + i, as trials.csv says
    assert sorted(seeds.values()) == [7, 8, 9, 10] and all(int(r["seed"]) == seeds[r["trial"]] for r in rows)
    assert any(r["status"] == "stopped at epoch 0" for r in rows), rows  # ASHA cut a trial at its first rung
    # 2 draws of the 2-value grid: each lr drawn twice, and under distinct seeds a repeat is a second seed
    configs = results(sweep)
    assert [r["seeds"] for r in configs] == ["2", "2"] and [r["draws"] for r in configs] == ["2", "2"]
    losses = [float(r["val_loss_mean"]) for r in configs]
    assert losses == sorted(losses)  # sorted by the metric's mean (min mode: best first)
    assert float(configs[0]["optim.lr"]) == 0.02
    for png in ("metric_vs_params.png", "parallel_coordinates.png", "learning_curves.png"):
        assert (sweep / png).stat().st_size > 1000
    # the best config is a RunConfig that `cnnctl train --config` accepts as it is
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["optim"]["lr"] == 0.02 and best["run"]["name"] == "asha-best"
    dry = runner.invoke(app, ["train", "--config", str(sweep / "best.yaml"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "lr: 0.02" in dry.output and "name: asha-best" in dry.output
    # `cnnctl tune report` redraws everything from the folder alone
    for png in sweep.glob("*.png"):
        png.unlink()
    again = runner.invoke(app, ["tune", "report", "asha", "--storage", str(tmp_path / "runs")])
    assert again.exit_code == 0, again.output
    assert (sweep / "learning_curves.png").exists()
    assert results(sweep) == configs and results(sweep, "trials.csv") == rows


def test_pbt_exploit_continues_from_the_donor_checkpoint(ray_cluster, fmnist_root, tmp_path):
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", lr_grid(tmp_path, 0.02, 1e-9),
                              "--scheduler", "pbt", "--num-samples", "1", "--max-concurrent", "2",
                              "--trial-workers", "1", "--epochs", "10", "--name", "pbt",
                              "--address", ray_cluster.address,
                              # PBT only compares trials still running, and the two starts can be ~20 s apart on a
                              # loaded 2-core machine: the full-width model in batches of 2 makes each run ~30 s long
                              *sets(fmnist_root, tmp_path / "runs", "tune.perturbation_interval=1", "model.width=1.0",
                                    "data.batch_size=2")])
    assert res.exit_code == 0, res.output
    sweep = tmp_path / "runs" / "pbt"
    all_rows = trial_rows(sweep)
    assert len(all_rows) == 2
    assert all(rows and rows[-1]["epoch"] == 9 for rows in all_rows.values())  # both got to the end, restarts and all
    # an exploit: the first row of a trial's run that starts from another trial's checkpoint
    exploits = [(name, i) for name, rows in all_rows.items() for i, r in enumerate(rows)
                if r.get("resumed_from_trial") and f"trial_{r['resumed_from_trial']}" != name
                and (i == 0 or rows[i - 1].get("run") != r["run"])]
    assert exploits, {k: [(r["epoch"], r["run"], r.get("resumed_from_trial")) for r in v] for k, v in all_rows.items()}
    trained = 0
    for name, i in exploits:
        row = all_rows[name][i]
        if row.get("carried_over"):  # cloned from a donor's last epoch: nothing left to train, its result stands
            assert row["epoch"] == row["resumed_from_epoch"] == 9
        else:
            # it went on from the donor's epoch, not from scratch (Tune's own training_iteration is not
            # checked: after a pause and restart it sometimes goes on from the trial's count, not the donor's)
            assert row["epoch"] == row["resumed_from_epoch"] + 1
            trained += 1
        # the checkpoint it started from is the one the donor's run saved at that epoch
        seed = sweep / "train" / row["run"] / f"checkpoint_seed_{row['resumed_from_epoch']:06d}"
        meta = json.loads((seed / "meta.json").read_text())
        (donor_row,) = [r for r in all_rows[f"trial_{row['resumed_from_trial']}"]
                        if r["run"] == row["resumed_from_run"] and r["epoch"] == row["resumed_from_epoch"]]
        assert meta["epoch"] == donor_row["epoch"]
        assert ((meta["metrics"]["val_loss"], meta["metrics"]["train_loss"])
                == (donor_row["val_loss"], donor_row["train_loss"]))
        assert yaml.safe_load((seed / "config.yaml").read_text())["run"]["name"] == row["resumed_from_run"]
        # and, while Tune still keeps the donor's copy of it, the weights match byte for byte (a donor
        # paused and restarted by PBT may hold the same epoch twice, from two of its runs: the one named)
        for p in (sweep / f"trial_{row['resumed_from_trial']}").glob("checkpoint_*"):
            if (json.loads((p / "meta.json").read_text())["epoch"] == row["resumed_from_epoch"]
                    and yaml.safe_load((p / "config.yaml").read_text())["run"]["name"] == row["resumed_from_run"]):
                assert (seed / "model.safetensors").read_bytes() == (p / "model.safetensors").read_bytes()
    assert trained, "no exploited trial trained on from its donor's checkpoint"
    assert any(r["exploited_from"] for r in results(sweep, "trials.csv"))


def test_trials_of_two_workers_run_two_at_a_time_on_the_four_cpus(ray_cluster, fmnist_root, tmp_path):
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--search", lr_grid(tmp_path, 0.02, 0.01),
                              "--num-samples", "1", "--max-concurrent", "3", "--trial-workers", "2", "--epochs", "1",
                              "--name", "w2",
                              "--address", ray_cluster.address, *sets(fmnist_root, tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "2 at a time (2 CPUs each of the cluster's 4)" in res.output  # --max-concurrent 3 lowered to what fits
    sweep = tmp_path / "runs" / "w2"
    rows = results(sweep)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows), rows
    for name, trial in trial_rows(sweep).items():
        assert [(r["epoch"], r["dp"], r["mp"]) for r in trial] == [(0, 2, 1)], name
        # the Train run behind it had two ranks in two processes
        lines = (sweep / "train" / trial[0]["run"] / "metrics.jsonl").read_text().splitlines()
        (metrics,) = [json.loads(x) for x in lines]
        assert len(set(metrics["pid_of_rank"])) == 2 and metrics["steps_per_rank"][0] == metrics["steps_per_rank"][1]


def _wait_for(predicate, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited early ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError("timed out")


def _cnnctl(ray_cluster) -> tuple[str, dict]:
    """The installed console script, and an environment holding the test cluster's token."""
    env = {**os.environ, "CNNCTL_CLUSTER_DIR": str(Path(ray_cluster.token_path).parent)}
    return str(Path(sys.executable).with_name("cnnctl")), env


def _finished(sweep: Path, last_epoch: int) -> set[str]:
    rows = trial_rows(sweep) if sweep.exists() else {}
    return {k for k, v in rows.items() if any(r.get("epoch") == last_epoch for r in v)}


def _kill_when_some_finished(start: list[str], env: dict, sweep: Path, total: int,
                             last_epoch: int) -> dict[str, list[dict]]:
    """Start the sweep, SIGKILL its driver once some (not all) trials have finished; the trials' rows then."""
    proc = subprocess.Popen(start, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def some_but_not_all_finished_a_while_ago():
            # the same finished set 3 s apart: Tune has recorded those finishes (it saves every 2 s)
            done = _finished(sweep, last_epoch)
            if not 1 <= len(done) < total:
                return False
            time.sleep(3)
            return _finished(sweep, last_epoch) == done

        _wait_for(some_but_not_all_finished_a_while_ago, 300, proc)
        before = trial_rows(sweep)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    return before


def _resume(cnnctl: str, env: dict, name: str, storage: Path) -> None:
    resumed = subprocess.run([cnnctl, "tune", "--resume", name, "--set", f"run.storage={storage}"], env=env,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]


def test_resume_after_the_driver_is_killed_keeps_finished_trials(ray_cluster, fmnist_root, tmp_path):
    cnnctl, env = _cnnctl(ray_cluster)
    storage = tmp_path / "runs"
    start = [cnnctl, "tune", "--preset", "demo-fashion", "--search", lr_grid(tmp_path, 0.02, 0.03, 0.04),
             "--num-samples", "1", "--max-concurrent", "1", "--trial-workers", "2", "--epochs", "2", "--name", "killed",
             "--address", ray_cluster.address,
             *sets(fmnist_root, storage)]
    sweep = storage / "killed"
    before = _kill_when_some_finished(start, env, sweep, 3, 1)
    finished = [k for k, v in before.items() if any(r.get("epoch") == 1 for r in v)]
    assert 1 <= len(finished) < 3
    _resume(cnnctl, env, "killed", storage)
    after = {k: v for k, v in trial_rows(sweep).items() if v}  # (an empty folder: see the optuna test)
    assert len(after) == 3  # the trial count is unchanged
    assert all(after[k] == before[k] for k in finished)  # the finished trials were not run again
    assert all(any(r.get("epoch") == 1 for r in rows) for rows in after.values())  # every trial got to its end
    assert sorted(float(r["optim.lr"]) for r in results(sweep)) == [0.02, 0.03, 0.04]
    assert all(r["dp"] == 2 for rows in after.values() for r in rows)  # each trial ran as a 2-worker Train run


def lrn_on_off(tmp_path: Path) -> str:
    """LRN off, and LRN on at two alphas: the alpha grid applies only with LRN on (3 configurations per draw)."""
    f = tmp_path / "lrn-on-off.yaml"
    f.write_text("space:\n  model.lrn.enabled: {grid: [true, false]}\n"
                 "  model.lrn.alpha: {grid: [1.0e-4, 1.0e-2], when: {model.lrn.enabled: true}}\n")
    return str(f)


def test_seeds_give_each_distinct_configuration_its_interval_and_repeats_are_not_trained(ray_cluster, fmnist_root,
                                                                                         tmp_path):
    storage = tmp_path / "runs"
    out = cli("tune", "--preset", "demo-fashion", "--search", lrn_on_off(tmp_path), "--num-samples", "2",
              "--seeds", "2", "--baseline", "model.lrn.enabled=false", "--max-concurrent", "2", "--epochs", "1",
              "--name", "seeds",
              "--address", ray_cluster.address, *sets(fmnist_root, storage, "run.seed=3"))
    assert ("6 draw(s) of the space: 3 distinct configuration(s); 3 repeat(s) not trained again; "
            "6 trial(s) (2 seed(s) each)") in out
    sweep = storage / "seeds"
    rows = trial_rows(sweep)
    assert len(rows) == 6  # 3 configurations x 2 seeds: the 3 repeated draws were not trained
    runs = [yaml.safe_load((sweep / "train" / r[0]["run"] / "config.yaml").read_text()) for r in rows.values()]
    cells = {}
    for run in runs:
        lrn = run["model"]["lrn"]
        cells.setdefault((lrn["enabled"], lrn["alpha"] if lrn["enabled"] else None), []).append(run["run"]["seed"])
    assert sorted(cells, key=str) == sorted([(True, 1e-4), (True, 1e-2), (False, None)], key=str)
    assert all(sorted(seeds) == [3, 4] for seeds in cells.values())  # two different seeds, paired across configurations
    # LRN off was never given an alpha: its trials carry only the on/off switch
    drawn = [flat(r[0]["config"]) for r in rows.values()]
    assert all("model.lrn.alpha" not in d for d in drawn if not d["model.lrn.enabled"])
    assert any(not d["model.lrn.enabled"] for d in drawn)
    # the table's mean and interval are those of the per-seed values in trials.csv
    per_trial = results(sweep, "trials.csv")
    for row in results(sweep):
        values = [float(t["val_loss"]) for t in per_trial if t["config"] == row["config"]]
        assert [float(v) for v in row["val_loss_per_seed"].split()] == values and len(values) == 2
        half = 12.706204736174694 * statistics.stdev(values) / math.sqrt(2)  # t(0.975, df=1)
        assert float(row["val_loss_mean"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
        mean = statistics.fmean(values)
        assert (float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx((mean - half, mean + half), rel=1e-9)
        assert f"{row['config']} vs " in out or row["resolved"] == "baseline"
    assert [r["resolved"] for r in results(sweep)].count("baseline") == 1
    assert sum(line.startswith("c") and "the baseline (model.lrn.enabled=false)" in line
               for line in out.splitlines()) == 2


def test_optuna_search_over_the_conditional_space_resumes_after_the_driver_is_killed(ray_cluster, fmnist_root,
                                                                                     tmp_path):
    cnnctl, env = _cnnctl(ray_cluster)
    storage = tmp_path / "runs"
    start = [cnnctl, "tune", "--preset", "demo-fashion", "--search", "lrn", "--search-alg", "optuna",
             "--num-samples", "3",
             # 2-worker trials are Ray Train runs, long enough (~20 s) for the kill to land between two finishes
             "--max-concurrent", "1", "--trial-workers", "2", "--epochs", "2", "--name", "tpe",
             "--address", ray_cluster.address,
             *sets(fmnist_root, storage, "tune.trial_seeds=distinct", "run.seed=20", "optim.lr=0.005")]
    sweep = storage / "tpe"
    before = _kill_when_some_finished(start, env, sweep, 3, 1)
    finished = _finished(sweep, 1) & set(before)
    assert 1 <= len(finished) < 3
    _resume(cnnctl, env, "tpe", storage)
    # a trial the killed driver had just started may have left an empty folder (Tune had not saved it):
    # the resumed searcher hands its configuration and seed to a new trial, and the report leaves it out
    after = {k: v for k, v in trial_rows(sweep).items() if v}
    assert len(after) == 3 and all(after[k] == before[k] for k in finished)  # 3 suggestions in all; the finished kept
    assert sorted(f"trial_{r['trial']}" for r in results(sweep, "trials.csv")) == sorted(after)
    assert all(any(r.get("epoch") == 1 for r in rows) for rows in after.values())
    # the searcher went on where it stopped: trial i of the sweep has seed 20 + i, none repeated
    seeds = sorted(yaml.safe_load((sweep / "train" / r[0]["run"] / "config.yaml").read_text())["run"]["seed"]
                   for r in after.values())
    assert seeds == [20, 21, 22]
    for rows in after.values():  # the conditional space: k, n, alpha, beta only with LRN on
        config = rows[0]["config"]
        knobs = {"model.lrn.k", "model.lrn.n", "model.lrn.alpha", "model.lrn.beta"} & set(config)
        assert knobs == (set() if not config["model.lrn.enabled"] else {"model.lrn.k", "model.lrn.n", "model.lrn.alpha",
                                                                        "model.lrn.beta"})
    assert sum(int(r["seeds"]) for r in results(sweep)) == 3


def test_resume_of_an_unknown_sweep_is_refused(tmp_path):
    res = runner.invoke(app, ["tune", "--resume", "nothing-here", "--set", f"run.storage={tmp_path}"])
    assert res.exit_code == 1 and f"no sweep nothing-here at {tmp_path}/nothing-here" in res.output, res.output
