"""The cluster workflow with everything in object storage, against a real S3 server (moto) on 127.0.0.1:
`cnnctl shard` to s3:// -> `cnnctl train` with 2 workers from it, checkpoints to s3://, a worker killed
mid-run and the run resumed -> `cnnctl eval` (center, ten-crop) equal to a local copy of the same
checkpoint -> `cnnctl report` -> `model.init_from` and `--config` from s3:// -> a 2-trial `cnnctl
tune` stored in s3://, then `cnnctl tune report`. The Ray nodes have the server's endpoint and
credentials in their environment (tests/conftest.py), as a cloud cluster's nodes have theirs."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time

import pytest
import yaml
from typer.testing import CliRunner

from cnnctl_cli import cli, sets
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.metrics import read

pytestmark = pytest.mark.timeout(900)
BUCKET = "s3://cnn"
SMALL = ["data.batch_size=64", "model.width=0.5", "data.image_size=24", "run.log_every=1000"]


@pytest.fixture(scope="module")
def shards(s3_server) -> str:
    s3_server.mkdir("cnn")
    url = f"{BUCKET}/shards/fm"
    cli("shard", "fashion-mnist", url, "--per-class-limit", "40", "--shard-size", "100")
    assert sorted(p.rsplit("/", 1)[1] for p in s3_server.ls("cnn/shards/fm") if p.endswith(".json")) == [
        "fashion-mnist-test.manifest.json", "fashion-mnist-train.manifest.json"]
    return url


@pytest.fixture(scope="module")
def s3_run(ray_cluster, shards, s3_server) -> dict:
    """2 workers, 3 epochs, checkpoints in s3://; rank 1 SIGKILLed once epoch 1's metrics are in the store
    (by then epoch 0's checkpoint is: each epoch's is reported before the next epoch starts)."""
    run = f"{BUCKET}/runs/s3run"
    seen = {}

    def kill_rank1_after_epoch1():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = read(run)
            if rows and rows[-1]["epoch"] >= 1:
                seen["rows"], seen["pid"] = rows, rows[-1]["pid_of_rank"][1]
                os.kill(seen["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_rank1_after_epoch1, daemon=True)
    watcher.start()
    out = cli("train", "--preset", "demo-fashion", "--data", shards, "--name", "s3run", "--epochs", "3",
              "--address", ray_cluster.address, *sets(f"run.storage={BUCKET}/runs", "run.max_failures=2", *SMALL))
    watcher.join(5)
    assert "pid" in seen, "the worker was never killed"
    return {"run": run, "out": out, "seen": seen}


def test_training_from_and_to_s3_survives_a_killed_worker(s3_run, s3_server):
    rows = read(s3_run["run"])
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0] == s3_run["seen"]["rows"][0]  # epoch 0 was not redone after the kill
    assert s3_run["seen"]["pid"] not in rows[-1]["pid_of_rank"]
    # the checkpoint it prints is a URL that can be pasted back: scheme and all
    done = next(line for line in s3_run["out"].splitlines() if line.startswith("done: "))
    printed = done.rsplit("| checkpoint ", 1)[1]
    assert printed.startswith(f"{s3_run['run']}/checkpoint_") and s3_server.exists(printed + "/COMPLETE")


@pytest.mark.parametrize("tta", ["center", "ten-crop"])
def test_eval_of_the_s3_run_equals_eval_of_a_local_copy(tta, s3_run, s3_server, tmp_path):
    local = tmp_path / "s3run"
    s3_server.get("cnn/runs/s3run", str(local), recursive=True)
    cli("eval", s3_run["run"], "--split", "test", "--tta", tta, "--out", str(tmp_path / "remote.json"))
    cli("eval", str(local), "--split", "test", "--tta", tta, "--out", str(tmp_path / "local.json"))
    remote, here = (json.loads((tmp_path / f).read_text()) for f in ("remote.json", "local.json"))
    assert remote["count"] == here["count"] == 400 and remote["tta"] == tta
    assert (remote["top1"], remote["top5"], remote["loss"]) == (here["top1"], here["top5"], here["loss"])
    assert remote["checkpoints"][0].startswith(f"{s3_run['run']}/checkpoint_")


def test_eval_and_report_write_beside_the_run_in_the_store(s3_run, s3_server):
    out = json.loads(cli("eval", s3_run["run"], "--split", "test", "--json"))
    assert out["written_to"].startswith(f"{s3_run['run']}/checkpoint_") and s3_server.exists(out["written_to"])
    assert f"wrote {s3_run['run']}/report.png" in cli("report", s3_run["run"])
    assert s3_server.cat_file("cnn/runs/s3run/report.png")[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def init_run(s3_run, shards, ray_cluster) -> str:
    """A second run whose model.init_from is the first run's URL: what `cnnctl train` printed."""
    return cli("train", "--preset", "demo-fashion", "--data", shards, "--name", "from-s3", "--epochs", "1",
               "--address", ray_cluster.address,
               *sets(f"run.storage={BUCKET}/runs", f"model.init_from={s3_run['run']}", *SMALL))


def test_config_and_init_from_read_from_s3(s3_run, shards, init_run, s3_server, capfd):
    printed = cli("train", "--config", f"{s3_run['run']}/config.yaml", "--dry-run")
    resolved = yaml.safe_load(printed.rsplit("# cluster", 1)[0])
    assert resolved["run"]["name"] == "s3run" and resolved["data"]["root"] == shards
    config = yaml.safe_load(s3_server.cat_file("cnn/runs/from-s3/config.yaml"))
    assert config["model"]["init_from"].startswith(f"{s3_run['run']}/checkpoint_")  # the one checkpoint all ranks load
    copied = f"init_from {config['model']['init_from']} (tensors matching by name and shape): copied"
    assert copied in init_run + capfd.readouterr().out


