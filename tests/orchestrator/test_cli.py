"""CLI wiring and error messages through typer's CliRunner."""

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from cnnctl.orchestrator.cli import app

runner = CliRunner()
COMMANDS = ["shard", "train", "eval", "report", "cluster", "models", "tune"]


def test_help_explains_every_command_and_option():
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in top.output
        res = runner.invoke(app, [cmd, "--help"], terminal_width=200)
        assert res.exit_code == 0, res.output
        # every option line carries help text (typer prints the option, then its description)
        assert "Usage:" in res.output and len(res.output.splitlines()) > 8


def test_train_unknown_key_exits_1_naming_the_field():
    res = runner.invoke(app, ["train", "--set", "model.lrn.gamma=1"])
    assert res.exit_code == 1
    assert "model.lrn.gamma: unknown key" in res.output


def test_train_bad_type_exits_1_naming_the_field():
    res = runner.invoke(app, ["train", "--set", "schedule.epochs=many"])
    assert res.exit_code == 1
    assert "schedule.epochs:" in res.output


def test_train_bad_config_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim: {lr: 0.1, momentumm: 0.9}\n")
    res = runner.invoke(app, ["train", "--config", str(f)])
    assert res.exit_code == 1 and "optim.momentumm: unknown key" in res.output


def test_train_dry_run_prints_resolved_config_and_shape():
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--nodes", "2", "--set",
                              "optim.lr=0.02", "--dry-run"])
    assert res.exit_code == 0, res.output
    body, _, shape = res.output.rpartition("# cluster:")
    cfg = yaml.safe_load(body)
    assert cfg["parallel"]["nodes"] == 2 and cfg["optim"]["lr"] == 0.02
    assert "world 4 (dp=4 x mp=1)" in shape


def test_train_missing_data_is_a_clear_error_before_ray(tmp_path):
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "nothing")])
    assert res.exit_code == 1
    assert "no manifest" in res.output and "nothing" in res.output


def test_shard_refuses_pipe_urls_and_missing_sources(tmp_path):
    res = runner.invoke(app, ["shard", "fashion-mnist", "pipe:cat > /tmp/x"])
    assert res.exit_code == 1 and "refused" in res.output
    res = runner.invoke(app, ["shard", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert res.exit_code == 1 and "missing" in res.output
    assert not (tmp_path / "out").exists()


def test_shard_bad_resize(image_tree, tmp_path):
    res = runner.invoke(app, ["shard", str(image_tree), str(tmp_path / "o"), "--resize", "big"])
    assert res.exit_code == 1 and "--resize" in res.output


def test_eval_missing_checkpoint(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path)])
    assert res.exit_code == 1 and "no complete checkpoint" in res.output


def test_shard_cli_writes_manifest(image_tree, tmp_path):
    out = tmp_path / "s"
    res = runner.invoke(app, ["shard", str(image_tree), str(out), "--shard-size", "16", "--resize", "48"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / f"{image_tree.name}-train.manifest.json").read_text())
    assert manifest["num_samples"] == 60 and len(manifest["shards"]) == 4


def test_parallel_modes_set_mp_and_check_the_world():
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--parallel", "hybrid", "--nodes", "2", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "world 4 (dp=2 x mp=2)" in res.output
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--parallel", "mp", "--dry-run"])
    assert res.exit_code == 0 and "dp=1 x mp=2" in res.output
    res = runner.invoke(app, ["train", "--parallel", "hybrid", "--dry-run"])
    assert res.exit_code == 1 and "hybrid" in res.output
    res = runner.invoke(app, ["train", "--parallel", "tp", "--dry-run"])
    assert res.exit_code == 1 and "dp, mp, hybrid or owt" in res.output


