"""Checkpoints (DESIGN.md §5): canonical weights as safetensors, the rest loaded with weights_only=True.

A checkpoint folder is a location (shards.location: a local path or an fsspec URL) and holds:
    model.safetensors   canonical (unsplit, un-DDP'd) state dict
    state.pt            the stateful components' states, collected by name (orchestrator/train_state.py):
                        optimizer (canonical), epoch, step, plateau state, and for a step checkpoint
                        the data position and RNG states (orchestrator/resume.py); torch.load(weights_only=True)
    config.yaml         the resolved RunConfig
    meta.json           epoch, global step and metrics (a step checkpoint: mid_epoch and its layout)
    mean_image.npy      the per-pixel mean image the run subtracts (data.mean_image only)
    COMPLETE            written last; a folder without it is torn and ignored
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from cnnctl.orchestrator.config import RunConfig, to_yaml
from cnnctl.shards import location as loc

MARKER = "COMPLETE"
MEAN_IMAGE = "mean_image.npy"
STAGING_PREFIX = "cnnctl-checkpoint-"
UPLOAD_TRIES = 3  # whole-file attempts per checkpoint file, on top of the filesystem's own retries
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def save(path: str | Path, weights: dict[str, torch.Tensor], cfg: RunConfig, state: dict, meta: dict,
         mean_image: np.ndarray | None = None) -> Path:
    """Write a checkpoint folder; ``weights`` is the canonical state dict."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if mean_image is not None:
        np.save(path / MEAN_IMAGE, mean_image.astype(np.float32), allow_pickle=False)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, path / "model.safetensors")
    torch.save(state, path / "state.pt")
    (path / "config.yaml").write_text(to_yaml(cfg))
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    (path / MARKER).write_text("ok\n")
    return path


def _why(exc: BaseException) -> str:
    """An OS or store error in one line: its words and the file it names."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}{f': {exc.filename}' if exc.filename else ''}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def stage(weights: dict[str, torch.Tensor], cfg: RunConfig, state: dict, meta: dict,
          mean_image: np.ndarray | None = None) -> str:
    """Write a checkpoint into a fresh local staging folder (the upload owns it from here). A write
    that fails (a full disk) removes the folder, publishes nothing, and raises one line."""
    folder = tempfile.mkdtemp(prefix=STAGING_PREFIX)
    try:
        save(folder, weights, cfg, state, meta, mean_image)
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):  # safetensors reports a full disk as its own error
            raise CheckpointError(f"checkpoint not written ({_why(exc)}); its staging folder was removed and nothing "
                                  f"was published: a rerun resumes from the last complete checkpoint") from None
        raise
    return folder


class UploadSlot:
    """At most one checkpoint upload in flight (async uploads): `wait` returns once the checkpoint
    handed over last (`take`) has finished uploading or failed (`free`); the loop calls it before
    staging the next one, so one staged copy at most sits on the local disk. Returns the seconds
    waited."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._busy: str | None = None

    def wait(self) -> float:
        t0 = time.perf_counter()
        with self._cv:
            self._cv.wait_for(lambda: self._busy is None)
        return time.perf_counter() - t0

    def take(self, folder: str) -> None:
        with self._cv:
            self._busy = folder

    def free(self, folder: str) -> None:
        with self._cv:
            if self._busy == folder:
                self._busy = None
                self._cv.notify_all()


FILES = ("model.safetensors", "state.pt", "config.yaml", "meta.json", MARKER)


def is_complete(path: str | Path) -> bool:
    """The marker is written last, but a copy (Ray's upload) may land files in any order: check all
    (one listing, also on an object store)."""
    present = {loc.name(p) for p in loc.listdir(path)}
    return all(f in present for f in FILES)


class BadMeta(CheckpointError, ValueError):
    """A meta.json that is not what save wrote (a ValueError too, as json.loads raised before)."""


def load_meta(path: str | Path) -> dict:
    """meta.json, its fields checked (epoch, step, mid_epoch, layout, metrics): a file that is not
    what save wrote is a BadMeta naming it, one line."""
    file = loc.join(str(path), "meta.json")
    try:
        meta = json.loads(loc.read_text(file))
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8, nesting
        raise BadMeta(f"{file}: not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    problem = _meta_problem(meta)
    if problem:
        raise BadMeta(f"{file}: {problem}")
    return meta


def _meta_problem(meta) -> str | None:
    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta, dict):
        return f"not an object but {type(meta).__name__}"
    if not integer(meta.get("epoch")) or meta["epoch"] < 0:
        return f"epoch {str(meta.get('epoch'))[:40]!r} is not an epoch number"
    if "step" in meta and (not integer(meta["step"]) or meta["step"] < 0):
        return f"step {str(meta['step'])[:40]!r} is not a step number"
    if not isinstance(meta.get("mid_epoch", False), bool):
        return "mid_epoch is not true or false"
    if meta.get("mid_epoch") and not isinstance(meta.get("layout"), dict):
        return "a mid-epoch checkpoint without its layout"
    if not isinstance(meta.get("metrics", {}), dict):
        return "metrics is not an object"
    return None


def _order(path: str) -> tuple[int, int]:
    """Newer sorts higher: (epochs completed, global step). A step checkpoint of epoch e has
    completed e epochs; an end-of-epoch one e + 1."""
    try:
        meta = load_meta(path)
        return meta["epoch"] + (0 if meta.get("mid_epoch") else 1), meta.get("step", -1)
    except (OSError, ValueError, KeyError):  # BadMeta is a ValueError
        return -1, -1


