"""Step checkpoints on the plain-PyTorch Trainer (no Ray, one gloo rank, 2 loader workers): a Trainer
started from any of them ends with the weights of the run that never stopped, bit for bit. The
end-to-end tests (tests/e2e/test_exact_resume.py) kill real Ray workers and drivers; these cover
more resume points and augmentations in seconds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import resume
from cnnctl.orchestrator.cluster import free_port
from cnnctl.orchestrator.config import resolve
from cnnctl.orchestrator.train import Trainer, prepare_run


def train(data: str, out: Path, name: str, sets: list[str], resume_from: str | None = None) -> list[tuple[dict, Path]]:
    """Two epochs of 75 steps; returns (metrics, checkpoint copy) of every report with a checkpoint."""
    cfg = prepare_run(resolve("demo-fashion", None, [
        f"data.root={data}", f"run.storage={out}", f"run.name={name}", "parallel.workers_per_node=1",
        "run.log_every=1000", "schedule.epochs=2", "data.batch_size=8", "model.width=0.5", "data.loader_workers=2",
        "run.checkpoint_every_steps=10",
        *sets]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    kept = []

    def report(metrics: dict, folder: str | None) -> None:  # what Ray Train does: persist, then delete the local folder
        if folder:
            kept.append((metrics, out / name / f"checkpoint_{len(kept):04d}"))
            shutil.copytree(folder, kept[-1][1])
            shutil.rmtree(folder)

    try:
        Trainer(cfg, resume_from=resume_from).run(report)
    finally:
        dist.destroy_process_group()
    return kept


def rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]


AUGMENT = {"crop-flip": [], "alexnet-lighting": ["data.augment=alexnet", "data.image_size=24"]}


@pytest.mark.slow  # a Trainer on a gloo process group
@pytest.mark.timeout(600)
@pytest.mark.parametrize("augment", AUGMENT)
def test_a_trainer_started_from_a_step_checkpoint_ends_bitwise_equal(uneven_fmnist_root, tmp_path, augment):
    sets = AUGMENT[augment]
    reference = train(uneven_fmnist_root, tmp_path, "reference", sets)
    mids = [(m, path) for m, path in reference if m.get("mid_epoch")]
    # every 10 global steps: an epoch is 75, so the second epoch's fall at its steps 5, 15, ...
    assert [m["step_in_epoch"] for m, _ in mids] == [10, 20, 30, 40, 50, 60, 70, 5, 15, 25, 35, 45, 55, 65]
    expected = ckpt.load_weights(str(reference[-1][1]))
    # epoch 1 step 30; epoch 2 step 25 (a persistent loader's second epoch)
    for k, (metrics, path) in enumerate((mids[2], mids[9])):
        name = f"resumed{k}"
        out = train(uneven_fmnist_root, tmp_path, name, sets, resume_from=str(path))
        final = ckpt.load_weights(str(out[-1][1]))
        assert all(torch.equal(final[key], expected[key]) for key in expected), f"from {metrics}: other weights"
        resumed = next(r for r in rows(tmp_path, name) if r["epoch"] == metrics["epoch"])
        ref = rows(tmp_path, "reference")[metrics["epoch"]]
        assert resumed["resumed_at_step"] == metrics["step_in_epoch"]
        assert (resumed["train_loss"], resumed["samples_trained"], resumed["samples_digest"]) == \
            (ref["train_loss"], ref["samples_trained"], ref["samples_digest"])


def test_another_layout_is_refused_in_one_line():
    saved = resume.layout(resolve("demo-fashion", None, ["data.loader_workers=2"]))
    now = resolve("demo-fashion", None, ["data.loader_workers=3", "data.batch_size=64"])
    line = resume.refusal(saved, now, "runs/x/checkpoint_1")
    assert line.startswith("runs/x/checkpoint_1: a mid-epoch checkpoint resumes only at the layout it was taken at")
    assert "data.loader_workers 2 -> 3" in line and "data.batch_size 128 -> 64" in line and "\n" not in line
    assert resume.refusal(saved, resolve("demo-fashion", None, ["data.loader_workers=2"]), "x") is None


@pytest.mark.slow  # a Trainer on a gloo process group
@pytest.mark.timeout(300)
def test_checkpoint_minutes_asks_the_clock_every_20_steps(uneven_fmnist_root, tmp_path):
    """run.checkpoint_minutes alone, so short that every look at the clock finds it due."""
    kept = train(uneven_fmnist_root, tmp_path, "minutes", ["run.checkpoint_every_steps=null",
                                                           "run.checkpoint_minutes=1e-9", "schedule.epochs=1"])
    assert [m["step_in_epoch"] for m, _ in kept if m.get("mid_epoch")] == [20, 40, 60]
    assert [m.get("mid_epoch") for m, _ in kept][-1] is None  # then the end-of-epoch checkpoint


@pytest.mark.slow  # a Trainer on a gloo process group
@pytest.mark.timeout(300)
def test_a_step_checkpoint_over_other_shards_is_refused(uneven_fmnist_root, tmp_path):
    """The same images packed into other shards: the saved positions would name other samples."""
    from tests.e2e.cnnctl_cli import cli

    kept = train(uneven_fmnist_root, tmp_path, "first", ["schedule.epochs=1", "data.limit=320"])
    step = next(path for m, path in kept if m.get("mid_epoch"))
    other = tmp_path / "repacked"
    cli("shard", "fashion-mnist", str(other), "--per-class-limit", "60", "--shard-size", "200")
    with pytest.raises(ValueError, match="the training split's shards are not those this mid-epoch checkpoint read"):
        train(str(other), tmp_path, "second", ["schedule.epochs=1", "data.limit=320"], resume_from=str(step))


@pytest.mark.slow  # a Trainer on a gloo process group
def test_an_epoch_without_a_step_ends_without_a_crash(uneven_fmnist_root, tmp_path):
    """A split smaller than one global batch (the CLI refuses it; a Trainer built directly must not
    crash with names unbound): the epoch reports no step and NaN training metrics."""
    kept = train(uneven_fmnist_root, tmp_path, "empty", ["schedule.epochs=1", "data.batch_size=1024",
                                                         "run.checkpoint_every_steps=null"])
    [(metrics, _)] = kept
    assert metrics["steps_per_rank"] == [0] and metrics["train_loss"] != metrics["train_loss"]  # NaN
    assert metrics["lr"] > 0 and metrics["val_count"] > 0
