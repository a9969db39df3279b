"""An epoch resized mid-way trains the samples of the uninterrupted epoch, each once, with the same
crop and flip: real JPEG shards of uneven sizes (10, 10, 10, 7 samples, so a reader wraps round into
a second pass), 2 dp ranks x 2 loader workers cut after a step, the rest at 1 rank accumulating 2
batches a step (and at 3 ranks x 1 worker, and resized twice), through the real ShardStream."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from cnnctl.shards import dealt
from cnnctl.shards import manifest as mf
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.transforms import CropFlip
from test_resume_position import shard_root  # noqa: F401 - the photo shards, a module fixture

pytestmark = pytest.mark.timeout(300)
EPOCH, BATCH = 1, 4


@pytest.fixture(scope="module")
def url(shard_root) -> str:  # noqa: F811 - the imported fixture
    return mf.manifest_url(str(shard_root), "photos", "train")


def run(url: str, dp: int, workers: int, accumulate: int, start: int, stop: int | None, deal=None, readers=None):
    """Steps ``start`` to ``stop`` of every rank of a layout (``readers``: each rank's start
    positions): (the per-sample hashes of their images, every reader's position after ``stop``)."""
    samples, after = Counter(), []
    for rank in range(dp):
        s = ShardStream(url, Split(rank, dp), BATCH, CropFlip(32, 4), seed=5, shuffle_buffer=6, accumulate=accumulate)
        data = loader(s, workers=workers)
        s.set_epoch(EPOCH)
        s.set_position(readers[rank] if readers else None, start, deal)
        stop = s.steps if stop is None else stop
        for step, (images, labels) in enumerate(data, start=start):
            if step == stop:
                break
            samples.update(hashlib.sha1(im.numpy().tobytes() + bytes([int(y)])).hexdigest()
                           for im, y in zip(images, labels))
        after += s.position(stop)
        s.close()
    return samples, after


def resized(url: str, old: tuple, new: tuple, cut: int, deal=None, readers=None, start: int = 0):
    """Layout ``old`` (dp, workers, accumulate) from step ``start`` to ``cut`` optimiser steps, then
    the rest at ``new``: (samples of both parts, the deal, new layout's positions at the end)."""
    (dp, w, a), (dp2, w2, a2) = old, new
    before, positions = run(url, dp, w, a, start * a, cut * a, deal, readers)
    steps, steps2 = 4 * a, 4 * a2  # 37 samples // a global batch of 8: 4 optimiser steps
    new_deal = dealt.resize(deal, positions, (dp, max(w, 1), BATCH, steps), (dp2, max(w2, 1), BATCH, steps2, cut * a2))
    starts = [dealt.start(max(w2, 1), cut * a2)] * dp2
    return before, new_deal, starts


@pytest.fixture(scope="module")
def reference(url):
    samples, positions = run(url, 2, 2, 1, 0, None)
    assert sum(samples.values()) == 32 == sum(p.keys for p in positions)
    return samples, positions


@pytest.mark.parametrize("new", [(1, 0, 2), (1, 2, 2)], ids=["1-rank-in-process", "1-rank-2-workers"])
def test_the_rest_of_the_epoch_at_another_layout_trains_the_same_samples_with_the_same_crops(url, reference, new):
    before, deal, starts = resized(url, (2, 2, 1), new, 1)
    after, positions = run(url, new[0], new[1], new[2], 2, None, deal, starts)
    assert before + after == reference[0]  # each sample once, cropped and flipped as in the uninterrupted epoch
    assert deal["carried"][0] + sum(p.keys for p in positions) == 32
    digest = (deal["carried"][1] + sum(p.digest for p in positions)) % (1 << 61)
    assert digest == sum(p.digest for p in reference[1]) % (1 << 61)


def test_an_epoch_resized_twice_still_trains_each_sample_once(url, reference):
    """dp 2 x 2 workers -> dp 1 accumulating 2 after step 1 -> dp 2 x 1 worker after step 2 (from
    its step checkpoint's positions, the deal then redealt)."""
    before, deal, starts = resized(url, (2, 2, 1), (1, 2, 2), 1)
    middle, deal2, starts2 = resized(url, (1, 2, 2), (2, 0, 1), 2, deal, starts, start=1)
    after, positions = run(url, 2, 0, 1, 2, None, deal2, starts2)
    assert before + middle + after == reference[0]
    assert deal2["carried"][0] + sum(p.keys for p in positions) == 32


def test_a_stream_of_the_same_layout_resumes_a_dealt_epoch_bitwise(url):
    """A step checkpoint inside a resized epoch: its readers' positions and the deal resume it exactly."""
    _, deal, starts = resized(url, (2, 2, 1), (1, 2, 2), 1)
    whole, _ = run(url, 1, 2, 2, 2, None, deal, starts)
    first, positions = run(url, 1, 2, 2, 2, 5, deal, starts)
    rest, _ = run(url, 1, 2, 2, 5, None, deal, [positions])
    assert first + rest == whole


def epoch_samples(stream: ShardStream, data, epoch: int) -> Counter:
    stream.set_epoch(epoch)
    stream.set_position(None)
    return Counter(hashlib.sha1(im.numpy().tobytes()).hexdigest() for images, _ in data for im in images)


def test_the_epoch_after_a_resized_one_is_the_layouts_own_in_persistent_loader_workers(url):
    """The training loop keeps its loader workers across epochs (loader(recycle=True)): they started
    with the resized epoch's deal, and the next epoch must read this layout's own part, not the deal."""
    _, deal, starts = resized(url, (2, 2, 1), (1, 2, 2), 1)
    s = ShardStream(url, Split(0, 1), BATCH, CropFlip(32, 4), seed=5, shuffle_buffer=6, accumulate=2)
    data = loader(s, workers=2, recycle=True)
    s.set_epoch(EPOCH)
    s.set_position(starts[0], 2, deal)
    list(data)  # the rest of the resized epoch
    after = epoch_samples(s, loader(s, workers=2, recycle=True), EPOCH + 1)
    s.close()
    fresh = ShardStream(url, Split(0, 1), BATCH, CropFlip(32, 4), seed=5, shuffle_buffer=6, accumulate=2)
    expected = epoch_samples(fresh, loader(fresh, workers=2), EPOCH + 1)
    fresh.close()
    assert sum(after.values()) == 32 and after == expected
