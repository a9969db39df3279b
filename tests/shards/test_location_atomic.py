"""location.write_bytes publishes a whole file or nothing: a write cut short by a full disk leaves
the old file as it was and no temporary file, and a reader never sees a file half written.

A real small filesystem (tmpfs) needs root to mount; the tests cut writes short with RLIMIT_FSIZE in
a child process instead (the kernel stops the write part-way, as a full disk does, with EFBIG), or by
patching os.fsync to raise ENOSPC (where a full disk shows with delayed allocation)."""

import errno
import os
import subprocess
import sys
import threading
import time

import pytest

from cnnctl.shards import location as loc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OLD = b"run:\n  name: kept\n  seed: 7\n  storage: s3://bucket/runs\n" * 10

CUT_SHORT = """
import resource, signal, sys
from cnnctl.shards import location as loc
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    loc.write_bytes(sys.argv[1], b"x" * (1 << 20))
except OSError as exc:
    print(exc.errno)
    sys.exit(3)
"""


def test_a_write_the_disk_cuts_short_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_bytes(OLD)
    res = subprocess.run([sys.executable, "-c", CUT_SHORT, str(target)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert res.returncode == 3, res.stderr
    assert int(res.stdout) == errno.EFBIG
    assert target.read_bytes() == OLD  # not truncated, not a prefix of the new bytes
    assert os.listdir(tmp_path) == ["config.yaml"]  # no temporary file left on the full disk


def test_enospc_at_fsync_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    target.write_bytes(OLD)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as exc:
        loc.write_bytes(str(target), b'{"state": "finished"}\n')
    assert exc.value.errno == errno.ENOSPC
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["status.json"]


def test_a_concurrent_reader_never_sees_a_torn_file(tmp_path):
    """One thread rewrites a file with one of two 2 MB contents, another reads it as fast as it can
    for 1.5 s: every read is one content or the other, whole."""
    target = str(tmp_path / "metrics.jsonl")
    a, b = b"a" * (2 << 20), b"b" * (2 << 20)
    loc.write_bytes(target, a)
    stop, seen, torn = threading.Event(), set(), []

    def write():
        i = 0
        while not stop.is_set():
            loc.write_bytes(target, b if i % 2 else a)
            i += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and len(torn) < 3:
        with open(target, "rb") as f:
            data = f.read()
        (seen.add(data[:1]) if data in (a, b) else torn.append(len(data)))
    stop.set()
    writer.join(10)
    assert not torn, f"torn reads of {torn} bytes"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_new_files_keep_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        loc.write_bytes(str(tmp_path / "sub" / "eval.json"), b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "eval.json").stat().st_mode & 0o777 == 0o644


def test_object_store_and_memory_writes_are_whole(tmp_path):
    loc.write_bytes("memory://atomic/x/a.txt", b"one")
    loc.write_bytes("memory://atomic/x/a.txt", b"two")
    assert loc.read_bytes("memory://atomic/x/a.txt") == b"two"
    loc.write_bytes(f"file://{tmp_path}/f.txt", b"via file://")
    assert (tmp_path / "f.txt").read_bytes() == b"via file://" and os.listdir(tmp_path) == ["f.txt"]