def test_parallel_owt_sets_the_fc_split_and_its_groups():
    res = runner.invoke(app, ["train", "--preset", "imagenet-alexnet-owt", "--parallel", "owt", "--nodes",
                              "2", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "world 16 (dp=16 x mp=1, FC split over 2 group(s) of K=8)" in res.output
    assert "fc: model" in res.output


@pytest.mark.parametrize("args, line", [
    # the two-tower net: its FC layers are split by tower already
    (["--preset", "demo-fashion", "--parallel", "owt"],
     "error: parallel.fc: model slices the FC layers of a one-tower AlexNet; alexnet-small is built with 2 towers"),
    # K = 3 does not divide alexnet-owt's 4096
    (["--preset", "imagenet-alexnet-owt", "--parallel", "owt", "--workers-per-node", "3", "--cpu",
      "--set", "data.batch_size=258"],
     "error: parallel.fc_group: K=3 must be at least 2 and divide the world size 3 and alexnet-owt's FC width 4096"),
])
def test_owt_that_cannot_apply_is_refused_in_one_line_before_ray(monkeypatch, args, line):
    def no_ray(*a, **kw):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("cnnctl.orchestrator.preflight.connect", no_ray)
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 1
    (only,) = [out for out in res.output.splitlines() if out.strip()]
    assert only.startswith(line), only


def test_cluster_commands_without_a_cluster(tmp_path):
    res = runner.invoke(app, ["cluster", "status", "--state-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no local cluster" in res.output
    res = runner.invoke(app, ["cluster", "up", "--nodes", "2"])
    assert res.exit_code == 1 and "--local" in res.output
    res = runner.invoke(app, ["cluster", "down", "--state-dir", str(tmp_path)])
    assert res.exit_code == 0 and "no local cluster was up" in res.output


def test_models_table_pins_the_paper_counts():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    for name, params in [("alexnet ", "60,965,224"), ("alexnet-owt", "61,100,840"), ("vgg-a-lrn", "132,863,336"),
                         ("vgg-d", "138,357,544"), ("vgg-e", "143,667,240")]:
        line = next(row for row in res.output.splitlines() if f"│ {name}" in row)
        assert params in line


@pytest.mark.parametrize("group,options,commands", [
    ("tune", ["--search", "--scheduler", "--num-samples", "--max-concurrent", "--trial-workers", "--resume"],
     ["run", "report"]),
    ("shard", ["SOURCE", "DEST", "--prefix", "--shard-size", "--shard-bytes", "--workers", "--address",
               "--image-format"], ["pack", "verify", "info"]),
])
def test_group_help_shows_the_default_commands_options_and_the_commands(group, options, commands):
    """A newcomer types `cnnctl tune --help`: the options of `cnnctl tune [OPTIONS]` are there."""
    res = runner.invoke(app, [group, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    missing = [o for o in options if o not in res.output]
    assert not missing, res.output
    assert all(re.search(rf"^│ {c}\s", res.output, re.M) for c in commands), res.output
    assert f" {group} [OPTIONS]" in res.output  # the usage line: the default command's form first


def test_group_help_stays_help_only():
    """The default command's options are shown by the group's help, never parsed by it: the short
    forms still route to the default command, and a subcommand's help is its own."""
    res = runner.invoke(app, ["tune", "--num-samples", "0", "--dry-run"])
    assert res.exit_code != 0 and "num_samples" in res.output.replace("-", "_"), res.output
    res = runner.invoke(app, ["shard", "info", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "--prefix" not in res.output and "--scheduler" not in res.output


def test_tune_resume_dry_run_prints_the_saved_sweep_and_starts_nothing(tmp_path):
    from cnnctl.orchestrator.tune import space as search_space
    from cnnctl.orchestrator.tune import sweep as sweeps
    from cnnctl.orchestrator.config import resolve

    cfg = resolve("demo-fashion", None, [f"run.storage={tmp_path}", "tune.name=saved", "tune.seeds=2"])
    sweeps.save_spec(cfg, search_space.load("lrn"))
    before = sorted(p.name for p in (tmp_path / "saved").iterdir())
    res = CliRunner().invoke(app, ["tune", "--resume", "saved", "--dry-run", "--set", f"run.storage={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert f"# would resume sweep {tmp_path / 'saved'}" in res.output and "model.lrn.alpha" in res.output
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == before  # no Tune state, no trial folders
    missing = CliRunner().invoke(app, ["tune", "--resume", "nothing", "--dry-run", "--set", f"run.storage={tmp_path}"])
    assert missing.exit_code == 1 and "no sweep nothing at" in missing.output


@pytest.mark.parametrize("bad", ["..", ".", "...", "a/b", "", "tab\there", "new\nline", "nul\x00"])
def test_train_and_tune_refuse_run_and_sweep_names_outside_their_folder(bad, tmp_path):
    """A run named `..` would write beside the runs folder: refused at validation, one line naming the field."""
    res = runner.invoke(app, ["train", "--set", f"run.name={bad}", "--dry-run"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run.name:"), res.output
    res = runner.invoke(app, ["tune", "run", "--name", bad, "--dry-run"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: tune.name:"), res.output


def test_ordinary_names_with_dots_still_pass():
    res = runner.invoke(app, ["train", "--set", "run.name=vgg-a.v2", "--dry-run"])
    assert res.exit_code == 0, res.output


def test_a_split_smaller_than_one_global_batch_is_refused_before_ray(uneven_fmnist_root):
    """600 training samples, a global batch of 1024: an epoch would have no step. One line naming the
    split, its size and the batch, before Ray starts (train and tune share the check)."""
    res = runner.invoke(app, ["train", "--data", uneven_fmnist_root, "--set", "data.batch_size=1024"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "train" in lines[0] and "600" in lines[0] and "1024" in lines[0], res.output
    res = runner.invoke(app, ["train", "--data", uneven_fmnist_root, "--set", "data.limit=100", "--set",
                              "data.batch_size=128"])
    assert res.exit_code == 1 and "100" in res.output and "128" in res.output, res.output
    res = runner.invoke(app, ["tune", "run", "--data", uneven_fmnist_root, "--set", "data.batch_size=1024",
                              "--num-samples", "1"])
    assert res.exit_code == 1 and "600" in res.output and "1024" in res.output, res.output
    # batches of 64 accumulated to optimiser steps of 1024 samples: still no step
    res = runner.invoke(app, ["train", "--data", uneven_fmnist_root, "--set", "data.batch_size=64", "--set",
                              "data.global_batch=1024"])
    assert res.exit_code == 1 and "global batch of 1024 (data.global_batch" in res.output, res.output


class _Counted:
    """A stand-in (or a pass-through to ``real``) that counts its calls."""

    def __init__(self, real=None, returns=None):
        self.real, self.returns, self.calls = real, returns, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs) if self.real else self.returns


class _FakeConsole:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def callbacks(self) -> list:
        return []

    def print(self, *args, **kwargs) -> None:
        pass


class _FakeTrainer:
    """Ray Train's TorchTrainer without Ray: fit() returns a finished Result."""

    def __init__(self, *args, **kwargs):
        pass

    def fit(self):
        from types import SimpleNamespace

        return SimpleNamespace(error=None, metrics={"epoch": 0, "val_top1": 0.5}, checkpoint=None)


def _count_preflight(monkeypatch) -> dict:
    """Count every connect (wherever it is looked up), resume check and data check of one command."""
    from cnnctl.orchestrator import cli, preflight, resume

    counts = {"connect": _Counted(), "resume": _Counted(resume.check), "data": _Counted(preflight.check_data),
              "preflight": _Counted(preflight.preflight)}
    monkeypatch.setattr("cnnctl.orchestrator.preflight.connect", counts["connect"])
    monkeypatch.setattr("cnnctl.orchestrator.cluster.connect", counts["connect"])
    monkeypatch.setattr("cnnctl.orchestrator.resume.check", counts["resume"])
    monkeypatch.setattr("cnnctl.orchestrator.preflight.check_data", counts["data"])
    monkeypatch.setattr(cli, "preflight", counts["preflight"])
    return counts


def test_dry_run_calls_preflight_once_and_connects_nowhere(monkeypatch):
    counts = _count_preflight(monkeypatch)
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--data", "s3://nowhere/shards", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "# cluster: 1 node(s) x 2 worker(s) = world 2" in res.output
    assert {k: c.calls for k, c in counts.items()} == {"connect": 0, "resume": 0, "data": 0, "preflight": 1}


def test_a_real_run_checks_and_connects_once(monkeypatch, fmnist_root, tmp_path):
    """The whole `cnnctl train` path (preflight, launch.watched_fit, train.fit, prepare_run,
    build_trainer) with Ray Train's trainer and the console replaced: one connect, one resume
    check, one data check."""
    counts = _count_preflight(monkeypatch)
    monkeypatch.setattr("cnnctl.orchestrator.console.TrainConsole", _FakeConsole)
    monkeypatch.setattr("cnnctl.orchestrator.ray_workers.warm_up_train", lambda: None)
    monkeypatch.setattr("cnnctl.orchestrator.ray_workers.place_workers", lambda *a: None)
    monkeypatch.setattr("cnnctl.orchestrator.ray_workers.torch_trainer", lambda *args: _FakeTrainer)
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", "once",
                              "--set", f"run.storage={tmp_path}", "--set", "data.batch_size=64"])
    assert res.exit_code == 0, res.output
    assert "done: epoch 0 val_top1 0.5000" in res.output
    assert {k: c.calls for k, c in counts.items()} == {"connect": 1, "resume": 1, "data": 1, "preflight": 1}
    assert json.loads((tmp_path / "once" / "status.json").read_text())["state"] == "finished"
    assert (tmp_path / "once" / "config.yaml").exists()  # prepare_run ran


def test_preflight_problems_stop_before_ray(monkeypatch, tmp_path):
    counts = _count_preflight(monkeypatch)
    res = runner.invoke(app, ["train", "--preset", "demo-fashion", "--data", str(tmp_path / "none")])
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and "data" in res.output
    assert (counts["connect"].calls, counts["resume"].calls, counts["preflight"].calls) == (0, 0, 1)


def test_a_sweep_whose_tracker_cannot_run_is_refused_before_ray(monkeypatch, fmnist_root, tmp_path):
    """`cnnctl tune` checks the tracker as `cnnctl train` does: one line, exit 1, no Ray (the fast
    tier's guard fails a test that starts it)."""
    from cnnctl.orchestrator import tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    res = runner.invoke(app, ["tune", "--preset", "demo-fashion", "--data", fmnist_root, "--search", "lrn",
                              "--set", "run.tracker=mlflow", "--set", f"run.storage={tmp_path}"])
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines() == ["error: run.tracker=mlflow needs mlflow: pip install 'cnnctl[track]'"]
