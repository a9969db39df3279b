"""The rank-aware loader: equal steps per rank, exact evaluation partitions, no hangs."""

import random

import numpy as np
import pytest
import torch

from cnnctl.shards import manifest as mf
from cnnctl.shards.fashion_mnist import fashion_mnist
from cnnctl.shards.reader import BadSample, ShardStream, Split, loader
from cnnctl.shards.stages import SkipBad
from cnnctl.shards.transforms import CenterCrop, CropFlip
from cnnctl.shards.writer import PackOptions, pack


@pytest.fixture(scope="module")
def seven_shards(tmp_path_factory):
    """700 real Fashion-MNIST images in 7 shards, and the same in 1 shard."""
    root = tmp_path_factory.mktemp("seven")
    listing = fashion_mnist("test")
    listing.records = listing.records[:700]
    pack(listing, str(root), "seven", PackOptions(image_format="png", resize=None, shard_size=100))
    pack(listing, str(root), "one", PackOptions(image_format="png", resize=None, shard_size=700))
    return root


def _run(url, dp_size, workers=0, train=True, batch=32, epoch=0):
    out = []
    for rank in range(dp_size):
        stream = ShardStream(url, Split(rank, dp_size), batch, CenterCrop(28), train=train, seed=1)
        stream.set_epoch(epoch)
        out.append(list(loader(stream, workers=workers)))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix, dp_size, workers", [("seven", 2, 0), ("seven", 2, 2), ("one", 4, 0), ("one", 4, 2)])
def test_every_rank_takes_the_same_number_of_steps(seven_shards, prefix, dp_size, workers):
    url = mf.manifest_url(str(seven_shards), prefix, "test")
    per_rank = _run(url, dp_size, workers)
    expected = 700 // dp_size // 32
    assert [len(b) for b in per_rank] == [expected] * dp_size
    for batches in per_rank:
        assert all(x.shape == (32, 3, 28, 28) and x.dtype.is_floating_point is False for x, _ in batches)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix, dp_size, workers", [("seven", 2, 0), ("seven", 3, 2), ("one", 4, 0)])
def test_evaluation_covers_the_split_exactly_once(seven_shards, prefix, dp_size, workers):
    url = mf.manifest_url(str(seven_shards), prefix, "test")
    per_rank = _run(url, dp_size, workers, train=False)
    labels = np.concatenate([y.numpy() for batches in per_rank for _, y in batches])
    assert len(labels) == 700
    truth = np.array([r.label for r in fashion_mnist("test").records[:700]])
    assert np.array_equal(np.sort(labels), np.sort(truth))


def test_training_shards_do_not_overlap_within_a_pass(seven_shards):
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    a, b = _run(url, 2, batch=50)
    ia = {bytes(x.numpy().tobytes()) for xs, _ in a for x in xs}
    ib = {bytes(x.numpy().tobytes()) for xs, _ in b for x in xs}
    assert len(ia & ib) == 0


def test_same_seed_same_batches_and_epochs_differ(seven_shards):
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    first, again, other = _run(url, 1), _run(url, 1), _run(url, 1, epoch=1)
    assert all((x1 == x2).all() for (x1, _), (x2, _) in zip(first[0], again[0]))
    assert not all((x1 == x2).all() for (x1, _), (x2, _) in zip(first[0], other[0]))


def test_tower_pair_ranks_get_identical_batches(seven_shards):
    # Both ranks of a tower pair share a dp rank, so they build the same reader.
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    s0 = list(loader(ShardStream(url, Split(1, 2), 32, CropFlip(28, 2), seed=3)))
    s1 = list(loader(ShardStream(url, Split(1, 2), 32, CropFlip(28, 2), seed=3)))
    assert all((x0 == x1).all() and (y0 == y1).all() for (x0, y0), (x1, y1) in zip(s0, s1))


def test_truncated_shard_names_the_url(seven_shards, tmp_path):
    import shutil

    for p in seven_shards.iterdir():
        if p.name.startswith("seven"):
            shutil.copy(p, tmp_path / p.name)
    victim = tmp_path / "seven-test-000003.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 + 100])
    url = mf.manifest_url(str(tmp_path), "seven", "test")
    with pytest.raises(Exception, match="seven-test-000003.tar"):
        list(loader(ShardStream(url, Split(0, 1), 32, CenterCrop(28), train=False)))


