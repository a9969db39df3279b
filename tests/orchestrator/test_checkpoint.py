"""Checkpoint folders: canonical weights, safe loading, torn checkpoints ignored."""

import os
import pickle

import pytest
import torch

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator.config import RunConfig


def _save(folder, epoch, complete=True):
    model = models.build("alexnet-small", num_classes=10, width=0.25)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    ckpt.save(folder, model.state_dict(), RunConfig(), {"optimizer": optimizer, "epoch": epoch, "step": 3},
              {"epoch": epoch})
    if not complete:
        (folder / ckpt.MARKER).unlink()
    return model


def test_round_trip(tmp_path):
    model = _save(tmp_path / "checkpoint_a", epoch=4)
    weights = ckpt.load_weights(tmp_path / "checkpoint_a")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert ckpt.load_state(tmp_path / "checkpoint_a")["epoch"] == 4
    assert ckpt.load_config(tmp_path / "checkpoint_a") == RunConfig()


def test_torn_newest_checkpoint_is_ignored(tmp_path):
    _save(tmp_path / "checkpoint_1", epoch=1)
    _save(tmp_path / "checkpoint_2", epoch=2, complete=False)  # killed mid-write
    assert ckpt.find(tmp_path) == str(tmp_path / "checkpoint_1")
    assert ckpt.resume_point(tmp_path / "checkpoint_2", tmp_path) == str(tmp_path / "checkpoint_1")
    assert ckpt.resume_point(None, tmp_path / "empty") is None
    with pytest.raises(ckpt.CheckpointError, match="torn"):
        ckpt.find(tmp_path / "checkpoint_2")


@pytest.mark.parametrize("missing", ["state.pt", "model.safetensors"])
def test_a_marker_without_all_files_is_torn(tmp_path, missing):
    # an upload lands files in any order: the marker may be there before the weights or the state
    _save(tmp_path / "checkpoint_1", epoch=1)
    _save(tmp_path / "checkpoint_2", epoch=2)
    (tmp_path / "checkpoint_2" / missing).unlink()
    assert not ckpt.is_complete(tmp_path / "checkpoint_2")
    assert ckpt.find(tmp_path) == str(tmp_path / "checkpoint_1")


def test_an_object_store_run_resumes_from_its_folder_when_ray_has_no_checkpoint(tmp_path):
    # workers lost before Ray registered the last report: the newest complete checkpoint in the store
    from cnnctl.shards import location as loc

    run = "memory://ckpt-test/runs/r"
    for epoch, complete in ((1, True), (2, False)):
        _save(tmp_path / f"checkpoint_{epoch}", epoch=epoch, complete=complete)
        loc.put_dir(str(tmp_path / f"checkpoint_{epoch}"), loc.join(run, f"checkpoint_{epoch}"), last=ckpt.MARKER)
    assert ckpt.resume_point(None, run) == "memory://ckpt-test/runs/r/checkpoint_1"
    assert ckpt.load_state(ckpt.resume_point(None, run))["epoch"] == 1


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CNNCTL_PWNED']}",))


def test_unsafe_pickle_is_refused_with_no_side_effect(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint_x"
    _save(folder, epoch=0)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CNNCTL_PWNED", str(marker))
    with open(folder / "state.pt", "wb") as f:
        pickle.dump({"epoch": _Payload()}, f)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_state(folder)
    assert not marker.exists()
    # the same file really is a payload: plain pickle would have run it
    with open(folder / "state.pt", "rb") as f:
        pickle.load(f)
    assert marker.exists()
