"""s3:// destinations against a real S3 protocol server (moto) on 127.0.0.1."""

import pytest

from cnnctl.shards import manifest as mf
from cnnctl.shards.shard_job import shard_keys
from cnnctl.shards.sources import open_source
from cnnctl.shards.verify import verify
from cnnctl.shards.writer import PackOptions, pack


@pytest.fixture(scope="module")
def s3(s3_server):
    """The session's S3 server (tests/conftest.py), with a bucket; worker processes inherit its env."""
    s3_server.mkdir("shards")
    return s3_server


@pytest.mark.slow  # ~10 s
def test_pack_to_s3_with_workers_resume_and_verify(s3, imagenet, tmp_path):
    _, _, [listing] = open_source(str(imagenet / "val"))
    local, _ = pack(listing, str(tmp_path), "v", PackOptions(resize=40, shard_size=2))
    manifest, reused = pack(listing, "s3://shards/imagenet", "v", PackOptions(resize=40, shard_size=2, workers=2))
    assert reused == 0 and manifest == local  # same bytes wherever they are written
    names = sorted(p.rsplit("/", 1)[1] for p in s3.ls("shards/imagenet"))
    assert names == sorted([s["name"] for s in manifest["shards"]] + ["v-val.manifest.json", "v-val.mean.npy"])
    assert s3.cat_file("shards/imagenet/v-val.mean.npy") == (tmp_path / "v-val.mean.npy").read_bytes()
    url = mf.manifest_url("s3://shards/imagenet", "v", "val")
    assert verify(url, decode=True)[1] == []
    # a lost shard and manifest (a killed run) are rebuilt; the rest is reused
    s3.rm(f"shards/imagenet/{manifest['shards'][1]['name']}")
    s3.rm("shards/imagenet/v-val.manifest.json")
    again, reused = pack(listing, "s3://shards/imagenet", "v", PackOptions(resize=40, shard_size=2, workers=2))
    assert again == manifest and reused == len(manifest["shards"]) - 1
    keys = [k for u in mf.shard_urls(url, again) for k in shard_keys(s3.cat_file(u))]
    assert sorted(keys) == sorted(r.key for r in listing.records)