def test_crop_flip_is_a_crop_of_the_padded_image():
    img = np.arange(28 * 28 * 3, dtype=np.uint8).reshape(28, 28, 3)
    out = CropFlip(28, 2)(img, random.Random(0))
    assert out.shape == (28, 28, 3)
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    found = any((padded[top:top + 28, left:left + 28] == out).all()
                or (padded[top:top + 28, left:left + 28][:, ::-1] == out).all()
                for top in range(5) for left in range(5))
    assert found


def test_batches_are_channels_last_views_of_the_samples(seven_shards):
    import tarfile

    from PIL import Image

    url = mf.manifest_url(str(seven_shards), "seven", "test")
    images, labels = next(iter(loader(ShardStream(url, Split(), 8, CenterCrop(28), train=False))))
    assert images.shape == (8, 3, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)  # the model's layout: no transpose per sample
    with tarfile.open(seven_shards / "seven-test-000000.tar") as t:  # evaluation reads shard 0 first, in order
        first = next(m for m in t.getmembers() if m.name.endswith(".png"))
        pixels = np.asarray(Image.open(t.extractfile(first)))
    assert all((images[0, c].numpy() == pixels).all() for c in range(3))


def _damage(src_root, dst_root, prefix, corrupt=(), truncate=None):
    """Copy a split; replace the image of the ``corrupt`` (shard, member index) samples by junk and cut
    shard ``truncate`` in half. Counts stay as the manifest says, so only the samples are bad."""
    import io
    import shutil
    import tarfile

    for p in src_root.iterdir():
        if p.name.startswith(prefix + "-"):
            shutil.copy(p, dst_root / p.name)
    bad_keys = []
    for shard in sorted({s for s, _ in corrupt}):
        path = dst_root / f"{prefix}-test-{shard:06d}.tar"
        with tarfile.open(path) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        pngs = [i for i, (m, _) in enumerate(members) if m.name.endswith(".png")]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for i, (m, data) in enumerate(members):
                if i in {pngs[k] for s, k in corrupt if s == shard}:
                    data = b"\x89PNG not really" + bytes(50)
                    bad_keys.append(m.name.rsplit(".", 1)[0])
                m.size = len(data)
                t.addfile(m, io.BytesIO(data))
        path.write_bytes(out.getvalue())
    if truncate is not None:
        victim = dst_root / f"{prefix}-test-{truncate:06d}.tar"
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2 + 100])
    return mf.manifest_url(str(dst_root), prefix, "test"), bad_keys


