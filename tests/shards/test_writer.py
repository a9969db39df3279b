"""Shard format round trips (DESIGN.md §3) on real images and real tar files."""

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from cnnctl.shards import manifest as mf
from cnnctl.shards.fashion_mnist import fashion_mnist
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.writer import PackOptions, TooManyErrors, pack


def _read_plain(root: str, manifest: dict) -> list[dict]:
    urls = [f"{root}/{s['name']}" for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_fashion_mnist_round_trip_with_plain_webdataset(fmnist_root):
    manifest = mf.load(mf.manifest_url(fmnist_root, "fashion-mnist", "train"))
    samples = _read_plain(fmnist_root, manifest)
    assert len(samples) == manifest["num_samples"] == 600
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    assert all(mf.KEY_RE.match(k) for k in keys)
    # labels match the source records, sample by sample
    truth = {r.key: r.label for r in fashion_mnist("train").records}
    assert all(int(s["cls"]) == truth[s["__key__"]] for s in samples)
    assert np.bincount([int(s["cls"]) for s in samples]).tolist() == [60] * 10
    # shards are shuffled across classes, not class-sorted
    first = [int(s["cls"]) for s in samples[:200]]
    assert len(set(first)) == 10
    meta = json.loads(samples[0]["json"])
    assert meta["orig_size"] == [28, 28] and meta["wnid"] and "#" in meta["source"]
    assert [c["name"] for c in manifest["classes"]][:2] == ["T-shirt/top", "Trouser"]


def test_manifest_records_shards_and_stats(fmnist_root):
    manifest = mf.load(mf.manifest_url(fmnist_root, "fashion-mnist", "train"))
    for s in manifest["shards"]:
        data = Path(fmnist_root, s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    stats = manifest["stats"]
    # Fashion-MNIST: mean ~0.286, std ~0.353 on 0-1 pixels; gray, so R=G=B and one eigenvalue
    assert 0.26 < stats["mean_rgb"][0] < 0.31 and stats["mean_rgb"][0] == stats["mean_rgb"][2]
    assert 0.33 < stats["std_rgb"][0] < 0.38
    assert stats["eigval"][0] == pytest.approx(3 * stats["std_rgb"][0] ** 2, rel=1e-3)
    assert stats["eigval"][1] < 1e-6


def test_plain_tar_lists_members(fmnist_root):
    manifest = mf.load(mf.manifest_url(fmnist_root, "fashion-mnist", "test"))
    names = subprocess.run(["tar", "tf", f"{fmnist_root}/{manifest['shards'][0]['name']}"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert len(names) == 3 * manifest["shards"][0]["count"]
    assert {n.rsplit(".", 1)[1] for n in names} == {"png", "cls", "json"}


def test_rerun_is_byte_identical_and_a_lost_shard_is_rebuilt(image_tree, tmp_path):
    listing = class_folders(image_tree, "train")
    opts = PackOptions(shard_size=16, resize=32)
    first, _ = pack(listing, str(tmp_path / "a"), "t", opts)
    second, _ = pack(listing, str(tmp_path / "b"), "t", opts)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    # remove one shard and the manifest (as if killed mid-run): the rerun reuses the rest
    (tmp_path / "a" / "t-train-000002.tar").unlink()
    (tmp_path / "a" / "t-train.manifest.json").unlink()
    third, reused = pack(listing, str(tmp_path / "a"), "t", opts)
    assert reused == len(first["shards"]) - 1
    assert third == first


def test_jpegs_are_rgb_and_resized(image_tree, tmp_path):
    listing = class_folders(image_tree, "train")
    manifest, _ = pack(listing, str(tmp_path), "t", PackOptions(shard_size=64, resize=40))
    urls = [f"{tmp_path}/{s['name']}" for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == 60
    assert {s["jpg"].shape for s in samples} == {(40, 40, 3)}
    assert manifest["classes"][0]["wnid"] == "n00000000"


def test_bad_file_is_named_and_nothing_is_published(image_tree, tmp_path):
    bad_tree = tmp_path / "tree"
    subprocess.run(["cp", "-r", str(image_tree), str(bad_tree)], check=True)
    victim = sorted((bad_tree / "n00000000").iterdir())[0]
    victim.write_bytes(b"not an image at all")
    listing = class_folders(bad_tree, "train")
    with pytest.raises(TooManyErrors) as exc:
        pack(listing, str(tmp_path / "out"), "t", PackOptions(shard_size=100, resize=32))
    assert [r["source"] for r in exc.value.rejected] == [f"n00000000/{victim.name}"]
    assert not list((tmp_path / "out").glob("*.manifest.json"))
    manifest, _ = pack(listing, str(tmp_path / "ok"), "t", PackOptions(shard_size=100, resize=32, max_errors=1))
    assert manifest["num_samples"] == 59 and manifest["rejected"][0]["source"].endswith(victim.name)


def test_unsafe_urls_and_keys_are_refused(tmp_path):
    with pytest.raises(mf.UnsafeURLError):
        mf.check_url("pipe:curl http://x")
    tree = tmp_path / "t" / "cls"
    tree.mkdir(parents=True)
    (tree / "bad name!.png").write_bytes(b"")
    listing = class_folders(tmp_path / "t", "train")
    assert listing.records == [] and "cannot be a sample key" in listing.rejected[0]["reason"]


def test_shard_bytes_are_what_tarfile_writes(image_tree, tmp_path):
    """The writer builds USTAR headers itself (for speed): they must be tarfile's, byte for byte."""
    import io
    import tarfile

    manifest, _ = pack(class_folders(image_tree, "train"), str(tmp_path), "t", PackOptions(shard_size=64, resize=40))
    data = (tmp_path / manifest["shards"][0]["name"]).read_bytes()
    again = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=again, mode="w",
                                                                     format=tarfile.USTAR_FORMAT) as out:
        members = src.getmembers()
        assert len(members) == 3 * manifest["shards"][0]["count"]
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode, info.uname, info.gname = m.size, 0, 0o644, "", ""
            out.addfile(info, src.extractfile(m))
    assert again.getvalue() == data
