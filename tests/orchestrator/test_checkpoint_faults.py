"""Faults while a checkpoint is written or uploaded: a full disk (ENOSPC) or an upload that fails
leaves no staging folder behind, publishes nothing that looks complete, fails in one line, and the
run resumes from its last complete checkpoint; async uploads are one at a time, so staged
checkpoints cannot pile up on the disk.

A real small filesystem (tmpfs) needs root to mount, so a full disk is simulated by patching the
write that fills it to raise OSError(ENOSPC)."""

import errno
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from pyarrow import fs as pafs

from cnnctl import models
from cnnctl.orchestrator import checkpoint as ckpt
from cnnctl.orchestrator import trainer
from cnnctl.orchestrator.config import RunConfig

STAGED = "cnnctl-checkpoint-"


@pytest.fixture
def tmpdir_only(tmp_path, monkeypatch):
    """mkdtemp's folder is a fresh one, so the test sees every staging folder left behind."""
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    return staging


def _staged(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(STAGED)]


def _model():
    return models.build("alexnet-small", num_classes=10, width=0.25)


def _fake_trainer(model, monkeypatch):
    """What Trainer._checkpoint uses of a Trainer, without data or a process group."""
    monkeypatch.setattr(trainer, "canonical_state_dict", lambda m: m.state_dict())
    return SimpleNamespace(model=model, cfg=RunConfig(), is_logger=True, mean_image=None, last_checkpoint=0.0)


def _full_disk(name):
    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", name)
    return write


def _complete(folder, epoch):
    model = _model()
    ckpt.save(folder, model.state_dict(), RunConfig(), {"optimizer": {}, "epoch": epoch, "step": epoch},
              {"epoch": epoch, "step": epoch})


def test_enospc_while_staging_removes_the_folder_and_fails_in_one_line(tmpdir_only, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _complete(run / "checkpoint_000000", epoch=0)
    me = _fake_trainer(_model(), monkeypatch)
    monkeypatch.setattr(ckpt.torch, "save", _full_disk("state.pt"))  # the disk fills after the weights
    reported = []
    for _ in range(3):  # each retry used to leave another copy on the full disk
        with pytest.raises(ckpt.CheckpointError) as exc:
            trainer.Trainer._checkpoint(me, {"epoch": 1}, {"epoch": 1}, {"epoch": 1}, lambda m, f: reported.append(f))
        assert len(str(exc.value).splitlines()) == 1 and "No space left on device" in str(exc.value)
        assert "state.pt" in str(exc.value)
    assert _staged(tmpdir_only) == [] and reported == []  # nothing staged, nothing handed to the upload
    assert ckpt.resume_point(None, run) == str(run / "checkpoint_000000")


@pytest.mark.parametrize("fails_at", ["model.safetensors", "state.pt", ckpt.MARKER])
def test_a_failed_upload_leaves_no_marker_and_no_staging_folder(tmpdir_only, tmp_path, monkeypatch, fails_at):
    run = tmp_path / "store" / "run"
    _complete(run / "checkpoint_000000", epoch=0)
    source = tempfile.mkdtemp(prefix=STAGED)
    _complete(source, epoch=1)
    copy = pafs.copy_files

    def flaky(src, dst, **kw):
        if os.path.basename(src) == fails_at:
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        return copy(src, dst, **kw)

    monkeypatch.setattr(pafs, "copy_files", flaky)
    dest = str(run / "checkpoint_000001")
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.upload_marker_last(source, pafs.LocalFileSystem(), dest, tries=2, backoff_s=0)
    assert len(str(exc.value).splitlines()) == 1 and "2 tries" in str(exc.value)
    assert "AWS Error" not in str(exc.value)  # Ray Train retries on those words: we did already
    assert not os.path.exists(os.path.join(dest, ckpt.MARKER)) and not ckpt.is_complete(dest)
    assert _staged(tmpdir_only) == []
    assert ckpt.resume_point(None, run) == str(run / "checkpoint_000000")


def test_an_upload_that_fails_once_is_retried_and_completes(tmpdir_only, tmp_path, monkeypatch):
    source = tempfile.mkdtemp(prefix=STAGED)
    _complete(source, epoch=1)
    copy, failures = pafs.copy_files, []

    def once(src, dst, **kw):
        if os.path.basename(src) == "state.pt" and not failures:
            failures.append(dst)
            raise OSError(errno.EIO, "connection reset")
        return copy(src, dst, **kw)

    monkeypatch.setattr(pafs, "copy_files", once)
    dest = str(tmp_path / "run" / "checkpoint_000001")
    ckpt.upload_marker_last(source, pafs.LocalFileSystem(), dest, tries=3, backoff_s=0)
    assert failures and ckpt.is_complete(dest) and _staged(tmpdir_only) == []
    assert ckpt.find(tmp_path / "run") == dest


def test_async_uploads_are_one_at_a_time(tmpdir_only, tmp_path, monkeypatch):
    """Checkpoints written faster than they upload: Ray Train's upload pool has one thread and an
    unbounded queue, so each waiting checkpoint used to hold its staged copy (~0.5 GB for the paper
    AlexNet) on the disk. With the upload slot a new checkpoint waits for the previous upload: at
    most one staged folder exists at any time."""
    me = _fake_trainer(_model(), monkeypatch)
    pool = ThreadPoolExecutor(max_workers=1)  # as Ray Train's checkpoint_upload_threadpool
    slot = ckpt.UploadSlot()
    most, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], len(_staged(tmpdir_only)))
            time.sleep(0.005)

    def slow_upload(folder, dest):
        try:
            time.sleep(0.2)
            ckpt.upload_marker_last(folder, pafs.LocalFileSystem(), dest)
        finally:
            slot.free(folder)

    def report(metrics, folder):  # as train.ray_report's async report
        slot.take(folder)
        pool.submit(slow_upload, folder, str(tmp_path / "run" / f"checkpoint_{metrics['step']:06d}"))

    report.slot = slot
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    for step in range(5):
        trainer.Trainer._checkpoint(me, {"step": step}, {"epoch": 0}, {"epoch": 0, "step": step}, report)
    pool.shutdown(wait=True)
    stop.set()
    watcher.join()
    assert most[0] == 1, f"{most[0]} staged checkpoints on disk at once"
    assert _staged(tmpdir_only) == []
    assert len([p for p in os.listdir(tmp_path / "run") if ckpt.is_complete(tmp_path / "run" / p)]) == 5
    assert time.perf_counter() - t0 >= 0.8  # the loop waited for four of the five uploads