def test_bad_sample_error_names_url_and_key(seven_shards, tmp_path):
    url, keys = _damage(seven_shards, tmp_path, "seven", corrupt=[(2, 5)])
    with pytest.raises(BadSample, match=rf"seven-test-000002.tar: sample '{keys[0]}'"):
        list(loader(ShardStream(url, Split(0, 1), 32, CenterCrop(28), train=False)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counts_bad_samples_and_evaluation_reads_the_rest(seven_shards, tmp_path, workers):
    url, keys = _damage(seven_shards, tmp_path, "seven", corrupt=[(1, 0), (1, 7), (4, 3)])
    streams = [ShardStream(url, Split(r, 2), 32, CenterCrop(28), train=False, on_bad=SkipBad()) for r in range(2)]
    labels = [y for s in streams for _, y in loader(s, workers=workers)]
    assert sum(len(y) for y in labels) == 700 - 3
    assert sum(s.bad_samples for s in streams) == 3  # the workers' counts reach this process


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix, dp_size, workers", [("seven", 2, 0), ("seven", 2, 2), ("one", 4, 2)])
def test_skip_keeps_steps_equal(seven_shards, tmp_path, prefix, dp_size, workers):
    truncate = 3 if prefix == "seven" else 0
    url, _ = _damage(seven_shards, tmp_path, prefix, corrupt=[(truncate, 1), (0, 2)], truncate=truncate)
    streams = [ShardStream(url, Split(r, dp_size), 32, CropFlip(28, 2), seed=1, on_bad=SkipBad())
               for r in range(dp_size)]
    steps = [len(list(loader(s, workers=workers))) for s in streams]
    assert steps == [700 // dp_size // 32] * dp_size
    assert sum(s.bad_samples for s in streams) > 0


def test_refuses_pipe_urls():
    with pytest.raises(mf.UnsafeURLError):
        ShardStream("pipe:cat x", Split(), 8, CenterCrop(28))


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_tar_walk_reads_what_tarfile_writes(tmp_path, fmt):
    import io
    import tarfile

    from cnnctl.shards.shard_tar import tar_samples

    fmt_const = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[fmt]
    deep = "d" * 60 + "/" + "e" * 60 if fmt == "ustar" else "x" * 150  # ustar: prefix field; gnu/pax: long names
    names = [("a1", b"1"), ("a1", b"png-bytes"), (f"{deep}/k2", b"2"), (f"{deep}/k2", b"img")]
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt_const) as t:
        for (key, data), ext in zip(names, ["cls", "png", "cls", "png"]):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    samples = list(tar_samples(str(path)))
    assert [(s["__key__"], s["cls"], s["png"]) for s in samples] == [("a1", b"1", b"png-bytes"),
                                                                     (f"{deep}/k2", b"2", b"img")]


@pytest.mark.slow  # ~8 s
def test_recycled_buffers_give_a_training_loop_the_same_batches(seven_shards):
    # A consumer that lets go of each batch within its step, as the train and eval loops do.
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    digests, pids = [], []
    for recycle in (False, True):
        stream = ShardStream(url, Split(0, 1), 16, CropFlip(28, 2), seed=5)
        for epoch in range(3):  # recycled: the same workers go on, round their rings, into the next epochs
            stream.set_epoch(epoch)
            data = loader(stream, workers=2, recycle=recycle)
            digests.append([hash(x.contiguous().numpy().tobytes()) for x, _ in data])
            if recycle:
                pids.append(sorted(w.pid for w in data._iterator._workers))
        assert (stream.rings is not None) == recycle
    assert pids[0] == pids[1] == pids[2]  # persistent: set_epoch reached them through shared memory
    assert digests[:3] == digests[3:] and len(digests[0]) == 700 // 16 and len({str(d) for d in digests[:3]}) == 3
    workers = [w for w in data._iterator._workers]
    del data
    stream.close()  # ends the persistent workers now, not whenever the cycle collector runs
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)


def test_tar_walk_stops_at_a_damaged_header_after_the_members_before_it():
    import io
    import tarfile

    from cnnctl.shards.shard_tar import members as _tar_members

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(4):
            info = tarfile.TarInfo(f"k{i}.cls")
            info.size = 1
            t.addfile(info, io.BytesIO(b"%d" % i))
    blob = bytearray(out.getvalue())
    assert [name for name, _ in _tar_members(bytes(blob))] == ["k0.cls", "k1.cls", "k2.cls", "k3.cls"]
    blob[2 * 1024 + 3] ^= 1  # the third member's name: only its checksum tells
    walked = []
    with pytest.raises(BadSample, match="checksum"):
        for name, data in _tar_members(bytes(blob)):
            walked.append((name, data))
    assert walked == [("k0.cls", b"0"), ("k1.cls", b"1")]


@pytest.mark.parametrize("prefix, workers", [("seven", 0), ("one", 2)])
def test_an_epoch_that_fits_the_shuffle_buffer_is_one_permutation_of_the_part(seven_shards, prefix, workers):
    # 700 samples, 14 steps of 50 (7 per worker, each worker's part 350 samples of the one shard):
    # the epoch reads each sample once, and no later pass leaks into it.
    url = mf.manifest_url(str(seven_shards), prefix, "test")
    stream = ShardStream(url, Split(0, 1), 50, CenterCrop(28), seed=2)
    epoch = sorted(x.numpy().tobytes() for xs, _ in loader(stream, workers=workers) for x in xs)
    every = sorted(x.numpy().tobytes() for xs, _ in loader(ShardStream(url, Split(0, 1), 50, CenterCrop(28),
                                                                       train=False)) for x in xs)
    assert epoch == every


def test_recycled_buffers_keep_the_last_batch_of_an_epoch_while_the_next_epoch_starts(seven_shards):
    # 700 samples in batches of 16: 43 steps, the last one worker 0's 22nd batch. The consumer may still
    # hold it when the next epoch's first batches come (the current batch and the two before it), and
    # the next epoch's workers must not write into its buffer.
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    stream = ShardStream(url, Split(0, 1), 16, CropFlip(28, 2), seed=5)
    data = loader(stream, workers=2, recycle=True)
    for images, _ in data:
        last = images
    kept = last.clone()
    stream.set_epoch(1)
    taken = []
    for images, _ in data:
        taken.append(images)
        if len(taken) == 2:
            break
    assert torch.equal(last, kept)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_whole_images_of_several_sizes_batch_by_size_and_cover_the_split_once(tmp_path, workers):
    from PIL import Image
    from cnnctl.shards.layouts import class_folders
    from cnnctl.shards.transforms import Full

    sizes = [(30, 20), (20, 30), (24, 24), (26, 22), (22, 26), (28, 21)]  # more than OPEN_SIZES
    for i in range(45):  # the blue channel says which image it is
        folder = tmp_path / "src" / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % 6] if i % 5 else sizes[(i + 1) % 6]
        Image.fromarray(np.full((h, w, 3), i, np.uint8)).save(folder / f"im{i}.png")
    pack(class_folders(tmp_path / "src", "train"), str(tmp_path / "out"), "v",
         PackOptions(image_format="png", resize=None, shard_size=10))
    url = mf.manifest_url(str(tmp_path / "out"), "v", "train")
    seen = []
    for rank in range(2):
        for images, labels in loader(ShardStream(url, Split(rank, 2), 4, Full(), train=False), workers=workers):
            assert 1 <= len(images) <= 4 and images.shape[1] == 3
            seen += [int(x[2, 0, 0]) for x in images]
    assert sorted(seen) == list(range(45))


