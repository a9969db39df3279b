"""The training stream saves and loads its own state (ShardStream.state_dict): a fresh stream loaded
with the state taken after any step hands on the rest of the epoch byte for byte, and ends where the
uninterrupted one ends. The shards and helpers are those of test_resume_position.py."""

from __future__ import annotations

import io

import pytest
import torch

from cnnctl.shards.reader import loader
from cnnctl.shards.transforms import CropFlip
from test_resume_position import same, shard_root, stream  # noqa: F401  (shard_root: a fixture)


def run(s, epoch: int, workers: int, state: dict | None = None, stop: int | None = None):
    """(batches, state after each): the epoch from its start, or from ``state``; ``stop``: after that many steps."""
    data = loader(s, workers=workers)
    if state:
        s.load_state_dict(state)
    else:
        s.set_epoch(epoch)
        s.set_position(None)
    out, states = [], []
    for images, labels in s.counted(iter(data)):
        out.append((images.clone(), labels.clone()))
        states.append(s.state_dict())
        if stop is not None and s.steps_done == stop:
            break
    return out, states


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_a_fresh_stream_loaded_with_a_saved_state_continues_the_epoch(shard_root, workers):  # noqa: F811
    reference, states = run(stream(shard_root, 1, CropFlip(32, 4)), 1, workers)
    assert [s["steps_done"] for s in states] == [1, 2, 3, 4] and {s["epoch"] for s in states} == {1}
    for cut in range(1, len(reference)):
        saved = stream(shard_root, 1, CropFlip(32, 4))
        _, upto = run(saved, 1, workers, stop=cut)
        state = upto[-1]
        assert state == states[cut - 1]
        buffer = io.BytesIO()
        torch.save(state, buffer)  # as state.pt holds it: plain ints and lists
        loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        rest, after = run(stream(shard_root, 1, CropFlip(32, 4)), 1, workers, state=loaded)
        assert same(rest, reference[cut:]), f"resumed after step {cut}: other batches"
        assert after[-1] == states[-1]


def test_a_fresh_epoch_counts_from_zero(shard_root):  # noqa: F811
    s = stream(shard_root, 0, CropFlip(32, 4))
    run(s, 0, 0, stop=2)
    loader(s, workers=0)
    s.set_position(None)
    assert s.steps_done == 0 and s.state_dict()["steps_done"] == 0
