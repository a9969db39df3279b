"""Each stateful component of a run saves and loads its own state: saved, loaded into a fresh one,
it continues exactly as the one it was saved from; and train_state.py lays the states out as
state.pt has always held them (the keys older checkpoints have). The Trainer's own round trip, with
every component at once, is tests/orchestrator/test_step_checkpoint.py (bitwise)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from cnnctl.orchestrator import train_state
from cnnctl.orchestrator.device_batch import DeviceBatch, Lighting, Normalize
from cnnctl.orchestrator.schedule import Plateau
from cnnctl.orchestrator.train_state import EpochTotals, ProcessRNG

EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def through_file(state: dict) -> dict:
    """As state.pt stores and loads it (weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_plateau_continues_from_its_saved_state():
    a = Plateau(patience=1, max_drops=3)
    for acc in (0.5, 0.6, 0.6):
        a.update(acc)
    b = Plateau(patience=1, max_drops=3)
    b.load_state_dict(through_file(a.state_dict()))
    for acc in (0.6, 0.6, 0.7, 0.7, 0.7):
        a.update(acc)
        b.update(acc)
        assert b.state_dict() == a.state_dict()
    assert a.drops == 2


def stage(lighting: bool) -> DeviceBatch:
    light = Lighting(EIGVAL, EIGVEC, [0.25] * 3, 0.1, seed=7) if lighting else None
    return DeviceBatch(Normalize([0.5] * 3, [0.25] * 3), light)


def test_device_batch_lights_the_next_batch_alike_after_a_load():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    a = stage(True)
    a.set_epoch(2)
    a(images)
    saved = through_file(a.state_dict())
    expected = [a(images) for _ in range(2)]
    b = stage(True)
    b.load_state_dict(saved)
    assert all(torch.equal(b(images), e) for e in expected)
    assert not torch.equal(stage(True)(images), expected[0])  # a fresh stream would light it otherwise


def test_device_batch_without_lighting_has_nothing_to_save():
    a = stage(False)
    assert a.state_dict() == {"lighting": None}
    a.load_state_dict({"lighting": None})


def test_process_rng_streams_draw_alike_after_a_load():
    rng = ProcessRNG()
    saved = through_file(rng.state_dict())

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    first = draw()
    rng.load_state_dict(saved)
    assert draw() == first


def test_epoch_totals_continue_from_their_saved_state():
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    a = EpochTotals(torch.device("cpu"))
    a.add(torch.tensor(1.5), logits, labels)
    b = EpochTotals(torch.device("cpu"))
    b.load_state_dict(through_file(a.state_dict()))
    for t in (a, b):
        t.add(torch.tensor(0.25), logits, labels)
    assert torch.equal(a.sums, b.sums) and a.seen == b.seen == 8


def test_the_layout_on_disk_keeps_its_keys_and_inverts():
    """state.pt's keys as before the components saved themselves, and back to each component's state."""
    rng = ProcessRNG().state_dict()
    ranks = [train_state.rank_entry({"stream": {"epoch": 3, "steps_done": 5, "readers": [[9, 3, 12, r]]}, "rng": rng,
                                     "device_batch": {"lighting": None}, "totals": {"sums": [1.0, 2.0, 20]}})
             for r in range(2)]
    assert list(ranks[0]) == ["readers", "rng", "sums"]
    assert list(ranks[0]["rng"]) == ["torch", "cuda", "numpy", "python", "lighting"]
    position = {"epoch": 3, "steps_done": 5, "layout": {"dp": 2}, "ranks": ranks, "shards": "abc"}
    states = train_state.rank_states(position, 1)
    assert states["stream"] == {"epoch": 3, "steps_done": 5, "readers": [[9, 3, 12, 1]]}
    assert states["device_batch"] == {"lighting": None} and states["totals"] == {"sums": [1.0, 2.0, 20]}
    assert states["rng"].keys() == rng.keys()
    run = {"trainer": {"optimizer": {"state": {}}, "epoch": 2, "step": 40},
           "plateau": {"best": 0.5, "bad": 1, "drops": 0}}
    state = through_file(train_state.state_file(run, position))
    assert list(state) == ["optimizer", "epoch", "step", "plateau", "position"]
    assert train_state.run_states(state) == run
    old = {"optimizer": {}, "epoch": 0, "step": 7}  # a checkpoint from before the plateau state was saved
    assert train_state.run_states(old) == {"trainer": old}


def test_restore_leaves_a_component_the_checkpoint_lacks_as_it_is():
    kept, loaded = Plateau(1, 3), Plateau(1, 3)
    train_state.restore({"kept": kept, "loaded": loaded}, {"loaded": {"best": 0.4, "bad": 1, "drops": 2}})
    assert kept.state_dict() == Plateau(1, 3).state_dict() and loaded.drops == 2