def test_a_full_disk_while_rewriting_metrics_keeps_the_old_rows_and_no_temp(tmp_path, monkeypatch):
    from cnnctl.orchestrator.metrics import MetricsLog, read

    log = MetricsLog(str(tmp_path / "run"))
    log.write({"epoch": 0, "train_loss": 1.0})
    monkeypatch.setattr(os, "fsync", _full_disk("metrics.jsonl"))
    with pytest.raises(OSError):
        log.write({"epoch": 1, "train_loss": 0.5})
    assert [r["epoch"] for r in read(str(tmp_path / "run"))] == [0]
    assert sorted(os.listdir(tmp_path / "run")) == ["metrics.jsonl", "tensorboard"]


def test_upload_cut_short_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    """checkpoint.upload_marker_last to a real local filesystem through pyarrow, with the copy
    failing after the first file (an injected OSError: a killed upload thread cannot be timed here
    otherwise): the folder it leaves is not complete, and find passes over it."""
    run = tmp_path / "run"
    for i, step in enumerate((10, 20)):
        folder = tmp_path / f"local{i}"
        ckpt.save(folder, {"w": torch.full((4,), float(step))}, RunConfig(), {"epoch": 0, "step": step},
                  {"epoch": 0, "step": step, "mid_epoch": True})
        if i == 1:
            calls = []
            real = pafs.copy_files

            def failing(*a, **k):
                calls.append(a[0])
                if len(calls) > 1:
                    raise OSError("connection reset")
                return real(*a, **k)

            monkeypatch.setattr(pafs, "copy_files", failing)
        try:
            ckpt.upload_marker_last(str(folder), pafs.LocalFileSystem(), str(run / f"checkpoint_{i}"), backoff_s=0)
        except ckpt.CheckpointError as exc:  # after its retries, one line; what landed is removed
            assert i == 1 and "no COMPLETE marker was written" in str(exc) and len(calls) == 1 + ckpt.UPLOAD_TRIES
    assert ckpt.is_complete(str(run / "checkpoint_0")) and not ckpt.is_complete(str(run / "checkpoint_1"))
    assert not (run / "checkpoint_1" / ckpt.MARKER).exists()
    assert ckpt.find(str(run)).endswith("checkpoint_0")
    shutil.rmtree(run / "checkpoint_0")
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.find(str(run))
