"""`run.tracker=wandb`, offline only: the run's files are read back from the ``.wandb`` file wandb writes
(its records, as `wandb sync` would upload them), with no network. wandb 0.31 ships no Python reader
for that file (its datastore moved into wandb-core), so `records` here reads it: a LevelDB-style log of
`wandb_internal_pb2.Record` protobufs. wandb's own service must listen on no TCP port."""

import json
import os
import struct
from pathlib import Path

import pytest

from cnnctl.orchestrator import tracking
from cnnctl.orchestrator.config import resolve
from tests.e2e.cnnctl_cli import cli, sets
from tests.sockets import descendants, listening

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = ["data.limit=64", "data.batch_size=32", "model.width=0.25", "run.log_every=1000"]
BLOCK, HEADER = 32768, 7  # the log's blocks, and each chunk's header: crc32, length, type (full, first, middle, last)


def records(path: Path):
    """The protobuf records of a ``run-<id>.wandb`` file: after a 7-byte file header (":W&B", magic,
    version), chunks that never straddle a 32 KiB block; a record is one full chunk or first..last."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:HEADER]
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the block's zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def _name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # it exited meanwhile
        return None


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(folder: Path) -> dict:
    """One offline run under ``folder``: its config, the history rows, the summary, tags, group, exit code."""
    [path] = folder.glob("wandb/offline-run-*/run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"name": r.run.display_name, "project": r.run.project, "group": r.run.run_group,
                    "tags": list(r.run.tags)}
            out["config"] |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            out["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            out["summary"] |= {_key(i): json.loads(i.value_json) for i in r.summary.update}
        elif kind == "exit":
            out["exit"] = r.exit.exit_code
    return out


def test_an_offline_run_has_the_config_the_epochs_and_the_checkpoint_and_listens_on_no_port(tmp_path):
    pytest.importorskip("wandb", reason="the extra `track`")
    cfg = resolve(preset="demo-fashion", sets=["run.tracker=wandb", f"run.storage={tmp_path}", "run.name=wb"])
    said: list[str] = []
    before = descendants([os.getpid()])  # the session's Ray cluster too, where Ray tests ran first
    tracker = tracking.start(cfg, str(tmp_path / "wb"), say=said.append)
    assert tracker is not None and not said, said
    started = descendants([os.getpid()]) - before
    assert "wandb-core" in {_name(pid) for pid in started}
    assert listening(started) == set()  # wandb-core: a Unix socket, no TCP port
    tracker.log_config(cfg.model_dump(mode="json"))
    for row in ({"epoch": 0, "val_top1": 0.25, "train_loss": 2.0}, {"epoch": 0, "step": 5, "mid_epoch": True},
                {"epoch": 1, "val_top1": 0.5, "train_loss": 1.5, "lr": 0.01}):
        tracker.on_report(row)
    tracker.finish("FINISHED", str(tmp_path / "wb" / "checkpoint_000001"))
    run = read_run(tmp_path / "wb")
    assert not said and run["project"] == "cnnctl" and run["name"] == "wb" and run["exit"] == 0
    assert run["config"]["model"]["name"] == cfg.model.name and run["config"]["run"]["tracker"] == "wandb"
    assert [(h["epoch"], h["val_top1"]) for h in run["history"]] == [(0, 0.25), (1, 0.5)]  # the step row is not
    assert run["summary"]["checkpoint"] == str(tmp_path / "wb" / "checkpoint_000001")
    assert run["summary"]["status"] == "FINISHED"


def test_wandb_settings_that_cannot_work_are_refused_before_ray_starts():
    cfg = resolve(preset="demo-fashion", sets=["run.tracker=wandb", "run.storage=s3://bucket/runs"])
    assert tracking.check(cfg) == ["run.tracker=wandb writes its offline files on this machine: with run.storage in "
                                   "an object store, set run.tracker_uri to a local folder"]
    cfg = resolve(preset="demo-fashion", sets=["run.tracker=wandb", "run.tracker_uri=https://api.wandb.ai"])
    assert tracking.check(cfg) == ["run.tracker=wandb runs offline: run.tracker_uri is a local folder, "
                                   "not https://api.wandb.ai"]


def test_cnnctl_train_logs_one_offline_run_from_the_driver(ray_cluster, fmnist_root, tmp_path):
    import re

    pytest.importorskip("wandb", reason="the extra `track`")
    out = cli("train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", "wb", "--epochs", "2",
              "--address", ray_cluster.address, *sets(f"run.storage={tmp_path}", *SMALL, "run.tracker=wandb"))
    assert "warning" not in out, out
    done = re.search(r"done: epoch 1 val_top1 ([\d.]+) \| checkpoint (\S+)", out)
    assert done, out
    run = read_run(tmp_path / "wb")
    assert run["exit"] == 0 and run["summary"]["status"] == "FINISHED"
    assert [h["epoch"] for h in run["history"]] == [0, 1]
    assert run["history"][-1]["val_top1"] == pytest.approx(float(done.group(1)), abs=5e-4)
    assert run["config"]["data"]["mean"][0] == pytest.approx(0.28, abs=0.01)  # settled before training
    assert run["summary"]["checkpoint"] == str(tmp_path / "wb" / Path(done.group(2)).name)


def test_a_sweep_gives_each_trial_an_offline_run_grouped_by_configuration(ray_cluster, fmnist_root, tmp_path):
    pytest.importorskip("wandb", reason="the extra `track`")
    grid = tmp_path / "lr-grid.yaml"
    grid.write_text("space:\n  optim.lr: {grid: [0.01, 0.02]}\n")
    storage = tmp_path / "runs"
    out = cli("tune", "--preset", "demo-fashion", "--data", fmnist_root, "--search", str(grid), "--seeds", "2",
              "--max-concurrent", "2", "--epochs", "1", "--name", "wb-sweep", "--address", ray_cluster.address,
              *sets(f"run.storage={storage}", *SMALL, "schedule.warmup_epochs=0", "run.tracker=wandb"))
    assert "warning" not in out, out
    runs = [read_run(d) for d in sorted((storage / "wb-sweep" / "train").iterdir())]
    assert len(runs) == 4 and all(r["exit"] == 0 and [h["epoch"] for h in r["history"]] == [0] for r in runs)
    groups: dict[str, list] = {}
    for run in runs:
        about = run["config"]["cnnctl"]
        groups.setdefault(run["group"], []).append(run)
        assert run["tags"] == [about["cell"], f"seed={about['seed']}"] and run["name"] == about["trial"]
        assert run["config"]["run"]["seed"] == about["seed"]
        checkpoint = Path(run["summary"]["checkpoint"])
        assert checkpoint.parent.name == f"trial_{about['trial']}" and (checkpoint / "meta.json").exists()
    assert sorted(groups) == ["wb-sweep-c0", "wb-sweep-c1"]
    for members in groups.values():  # one configuration: its two seeds, one learning rate
        assert len({r["config"]["optim"]["lr"] for r in members}) == 1
        assert len({r["config"]["cnnctl"]["seed"] for r in members}) == 2
