"""What a person sees from `cnnctl train`: the real command in its own process, its output to a pipe
(as in CI or `make demo | tee log`)."""

import re
from pathlib import Path

import pytest

from tests.e2e.cnnctl_cli import clean_env, run_cnnctl, sets
from tests.sockets import beyond_loopback

pytestmark = pytest.mark.timeout(600)

STEPS = 600 // 2 // 16  # the 600-image subset, dp=2, 16 images per rank: 18 steps an epoch
LOG_EVERY = 5
# The bound: the start line, one line per LOG_EVERY steps, the table header, the epoch's row, its
# checkpoint, and the done line. Any Ray line on top breaks it.
BOUND = 1 + STEPS // LOG_EVERY + 3 + 1
RAY_INTERNALS = ("PlacementGroupCleaner", "TrainingReport", "Reporting training result",
                 "Checkpoint successfully created", "Token authentication", "Started a local Ray instance",
                 "training worker group", "Setting up process group")


def train_args(fmnist_root: str, storage: Path, name: str) -> list[str]:
    return ["train", "--preset", "demo-fashion", "--data", fmnist_root, "--name", name, "--epochs", "1",
            *sets(f"run.storage={storage}", "data.batch_size=32", "model.width=0.5", f"run.log_every={LOG_EVERY}")]


def test_the_demo_preset_to_a_pipe_prints_a_short_readable_log(fmnist_root, tmp_path):
    """With a local Ray, as `make demo` runs it: a short log, its Ray on loopback, its token 0600."""
    sockets, home = set(), tmp_path / "home"
    rc, lines = run_cnnctl(*train_args(fmnist_root, tmp_path, "pipe"), env=clean_env(HOME=str(home)), sockets=sockets)
    text = "\n".join(lines)
    assert rc == 0, text
    # The token of its local Ray is its user's alone.
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    assert (home / ".ray").stat().st_mode & 0o777 == 0o700
    # Its local Ray (GCS, raylet, agents, workers) listened, and on loopback only.
    assert {"gcs_server", "raylet"} <= {name for _, _, name in sockets}, sockets
    assert not beyond_loopback(sockets), beyond_loopback(sockets)
    assert len(lines) <= BOUND, f"{len(lines)} lines, bound {BOUND}:\n{text}"
    repeats = [a for a, b in zip(lines, lines[1:]) if a == b]
    assert not repeats, f"lines repeated:\n{text}"
    assert not [w for w in RAY_INTERNALS if w in text], text
    steps = [line for line in lines if line.startswith("epoch 1/1 step ")]
    assert [int(re.search(r"step (\d+)/18", s).group(1)) for s in steps] == [5, 10, 15], text
    rows = [line for line in lines if re.match(r"\s*1/1\s+\d", line)]
    assert len(rows) == 1, text
    val_top1 = float(rows[0].split()[4].rstrip("%")) / 100  # train loss, top-1, then val loss, top-1
    assert "val loss" in text and 0 < val_top1 <= 1
    ckpt = [line for line in lines if line.strip().startswith("checkpoint ")]
    assert len(ckpt) == 1 and Path(ckpt[0].split()[-1]).is_dir(), text
    done = re.match(r"done: epoch 0 val_top1 ([\d.]+) \| checkpoint ", lines[-1])
    assert done and float(done.group(1)) == pytest.approx(val_top1, abs=0.0005), text


def test_verbose_shows_what_ray_says(ray_cluster, fmnist_root, tmp_path):
    """On the 2-node test cluster (`cnnctl cluster up`, which has no dashboard), through --address."""
    state = str(Path(ray_cluster.token_path).parent)
    args = [*train_args(fmnist_root, tmp_path, "verbose"), "--address", ray_cluster.address]
    rc, lines = run_cnnctl(*args, "--verbose", env=clean_env(CNNCTL_CLUSTER_DIR=state))
    text = "\n".join(lines)
    assert rc == 0, text
    # (Ray's own "Checkpoint successfully created" belongs to its default upload; cnnctl uploads marker last)
    for said in ("Started training worker group", "Reporting training result", "TrainingReport(checkpoint=Checkpoint("):
        assert said in text, f"{said!r} missing:\n{text}"
    assert "PlacementGroupCleaner" not in text, text  # the cleaner that cannot work on this cluster is not started
    assert len([line for line in lines if re.match(r"\s*1/1\s+\d", line)]) == 1, text


