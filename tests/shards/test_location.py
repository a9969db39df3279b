"""cnnctl.shards.location: one string type for local paths and fsspec URLs, joined, printed and read back
without losing a scheme or a `//`, on local disk, memory:// and a real S3 server (moto)."""

import os

import pytest

from cnnctl.shards import location as loc

URLS = ["s3://bucket/runs", "gs://bucket/runs", "memory://bucket/runs"]


@pytest.mark.parametrize("base", URLS)
def test_urls_keep_their_scheme_through_join_name_and_parent(base):
    run = loc.join(base, "vgg-a")
    ckpt = loc.join(run, "checkpoint_000001/")
    assert run == base + "/vgg-a" and ckpt == base + "/vgg-a/checkpoint_000001"
    assert loc.join(base + "/", "/vgg-a/") == run  # stray slashes at the seams collapse, never the scheme's
    assert loc.name(ckpt) == "checkpoint_000001" and loc.parent(ckpt) == run and loc.parent(run) == base
    assert loc.absolute(run) == run and loc.is_url(run)


@pytest.mark.parametrize("base", ["runs", "./runs", "/abs/runs"])
def test_local_paths_stay_plain_paths(base, tmp_path, monkeypatch):
    run = loc.join(base, "vgg-a")
    assert run == os.path.join(base, "vgg-a") and not loc.is_url(run) and "://" not in run
    assert loc.name(run) == "vgg-a" and loc.parent(run) == os.path.normpath(base)
    monkeypatch.chdir(tmp_path)
    assert loc.absolute(run) == os.path.abspath(run)


@pytest.mark.parametrize("store", ["local", "memory", "s3"])
def test_files_round_trip_in_every_store(store, tmp_path, request):
    if store == "s3":
        request.getfixturevalue("s3_server").mkdir("roundtrip")
    base = {"local": str(tmp_path / "x"), "memory": "memory://roundtrip/x", "s3": "s3://roundtrip/x"}[store]
    run = loc.join(base, "run")
    assert loc.listdir(run) == [] and not loc.exists(loc.join(run, "a.txt"))
    assert loc.write_bytes(loc.join(run, "a.txt"), b"alpha") == loc.join(run, "a.txt")
    loc.write_bytes(loc.join(run, "sub", "b.bin"), b"\x00\x01")
    assert loc.read_text(loc.join(run, "a.txt")) == "alpha"
    assert loc.read_bytes(loc.join(run, "sub", "b.bin")) == b"\x00\x01"
    assert loc.listdir(run) == [loc.join(run, "a.txt"), loc.join(run, "sub")]  # entries keep the scheme
    local = tmp_path / "folder"
    (local / "deep").mkdir(parents=True)
    (local / "COMPLETE").write_bytes(b"ok")
    (local / "deep" / "w.bin").write_bytes(b"w")
    copy = loc.put_dir(str(local), loc.join(run, "copy"), last="COMPLETE")
    assert loc.read_bytes(loc.join(copy, "deep", "w.bin")) == b"w" and loc.exists(loc.join(copy, "COMPLETE"))
    assert loc.check_access(run, "run") is None


def test_an_object_store_folder_marker_is_not_listed_as_its_own_entry(s3_server):
    s3_server.mkdir("markers")
    s3_server.pipe_file("markers/run/", b"")  # what some tools write for a "folder"
    s3_server.pipe_file("markers/run/a.txt", b"a")
    assert loc.listdir("s3://markers/run") == ["s3://markers/run/a.txt"]
    assert loc.check_access("s3://markers/run/not/yet/there", "run") is None  # a folder above it exists


def test_put_dir_writes_the_marker_last(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("COMPLETE", "a.bin", "z.bin"):
        (folder / name).write_bytes(name.encode())
    order = []
    monkeypatch.setattr(loc, "write_bytes", lambda dest, data: order.append(loc.name(dest)))
    loc.put_dir(str(folder), "memory://m/ckpt", last="COMPLETE")
    assert order == ["a.bin", "z.bin", "COMPLETE"]


def test_an_unreachable_store_is_one_line_naming_the_url(s3_server, monkeypatch):
    import s3fs

    assert loc.check_access("s3://no-such-bucket/runs", "run.storage") == \
        "run.storage s3://no-such-bucket/runs: bucket 'no-such-bucket' not found"
    line = loc.check_access("gs://bucket/runs", "run.storage")  # gcsfs is not installed here
    assert line.startswith("run.storage gs://bucket/runs: ") and "\n" not in line
    s3_server.mkdir("creds")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        line = loc.check_access("s3://creds/runs", "data.root")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert line.startswith("data.root s3://creds/runs: ") and "credentials" in line.lower() and "\n" not in line


def test_a_file_another_process_wrote_is_seen_after_its_folder_was_listed(s3_server):
    """A run's files are written by Ray workers while the driver (or `cnnctl runs`) reads them. fsspec
    keeps a folder's listing and answers exists() from it, so a listing taken before a worker's write
    hid the file for good: the test driver never saw a run's metrics (a CI failure)."""
    import s3fs

    from cnnctl.orchestrator.metrics import read

    s3_server.mkdir("live")
    loc.write_bytes("s3://live/run/config.yaml", b"x: 1\n")
    assert loc.listdir("s3://live/run") == ["s3://live/run/config.yaml"]
    assert read("s3://live/run") == []
    worker = s3fs.S3FileSystem(skip_instance_cache=True)  # another process's client
    worker.pipe_file("live/run/metrics.jsonl", b'{"epoch": 0}\n')
    assert loc.exists("s3://live/run/metrics.jsonl")
    assert read("s3://live/run") == [{"epoch": 0}]
