"""`cnnctl runs` over a storage folder holding finished, failed, torn, stopped and running runs, and
`cnnctl report` over several runs."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import runs
from cnnctl.orchestrator.cli import app
from cnnctl.orchestrator.config import RunConfig, to_yaml
from cnnctl.orchestrator.report import differences

runner = CliRunner()


def make_run(storage, name, epochs_planned, epochs_done, complete=None, torn=(), lr=0.01, status=None):
    """A run folder as `cnnctl train` leaves it: config.yaml, a metrics row per finished epoch,
    checkpoints (complete: with every file; torn: the marker missing), status.json."""
    cfg = RunConfig()
    cfg.run.name, cfg.schedule.epochs, cfg.optim.lr = name, epochs_planned, lr
    run = storage / name
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg))
    rows = [{"epoch": e, "train_loss": 2 - e / 10, "val_loss": 2 - e / 9, "val_top1": 0.5 + e / 10, "val_top5": 0.9,
             "lr": lr, "images_per_sec": 1000.0} for e in range(epochs_done)]
    if rows:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    weights = {"w": torch.zeros(2)}
    for e in (range(epochs_done) if complete is None else complete):
        ckpt.save(run / f"checkpoint_{e:06d}", weights, cfg, {"epoch": e, "step": 0}, {"epoch": e})
    for e in torn:
        ckpt.save(run / f"checkpoint_{e:06d}", weights, cfg, {"epoch": e, "step": 0}, {"epoch": e})
        (run / f"checkpoint_{e:06d}" / ckpt.MARKER).unlink()
    if status:
        (run / runs.STATUS).write_text(json.dumps(status))
    return run


@pytest.fixture
def storage(tmp_path):
    host = os.uname().nodename
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs: a driver that was killed
    make_run(tmp_path, "done", 3, 3, status={"state": "finished", "host": host, "pid": 1})
    make_run(tmp_path, "crashed", 3, 0, complete=[], status={"state": "failed", "host": host, "pid": 1,
                                                            "error": "RuntimeError: loss is nan"})
    make_run(tmp_path, "torn", 4, 2, complete=[0], torn=[1], status={"state": "running", "host": host, "pid": gone.pid})
    make_run(tmp_path, "live", 5, 1, status={"state": "running", "host": host, "pid": os.getpid()})
    (tmp_path / "a-sweep").mkdir()  # not a run: no config.yaml
    (tmp_path / "a-sweep" / "sweep.yaml").write_text("{}\n")
    return tmp_path


def test_runs_lists_each_run_and_where_it_stands(storage):
    rows = {r.name: r for r in runs.list_runs(str(storage))}
    assert sorted(rows) == ["crashed", "done", "live", "torn"]
    assert (rows["done"].status, rows["done"].done, rows["done"].planned) == ("finished", 3, 3)
    assert rows["done"].best == pytest.approx(0.7) and rows["done"].last == pytest.approx(0.7)
    assert rows["crashed"].status == "failed" and "loss is nan" in rows["crashed"].note and rows["crashed"].best is None
    # its driver is gone, its newest checkpoint torn: rerunning resumes from the complete one
    assert rows["torn"].status == "resumable" and "1 torn checkpoint(s) ignored" in rows["torn"].note
    assert (rows["torn"].done, rows["torn"].planned) == (2, 4)
    assert rows["live"].status == "running"


def test_runs_command_prints_a_table_and_json(storage):
    res = runner.invoke(app, ["runs", str(storage)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:5] == ["run", "model", "layout", "world", "epochs"]
    by_name = {line.split()[0]: line for line in lines[2:]}
    assert sorted(by_name) == ["crashed", "done", "live", "torn"]
    assert "3/3" in by_name["done"] and "70.00%" in by_name["done"] and "finished" in by_name["done"]
    assert "failed" in by_name["crashed"] and "resumable" in by_name["torn"] and "running" in by_name["live"]
    res = runner.invoke(app, ["runs", str(storage), "--json"])
    assert {r["name"]: r["status"] for r in json.loads(res.output)} == {
        "crashed": "failed", "done": "finished", "live": "running", "torn": "resumable"}


def test_an_elastic_run_shows_its_planned_nodes_and_the_world_it_trains_at_now(tmp_path):
    run = make_run(tmp_path, "elastic", 4, 2, complete=[0])
    cfg = RunConfig()  # as the driver saved it: 1 to 2 nodes of 2 workers
    cfg.parallel.nodes, cfg.parallel.min_nodes, cfg.parallel.workers_per_node = 2, 1, 2
    (run / "config.yaml").write_text(to_yaml(cfg))
    cfg.parallel.nodes = 1  # its workers after a node was lost
    ckpt.save(run / "checkpoint_000001", {"w": torch.zeros(2)}, cfg, {"epoch": 1, "step": 0}, {"epoch": 1})
    [row] = runs.list_runs(str(tmp_path))
    assert (row.layout, row.world) == ("1-2x2 dp=4 mp=1", "2 (dp 2)")
    out = runner.invoke(app, ["runs", str(tmp_path)]).output
    assert out.splitlines()[2].split()[:5] == ["elastic", "alexnet-small", "1-2x2", "dp=4", "mp=1"]
    assert "2 (dp 2)" in out


def test_runs_on_a_missing_storage_names_it(tmp_path):
    res = runner.invoke(app, ["runs", str(tmp_path / "none")])
    assert res.exit_code == 0 and f"no runs under {tmp_path / 'none'}" in res.output


def test_report_overlays_several_runs_and_names_what_differs(tmp_path):
    a = make_run(tmp_path, "lr-a", 3, 3, lr=0.01)
    b = make_run(tmp_path, "lr-b", 3, 2, lr=0.05)
    res = runner.invoke(app, ["report", str(a), str(b)])
    assert res.exit_code == 0, res.output
    png = tmp_path / "report-lr-a+lr-b.png"
    assert res.output.strip() == f"wrote {png}"
    assert Image.open(png).format == "PNG"
    assert differences([yaml.safe_load((r / "config.yaml").read_text()) for r in (a, b)]) == ["optim.lr"]


def test_differences_skip_names_and_places():
    base = RunConfig().model_dump(mode="json")
    other = RunConfig().model_dump(mode="json")
    other["run"]["name"], other["run"]["storage"], other["model"]["lrn"] = "x", "s3://b/runs", {"alpha": 2e-4}
    assert differences([base, other]) == ["model.lrn.alpha"]