def test_tune_to_a_pipe_prints_a_row_per_finished_trial(ray_cluster, fmnist_root, tmp_path):
    """Two one-worker trials of one epoch through `cnnctl tune --address`: the start lines, a header
    and one row per trial, the results table and the files written; no Tune status tables."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("space:\n  optim.lr: {grid: [0.02, 0.01]}\n")
    state = str(Path(ray_cluster.token_path).parent)
    rc, lines = run_cnnctl("tune", "--preset", "demo-fashion", "--search", str(grid), "--num-samples", "1",
                           "--epochs", "1", "--name", "quiet", "--data", fmnist_root, "--address", ray_cluster.address,
                           *sets(f"run.storage={tmp_path}", "data.batch_size=32", "model.width=0.5"),
                           env=clean_env(CNNCTL_CLUSTER_DIR=state))
    text = "\n".join(lines)
    assert rc == 0, text
    noise = (*RAY_INTERNALS, "Trial status", "Current time:", "Logical resource usage")
    assert not [w for w in noise if w in text], text
    header = [i for i, line in enumerate(lines) if line.startswith("trial  optim.lr  seed  epochs  val_top1")]
    assert len(header) == 1, text
    rows = [line.split() for line in lines[header[0] + 1:header[0] + 3]]
    assert sorted(r[1] for r in rows) == ["0.01", "0.02"], text
    assert all(r[2:4] == ["0", "1"] and r[-1] == "finished" for r in rows), text
    assert not [a for a, b in zip(lines, lines[1:]) if a == b], text
    assert len(lines) <= 40, text


def test_a_workers_error_shows_under_its_name_and_ends_in_one_error_line(fmnist_root, tmp_path):
    """A crop larger than the images fails in the workers' data pipeline, past the driver's checks."""
    rc, lines = run_cnnctl(*train_args(fmnist_root, tmp_path, "broken"),
                           *sets("data.image_size=64", "run.max_failures=0"), env=clean_env())
    text = "\n".join(lines)
    assert rc == 1, text
    assert re.search(r"\(RayTrainWorker pid=\d+.*\).*BadSample: .*smaller than the 64px crop", text), text
    assert lines[-1].startswith("error: training failed: ") and "smaller than the 64px crop" in lines[-1], text
    assert "Traceback" not in "\n".join(line for line in lines if "RayTrainWorker" not in line), text  # no driver trace
    assert '"state": "failed"' in (tmp_path / "broken" / "status.json").read_text()


def test_a_second_run_of_the_same_name_in_one_process_keeps_its_console(ray_cluster, tmp_path):
    """The driver owns its console actor: when the first run's console is collected (late, as Python's
    cycle collector may), the second run's events must still arrive (the dp2 and mp2 resume tests
    both run "worker-loss" in one process, and the second once failed with "The actor is dead
    because all references to the actor were removed")."""
    import gc
    import io

    import ray
    from rich.console import Console

    from cnnctl.orchestrator.console import TrainConsole
    from cnnctl.orchestrator.console_events import WorkerConsole

    run = str(tmp_path / "same-name")
    first = TrainConsole(run, 1, 1, console=Console(file=io.StringIO()))
    with first:
        pass
    out = io.StringIO()
    with TrainConsole(run, 1, 1, console=Console(file=out, width=200)):
        del first
        gc.collect()  # the first console's actor handle goes now, while the second run is on
        worker = WorkerConsole.find("same-name", 1)
        assert worker.sink is not None
        ray.get(worker.sink.put.remote(("note", "still here")))
    assert "still here" in out.getvalue()
