"""`verify` re-reads every shard and names each bad one."""

import json
import shutil

import pytest

from cnnctl.shards import manifest as mf
from cnnctl.shards.sources import open_source
from cnnctl.shards.verify import verify
from cnnctl.shards.writer import PackOptions, pack


@pytest.fixture()
def packed(imagenet, tmp_path):
    _, _, [listing] = open_source(str(imagenet / "val"))
    manifest, _ = pack(listing, str(tmp_path), "v", PackOptions(resize=40, shard_size=3))
    return tmp_path, manifest, mf.manifest_url(str(tmp_path), "v", "val")


def test_a_sound_split_has_no_problems(packed):
    _, manifest, url = packed
    got, problems = verify(url, decode=True)
    assert problems == [] and got == manifest and len(manifest["shards"]) == 3


def test_each_damage_is_named_with_its_shard(packed):
    root, manifest, url = packed
    a, b, c = (root / s["name"] for s in manifest["shards"])
    data = bytearray(a.read_bytes())
    data[700] ^= 0xFF  # inside the first image
    a.write_bytes(bytes(data))
    b.write_bytes(b.read_bytes()[:1500])
    c.unlink()
    _, problems = verify(url, decode=True)
    assert problems[0].startswith(f"{a.name}: sha256 ")
    assert any(p.startswith(f"{a.name}: sample ") and "does not decode" in p for p in problems)
    assert f"{b.name}: 1500 bytes, the manifest says {manifest['shards'][1]['bytes']}" in problems
    assert any(p.startswith(f"{b.name}: damaged tar") for p in problems)
    assert f"{c.name}: missing" in problems


def test_repeated_keys_and_labels_out_of_range(packed):
    root, manifest, url = packed
    first, second = manifest["shards"][0], manifest["shards"][1]
    shutil.copy(root / first["name"], root / second["name"])
    manifest["shards"][1] = {**first, "name": second["name"]}
    manifest["classes"] = manifest["classes"][:1]
    (root / "v-val.manifest.json").write_text(json.dumps(manifest))
    _, problems = verify(url)
    assert any(p.startswith(f"{second['name']}: key ") and f"repeats (also in {first['name']})" in p for p in problems)
    assert any(p.startswith(f"{first['name']}: sample ") and "is not a class index 0..0" in p for p in problems)


def test_a_missing_or_damaged_mean_image_is_named(packed):
    root, manifest, url = packed
    assert manifest["stats"]["mean_image"]["file"] == "v-val.mean.npy"
    mean = root / "v-val.mean.npy"
    whole = mean.read_bytes()
    for cut in (0, 100, 1000):  # empty, a torn header, torn data
        mean.write_bytes(whole[:cut])
        [problem] = verify(url)[1]
        assert problem.startswith("v-val.mean.npy: ") and "not a readable .npy" in problem
    mean.unlink()
    assert verify(url)[1] == [f"v-val.mean.npy: {mf.join(str(root), 'v-val.mean.npy')}: the mean image the manifest "
                              f"{url} names is missing"]