@pytest.mark.slow  # ~10 s: 14 loader workers
def test_fourteen_workers_recycle_rings_and_give_the_same_batches_to_a_consumer_holding_three(seven_shards):
    """With many workers each keeps 2 batches in flight (ring of 5): a consumer that still holds the
    batch before last and the one before that sees them unchanged, as without rings."""
    url = mf.manifest_url(str(seven_shards), "seven", "test")
    held = {}
    for recycle in (False, True):
        stream = ShardStream(url, Split(0, 1), 8, CropFlip(28, 2), seed=5)
        batches, last = [], []
        for images, _ in loader(stream, workers=14, recycle=recycle):
            last = [*last[-2:], images]  # the current batch and the two before it, as the train loop may
            batches.append(images.contiguous().numpy().tobytes() if not recycle else None)
            if recycle:
                batches[-1] = [b.contiguous().numpy().tobytes() for b in last]
        held[recycle] = batches
        assert (stream.rings is not None) == recycle and (not recycle or len(stream.rings[0].buffers) == 5)
        stream.close()
    plain = held[False]
    assert len(plain) == 700 // 8
    for i, window in enumerate(held[True]):  # each step, the three held batches are still those batches
        assert window == plain[max(i - 2, 0): i + 1]


def test_rings_follow_the_shared_memory_the_machine_has(seven_shards, monkeypatch, tmp_path, caplog):
    """A container's 64 MB /dev/shm (Docker's default) cannot hold them: rings off, said once."""
    from cnnctl.shards import batching

    url = mf.manifest_url(str(seven_shards), "seven", "test")
    limit = tmp_path / "memory.max"
    limit.write_text(str(64 << 20))
    monkeypatch.setattr(batching, "CGROUP_LIMITS", (str(tmp_path / "absent"), str(limit)))
    assert batching.shared_memory_bytes() == 64 << 20  # the cgroup's limit, smaller than /dev/shm here
    stream = ShardStream(url, Split(0, 1), 256, CropFlip(28, 2), seed=5)  # 2 x 7 x 256 x 28 x 28 x 3 = 8.4 MB
    with caplog.at_level("WARNING", logger="cnnctl.shards.reader"):
        data = loader(stream, workers=2, recycle=True)
    assert stream.rings is None
    assert [r.getMessage() for r in caplog.records] == [
        "batch rings off: 2 workers x 7 batches of 256 need 0.01 GB of shared memory, over this stream's share "
        "(1/16 of 0.1 GB)"]
    assert sum(len(x) for x, _ in data) == 700 // 256 * 256
    stream.close()
    limit.write_text("max")  # cgroup v2's "no limit": /dev/shm's size rules
    assert batching.shared_memory_bytes() > 64 << 20
    stream = ShardStream(url, Split(0, 1), 256, CropFlip(28, 2), seed=5)
    loader(stream, workers=2, recycle=True)
    assert stream.rings is not None
    stream.close()