def find(path: str | Path) -> str:
    """A checkpoint folder, or the newest complete checkpoint under a run folder, as a location."""
    path = str(path)
    if loc.exists(loc.join(path, "model.safetensors")):
        if not is_complete(path):
            raise CheckpointError(f"{path}: checkpoint has no {MARKER} marker (it was torn mid-write)")
        return path
    candidates = [p for p in loc.listdir(path) if loc.name(p).startswith("checkpoint_") and is_complete(p)]
    if not candidates:
        raise CheckpointError(f"{path}: no complete checkpoint found (expected model.safetensors or checkpoint_*/)")
    return max(candidates, key=lambda p: (_order(p), loc.name(p)))


def _check_stored(fs, path: str, size: int) -> None:
    """pyarrow's copy to S3 can return without an error when the store refused the upload (the error
    is printed, "ignored when destroying" the output stream): look that the file is there, whole."""
    from pyarrow import fs as pafs

    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File or info.size != size:
        got = "missing" if info.type == pafs.FileType.NotFound else f"{info.size} of {size} bytes"
        raise OSError(5, f"not stored whole after the copy ({got})", path)


def upload_marker_last(source: str, fs, dest: str, tries: int = UPLOAD_TRIES, backoff_s: float = 1.0) -> None:
    """Copy a local checkpoint folder into ``dest`` on the pyarrow filesystem ``fs``, one file after
    another and the COMPLETE marker last: an upload cut short (the process killed, the link lost)
    leaves a folder without it, which `find` and `resume_point` pass over. (pyarrow's copy of a whole
    folder lands files in any order.)

    Each file is tried ``tries`` times (backoff doubling from ``backoff_s``). The local folder is
    removed in every case; when the upload fails, so is what landed of it (best effort: it has no
    marker either way), and one line is raised, worded so that Ray Train does not retry it again
    with the local folder gone."""
    from pyarrow import fs as pafs

    local = pafs.LocalFileSystem()
    name = ""
    try:
        fs.create_dir(dest, recursive=True)
        for name in sorted(os.listdir(source), key=lambda n: n == MARKER):
            for attempt in range(tries):
                try:
                    pafs.copy_files(os.path.join(source, name), f"{dest}/{name}", source_filesystem=local,
                                    destination_filesystem=fs)
                    _check_stored(fs, f"{dest}/{name}", os.path.getsize(os.path.join(source, name)))
                    break
                except OSError as exc:
                    if attempt + 1 == tries:
                        raise
                    log.warning("checkpoint upload %s/%s: %s; retrying", dest, name, _why(exc))
                    time.sleep(backoff_s * 2 ** attempt)
    except OSError as exc:
        log.warning("checkpoint upload to %s failed", dest, exc_info=True)  # the whole cause, in the worker's log
        try:
            fs.delete_dir(dest)
        except OSError:
            pass
        why = _why(exc).replace("AWS Error", "S3 error")  # Ray Train retries on "AWS Error ...": not once more
        raise CheckpointError(f"checkpoint upload to {dest} failed after {tries} tries at {name} ({why}); "
                              f"no {MARKER} marker was written: "
                              f"a rerun resumes from the last complete checkpoint") from None
    finally:
        shutil.rmtree(source, ignore_errors=True)


def load_config(path: str | Path) -> RunConfig:
    return RunConfig.model_validate(yaml.safe_load(loc.read_text(loc.join(path, "config.yaml"))))


def load_mean_image(path: str | Path) -> np.ndarray:
    """The per-pixel mean image a checkpoint of a data.mean_image run carries."""
    file = loc.join(path, MEAN_IMAGE)
    if not loc.exists(file):
        raise FileNotFoundError(f"{file}: missing; its run subtracts a per-pixel mean image (data.mean_image)")
    return np.load(io.BytesIO(loc.read_bytes(file)), allow_pickle=False)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    file = loc.join(path, "model.safetensors")
    return load(loc.read_bytes(file)) if loc.is_url(file) else load_file(file)  # local: memory-mapped


def load_state(path: str | Path) -> dict:
    """Optimizer/epoch/RNG state; a pickle that would run code is refused by weights_only=True."""
    try:
        return torch.load(io.BytesIO(loc.read_bytes(loc.join(path, "state.pt"))), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = re.split(r"\n", str(exc).strip())[0]
        raise CheckpointError(f"{path}/state.pt: refused, it is not a plain tensor/state file ({first})") from None


def resume_point(candidate: str | Path | None, run_dir: str | Path) -> str | None:
    """The checkpoint to resume from: the newer of Ray's newest (``candidate``) and the newest
    complete one in the run folder, which is newer when an async upload had landed but Ray had not
    registered it before the workers were lost, or when a killed driver's run is rerun. A torn one
    (no marker) is passed over; None when there is none."""
    options = [str(candidate)] if candidate is not None and is_complete(candidate) else []
    try:  # the run folder, wherever it is stored
        options.append(find(run_dir))
    except CheckpointError:
        pass
    return max(options, key=_order) if options else None  # a tie: Ray's (a local copy on an object store)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Workers and Tune trials run in their own working folders: local paths become absolute before
    the config travels, and model.init_from becomes the one checkpoint every rank loads (the newest
    complete one of a run folder, found once, so a run still writing checkpoints cannot split them)."""
    cfg.data.root = loc.absolute(cfg.data.root)
    cfg.run.storage = loc.absolute(cfg.run.storage)
    if cfg.model.init_from:
        cfg.model.init_from = loc.absolute(find(cfg.model.init_from))
    return cfg

