"""A training stream resumed at any step of its epoch hands on the same batches, byte for byte, as the
stream never stopped; and it gets there without decoding what it skips or reading shards it used up.

Real JPEG shards of scikit-image photos in uneven shards (10, 10, 10, 7 samples), so some readers
run out of their part and wrap round into a second pass mid-epoch; two dp ranks, DataLoader
workers, and a shard truncated on disk under the skipping policy.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnctl.shards import manifest as mf
from cnnctl.shards import shard_tar, stages
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.stages import SkipBad
from cnnctl.shards.transforms import AlexNetCrop, CropFlip, ScaleJitter
from cnnctl.shards.writer import PackOptions, pack
from conftest import photo


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(3)
    tree = root / "tree"
    for i in range(37):
        folder = tree / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(rng, 60, 52)).save(folder / f"img{i:03d}.JPEG", quality=90)
    pack(class_folders(tree, "train"), str(root), "photos", PackOptions(image_format="jpg", shard_size=10))
    return root


def stream(root: Path, rank: int, transform, **kw) -> ShardStream:
    return ShardStream(mf.manifest_url(str(root), "photos", "train"), Split(rank, 2), 4, transform,
                       train=True, seed=5, shuffle_buffer=kw.pop("buffer", 6), **kw)


def epoch_batches(s: ShardStream, epoch: int, workers: int, resume_at: int | None = None, positions=None):
    """(batches, positions after each of them): the epoch from its start, or resumed after
    ``resume_at`` steps at ``positions``."""
    data = loader(s, workers=workers)
    s.set_epoch(epoch)
    s.set_position(positions, resume_at or 0)
    out, after = [], []
    for step, (images, labels) in enumerate(data, start=resume_at or 0):
        out.append((images.clone(), labels.clone()))
        after.append(s.position(step + 1))
    return out, after


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch_equal(x, y)
                                    for (xa, ya), (xb, yb) in zip(a, b) for x, y in ((xa, xb), (ya, yb)))


def torch_equal(x, y) -> bool:
    return x.shape == y.shape and bool((x == y).all())


CASES = {"crop-flip-2-workers": (CropFlip(32, 4), 2), "alexnet-in-process": (AlexNetCrop(40), 0),
         "vgg-jitter-2-workers": (ScaleJitter(32, 40, 56), 2)}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES)
def test_resume_at_every_step_hands_on_the_batches_of_the_uninterrupted_epoch(shard_root, case):
    transform, workers = CASES[case]
    for rank in range(2):
        reference, positions = epoch_batches(stream(shard_root, rank, transform), 1, workers)
        assert len(reference) == 4  # 37 samples // (2 ranks x 4); with 2 workers, a 7-sample part wraps round
        assert sum(p.keys for p in positions[-1]) == 16
        for cut in range(1, len(reference)):
            resumed, _ = epoch_batches(stream(shard_root, rank, transform), 1, workers, cut, positions[cut - 1])
            assert same(resumed, reference[cut:]), f"rank {rank}: resumed after step {cut}, other batches"


@pytest.mark.timeout(300)
def test_the_next_epoch_after_a_resumed_one_is_the_uninterrupted_one(shard_root):
    s = stream(shard_root, 0, CropFlip(32, 4))
    _, positions = epoch_batches(s, 0, 2)
    whole = [epoch_batches(stream(shard_root, 0, CropFlip(32, 4)), e, 2)[0] for e in (0, 1)]
    resumed = stream(shard_root, 0, CropFlip(32, 4))
    rest, _ = epoch_batches(resumed, 0, 2, 3, positions[2])
    assert same(rest, whole[0][3:])
    assert same(epoch_batches(resumed, 1, 2)[0], whole[1])  # the same persistent-less stream, next epoch from its start


@pytest.mark.timeout(300)
@pytest.mark.parametrize("buffer", [1, 3], ids=["in-order", "shuffled"])
def test_a_resume_decodes_nothing_it_skips_and_leaves_used_up_shards_unread(shard_root, monkeypatch, buffer):
    """In-process reader (its calls are countable here), resumed before its last step: it decodes
    that step's 4 samples only, and opens exactly the shards still holding a sample the shuffle had
    taken in but not handed on at the cut, or one after it (the replay of the shuffle says which)."""
    reference, positions = epoch_batches(stream(shard_root, 0, CropFlip(32, 4), buffer=buffer), 0, 0)
    opened, decoded = [], []
    read, decode = shard_tar.tar_samples, stages.decode
    monkeypatch.setattr(shard_tar, "tar_samples", lambda url: opened.append(url) or read(url))
    monkeypatch.setattr(stages, "decode", lambda raw, *a, **k: decoded.append(raw["__key__"]) or decode(raw, *a, **k))
    cut = len(reference) - 1
    rest, _ = epoch_batches(stream(shard_root, 0, CropFlip(32, 4), buffer=buffer), 0, 0, cut, positions[cut - 1])
    assert same(rest, reference[cut:])
    assert len(decoded) == 4, decoded  # the last batch's samples, none of the 12 skipped

    s = stream(shard_root, 0, CropFlip(32, 4))
    urls, _ = stages.split(stages.shard_order(s.urls, s.seed, 0, shuffle=True), stages.Unit.of(Split(0, 2), 0, 1))
    count = {u: sh["count"] for u, sh in zip(s.urls, s.manifest["shards"])}
    length, taken = sum(count[u] for u in urls), 4 * cut
    held = stages.replay(length, buffer, random.Random(f"{s.seed}/0/0"), taken) if buffer > 1 else []
    needed = set(held) | set(range(taken + len(held), length))
    starts = np.cumsum([0] + [count[u] for u in urls])
    expected = [u for u, a, b in zip(urls, starts, starts[1:]) if needed & set(range(a, b))]
    assert opened == expected
    if buffer == 1:
        assert opened == urls[1:]  # in order, the first shard (10 samples) is used up by the cut at 12


@pytest.mark.timeout(300)
def test_resume_past_a_truncated_shard_skips_the_same_holes(shard_root, tmp_path):
    """A shard cut short on disk: its missing samples stay holes in their places, so a resumed epoch
    still hands on the uninterrupted one's batches, and the policy counts them."""
    import shutil

    root = tmp_path / "cut"
    shutil.copytree(shard_root, root)
    shard = sorted(root.glob("photos-train-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    policy = SkipBad()
    for rank in range(2):
        reference, positions = epoch_batches(stream(root, rank, CropFlip(32, 4), on_bad=policy), 0, 2)
        for cut in (1, 3):
            resumed, _ = epoch_batches(stream(root, rank, CropFlip(32, 4), on_bad=SkipBad()), 0, 2, cut,
                                       positions[cut - 1])
            assert same(resumed, reference[cut:])
    assert policy.count == 2 * 7  # its 7 missing samples, at each of the 2 passes its reader makes (3 left of 10)


def test_positions_are_refused_for_another_worker_count(shard_root):
    s = stream(shard_root, 0, CropFlip(32, 4))
    _, positions = epoch_batches(s, 0, 2)
    other = stream(shard_root, 0, CropFlip(32, 4))
    loader(other, workers=3)
    with pytest.raises(ValueError, match="positions of 2 loader workers, this stream has 3"):
        other.set_position(positions[1], 2)