def test_two_s3_runs_fused_under_dense_evaluation(s3_run, init_run, tmp_path):
    cli("eval", s3_run["run"], f"{BUCKET}/runs/from-s3", "--split", "test", "--tta", "dense", "--flip", "--out",
        str(tmp_path / "fused.json"))
    fused = json.loads((tmp_path / "fused.json").read_text())
    assert fused["count"] == 400 and len(fused["checkpoints"]) == 2
    assert all(c.startswith(f"{BUCKET}/runs/") for c in fused["checkpoints"])


def test_a_sweep_stored_in_s3_and_its_report(s3_run, shards, ray_cluster, s3_server):
    # two workers a trial: each trial is a Ray Train run whose checkpoints Tune takes from the store
    # one draw of the space, two seeds of it: two trials of one configuration
    cli("tune", "--preset", "demo-fashion", "--search", "lrn", "--num-samples", "1", "--seeds", "2",
        "--max-concurrent", "1", "--trial-workers", "2", "--epochs", "1", "--name", "s3sweep", "--data", shards,
        "--address", ray_cluster.address, *sets(f"run.storage={BUCKET}/runs", *SMALL))
    s3_server.rm("cnn/runs/s3sweep/results.csv")
    out = cli("tune", "report", f"{BUCKET}/runs/s3sweep")
    assert f"wrote {BUCKET}/runs/s3sweep/results.csv" in out
    rows = list(csv.DictReader(s3_server.cat_file("cnn/runs/s3sweep/results.csv").decode().splitlines()))
    assert [(r["seeds"], r["status"]) for r in rows] == [("2", "done")]  # one configuration, both seeds done
    assert s3_server.exists("cnn/runs/s3sweep/best.yaml") and s3_server.exists("cnn/runs/s3sweep/learning_curves.png")
    trials = [p for p in s3_server.ls("cnn/runs/s3sweep") if p.rsplit("/", 1)[1].startswith("trial_")]
    assert len(trials) == 2
    assert all(s3_server.ls(t) and any("checkpoint_" in c for c in s3_server.ls(t)) for t in trials)
    results = {t: s3_server.cat_file(f"{t}/result.json") for t in trials}
    starts = sorted(s3_server.ls("cnn/runs/s3sweep/train"))
    # --resume of a sweep stored in s3://: the finished trials are kept as they are, none restarts
    out = cli("tune", "--resume", "s3sweep", "--address", ray_cluster.address, *sets(f"run.storage={BUCKET}/runs"))
    assert f"resuming sweep {BUCKET}/runs/s3sweep" in out
    assert {t: s3_server.cat_file(f"{t}/result.json") for t in trials} == results
    assert sorted(s3_server.ls("cnn/runs/s3sweep/train", refresh=True)) == starts


@pytest.mark.parametrize("args,line", [
    (["train", "--preset", "demo-fashion", "--data", "s3://no-such-bucket/fm"],
     "error: data.root s3://no-such-bucket/fm: bucket 'no-such-bucket' not found"),
    (["eval", "s3://no-such-bucket/runs/x"],
     "error: checkpoint s3://no-such-bucket/runs/x: bucket 'no-such-bucket' not found"),
    (["report", "s3://no-such-bucket/runs/x"],
     "error: run s3://no-such-bucket/runs/x: bucket 'no-such-bucket' not found"),
    (["shard", "fashion-mnist", "s3://no-such-bucket/fm"],
     "error: DEST s3://no-such-bucket/fm: bucket 'no-such-bucket' not found"),
    (["shard", "verify", "s3://no-such-bucket/fm"],
     "error: URL s3://no-such-bucket/fm: bucket 'no-such-bucket' not found"),
    (["tune", "--preset", "demo-fashion", "--set", "run.storage=s3://no-such-bucket/runs"],
     "error: run.storage s3://no-such-bucket/runs: bucket 'no-such-bucket' not found"),
])
def test_a_missing_bucket_is_one_line_and_exit_1(args, line, s3_server):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and [out for out in res.output.splitlines() if out.startswith("error")] == [line]


def test_missing_credentials_are_one_line_and_exit_1(shards, s3_run, monkeypatch):
    import s3fs

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    no_creds = "cannot reach the store: NoCredentialsError: Unable to locate credentials"
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        for args, line in [
            (["train", "--preset", "demo-fashion", "--data", shards], f"error: data.root {shards}: {no_creds}"),
            (["tune", "--preset", "demo-fashion", "--set", f"run.storage={BUCKET}/runs"],
             f"error: run.storage {BUCKET}/runs: {no_creds}"),
            (["train", "--config", f"{BUCKET}/runs/s3run/config.yaml"],
             f"error: --config {BUCKET}/runs/s3run/config.yaml: {no_creds}"),
            (["eval", f"{BUCKET}/runs/s3run"], f"error: checkpoint {BUCKET}/runs/s3run: {no_creds}"),
        ]:
            res = CliRunner().invoke(app, args)
            errors = [out for out in res.output.splitlines() if out.startswith("error")]
            assert res.exit_code == 1 and errors == [line], args
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
