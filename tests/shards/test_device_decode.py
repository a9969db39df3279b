"""data.decoder=device on the CPU: the loader's workers batch JPEG bytes and windows, the consumer's
process decodes them (shards/device_decode.py), and the batches are the worker-side decoders' own:
the same keys, windows and labels, the same pixels, a mid-epoch resume included; a damaged JPEG is
named (error) or made up within its batch (skip) with the step count kept."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnctl.shards import codec, decoders
from cnnctl.shards import manifest as mf
from cnnctl.shards.device_decode import DeviceDecode
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.pillow_resize import resize_box
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.shard_tar import BadSample
from cnnctl.shards.stages import SkipBad, raise_bad
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, CropFlip, ScaleJitter
from cnnctl.shards.writer import PackOptions, pack
from conftest import photo

CASES = {  # name -> (transform, frame, loader workers)
    "alexnet-frame-2-workers": (AlexNetCrop(40), 48, 2),
    "center-in-process": (CenterCrop(40), None, 0),
    "vgg-jitter-2-workers": (ScaleJitter(32, 40, 64), None, 2),
}


def make_split(root: Path, name: str, count: int, fmt: str = "jpg", square: bool = True) -> str:
    rng = np.random.default_rng(9)
    tree = root / f"{name}-tree"
    for i in range(count):
        folder = tree / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (60, 52) if square else (int(v) for v in rng.integers(50, 90, 2))
        Image.fromarray(photo(rng, w, h)).save(folder / f"img{i:03d}.JPEG", quality=90)
    pack(class_folders(tree, "train"), str(root), name,
         PackOptions(image_format=fmt, resize=48 if square else None, center_crop=square, shard_size=10))
    return mf.manifest_url(str(root), name, "train")


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("device-decode")
    return {"square": make_split(root, "square", 37), "varied": make_split(root, "varied", 29, square=False)}


def stream(url: str, transform, frame=None, device: bool = False, rank: int = 0, **kw) -> ShardStream:
    s = ShardStream(url, Split(rank, 2), 4, transform, train=True, seed=5, shuffle_buffer=6, frame=frame, **kw)
    if device:
        s.decode_on_device("cpu")
    return s


def epoch(s: ShardStream, n: int, workers: int, resume_at: int = 0, positions=None):
    """(batches as the consumer takes them, positions after each)."""
    data = loader(s, workers=workers)
    s.set_epoch(n)
    s.set_position(positions, resume_at)
    out, after = [], []
    for step, batch in enumerate(s.counted(iter(data)), start=resume_at):
        out.append(tuple(t.clone() for t in batch))
        after.append(s.position(step + 1))
    return out, after


def same(a, b) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(u.shape == v.shape and bool((u == v).all())
                                                             for u, v in zip(x, y)) for x, y in zip(a, b))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("windowed", [True, False], ids=["windowed", "whole"])
@pytest.mark.parametrize("case", CASES)
def test_device_decode_gives_the_worker_side_batches(splits, case, windowed):
    """Keys (the reader's positions hold their digest), windows, labels and pixels, two epochs, two ranks."""
    transform, frame, workers = CASES[case]
    url = splits["varied" if isinstance(transform, ScaleJitter) else "square"]
    for rank in range(2):
        for n in range(2):
            reference = stream(url, transform, frame, rank=rank, windowed=windowed)
            worker_side, at_w = epoch(reference, n, workers)
            device, at_d = epoch(stream(url, transform, frame, device=True, rank=rank), n, workers)
            assert len(worker_side) == reference.steps > 1 and same(device, worker_side), f"rank {rank} epoch {n}"
            assert at_d == at_w  # every batch's keys: the positions carry their count and digest
            assert device[0][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.timeout(120)
def test_a_resumed_epoch_with_device_decode_hands_on_the_uninterrupted_batches(splits):
    transform = AlexNetCrop(40)
    reference, positions = epoch(stream(splits["square"], transform, device=True), 1, 2)
    for cut in range(1, len(reference)):
        resumed, _ = epoch(stream(splits["square"], transform, device=True), 1, 2, cut, positions[cut - 1])
        assert same(resumed, reference[cut:]), f"resumed after step {cut}"


def damage(url: str, member: str) -> None:
    """Rewrite the shard at ``url`` with ``member``'s JPEG cut short in its scan: the worker reads
    its header (its size, its window), the decode fails."""
    path = Path(url)
    with tarfile.open(path) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, data in items:
            if info.name == member:
                sos = data.index(b"\xff\xda")  # the scan: what comes before it is the header
                data = data[: sos + (len(data) - sos) // 3]
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def damaged(tmp_path) -> tuple[str, str, str]:
    url = make_split(tmp_path, "bad", 37)
    shard = mf.shard_urls(url, mf.load(url))[0]
    with tarfile.open(shard) as tar:
        member = next(m.name for m in tar.getmembers() if m.name.endswith(".jpg"))
    damage(shard, member)
    return url, shard, member.rsplit(".", 1)[0]


@pytest.mark.timeout(120)
def test_a_damaged_jpeg_is_named_under_error_and_made_up_under_skip(damaged):
    url, shard, key = damaged
    with pytest.raises(BadSample) as exc:
        for rank in range(2):
            epoch(stream(url, AlexNetCrop(40), device=True, rank=rank), 0, 0)
    assert shard in str(exc.value) and repr(key) in str(exc.value)
    skipped = 0
    for rank in range(2):
        worker_side = epoch(stream(url, AlexNetCrop(40), rank=rank, on_bad=SkipBad()), 0, 0)[0]
        skip = SkipBad()
        device = epoch(stream(url, AlexNetCrop(40), device=True, rank=rank, on_bad=skip), 0, 0)[0]
        assert len(device) == len(worker_side) == 4  # the step count of every rank is kept
        assert all(b[0].shape == (4, 3, 40, 40) and b[1].shape == (4,) for b in device)
        # the damaged sample's slot holds a copy of another sample of its batch, with its label
        copies = [(b[1][i] == b[1][j]).item() for b in device for i in range(4) for j in range(i)
                  if torch.equal(b[0][i], b[0][j])]
        assert all(copies) and len(copies) >= skip.count
        skipped += skip.count
    assert skipped >= 1  # heard of, on the rank that read it


def test_refused_in_one_line_for_png_shards_and_padded_crops(tmp_path):
    png = mf.load(make_split(tmp_path, "png", 6, fmt="png"))
    line = decoders.device_problem(AlexNetCrop(40), png)
    assert "data.decoder=device" in line and "PNG" in line and "\n" not in line
    jpg = {"options": {"image_format": "jpg"}}
    assert "data.decoder=device" in decoders.device_problem(CropFlip(32, 4), jpg)
    assert decoders.device_problem(CropFlip(32), jpg) is None and decoders.device_problem(ScaleJitter(), jpg) is None


def test_cuda_without_nvimagecodec_is_one_line_naming_data_decoder(monkeypatch):
    from cnnctl.shards import nvimgcodec_decode

    monkeypatch.setattr(nvimgcodec_decode, "nvimgcodec", None)  # as where the `gpu` extra is not installed
    with pytest.raises(RuntimeError, match=r"data\.decoder=device on CUDA needs NVIDIA nvImageCodec"):
        DeviceDecode(AlexNetCrop(40), raise_bad, "cuda")


def test_the_device_resize_is_pillows_to_the_bit():
    """VGG's crop resized on the device (resize_box, any torch device) as Pillow resizes it on the CPU."""
    rs, transform = np.random.RandomState(0), ScaleJitter(32, 40, 64)
    for t in range(20):
        h, w = (int(v) for v in rs.randint(40, 120, 2))
        pixels = rs.randint(0, 256, (h, w, 3)).astype(np.uint8)
        s, box = transform.plan(w, h, random.Random(t))
        x0, y0, x1, y1 = transform.support(box, w, h)
        got = resize_box(torch.from_numpy(np.ascontiguousarray(pixels[y0:y1, x0:x1])),
                         (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), 32).numpy()
        ref = np.asarray(Image.fromarray(pixels[y0:y1, x0:x1]).resize(
            (32, 32), codec.RESAMPLE, box=(box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)))
        assert np.array_equal(got, ref), t


# S from 48: no image of the split is shrunk 2x or more, which the CPU decodes DCT-scaled and nvImageCodec whole
@pytest.mark.nvimgcodec
@pytest.mark.parametrize("transform", [AlexNetCrop(40), ScaleJitter(32, 48, 64)], ids=["alexnet", "vgg"])
def test_the_nvimagecodec_backend_decodes_the_cpu_backends_pixels(splits, transform):
    """The CUDA backend's code on nvImageCodec's CPU-only backend (libjpeg-turbo, fancy upsampling):
    its ROI decode, flips and VGG's resize give the CPU backend's pixels. Runs where the `gpu` extra
    is installed; on a GPU the IDCT differs (docs/DESIGN.md states the tolerance)."""
    from cnnctl.shards.nvimgcodec_decode import NvImageCodec

    url = splits["varied" if isinstance(transform, ScaleJitter) else "square"]
    s = stream(url, transform)
    s.on_device = True  # plans, decoded below by each backend
    for encoded, _labels in loader(s):
        cpu = DeviceDecode(transform, raise_bad).decode(encoded)[0]
        nv, errors = NvImageCodec(torch.device("cpu")).decode(encoded, transform)
        assert errors == [None] * len(encoded) and torch.equal(nv, cpu)


def run_config(root: str, prefix: str, decoder: str, augment: str = "alexnet"):
    from cnnctl.orchestrator.config import RunConfig

    return RunConfig.model_validate({"data": {"root": root, "prefix": prefix, "augment": augment, "image_size": 40,
                                              "batch_size": 8, "shuffle_buffer": 16, "decoder": decoder,
                                              "val_split": "train"}, "run": {"seed": 5}})


@pytest.mark.timeout(120)
def test_the_trainers_batches_are_the_same_with_data_decoder_device(splits):
    """What the model is fed: data.train_stream and the device batch stage (normalised, lit), as the
    Trainer chains them (ShardStream.counted decodes)."""
    from cnnctl.orchestrator.data import train_stream
    from cnnctl.orchestrator.device_batch import device_batch

    root, prefix = str(Path(splits["square"]).parent), "square"
    fed = {}
    for decoder in ("windowed", "device"):
        cfg = run_config(root, prefix, decoder)
        s = train_stream(cfg, Split(0, 2))
        assert s.on_device == (decoder == "device")
        stage = device_batch(cfg, s.manifest, lighting_seed=5000)
        s.set_epoch(1), stage.set_epoch(1)
        fed[decoder] = [(stage(images, *windows), labels) for images, labels, *windows in s.counted(loader(s, 2))]
    assert len(fed["device"]) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                           for a, b in zip(fed["device"], fed["windowed"]))


def test_preflight_refuses_device_decoding_of_png_shards_in_one_line(tmp_path):
    from cnnctl.orchestrator.preflight import check_data

    make_split(tmp_path, "png", 12, fmt="png")
    problems = check_data(run_config(str(tmp_path), "png", "device"))
    assert len(problems) == 1 and problems[0].startswith("data.decoder=device decodes JPEG shards")
    assert check_data(run_config(str(tmp_path), "png", "auto")) == []


@pytest.mark.nvimgcodec
@pytest.mark.timeout(120)
def test_the_nvimagecodec_backend_skips_a_damaged_jpeg_as_the_cpu_backend_does(damaged):
    """nvImageCodec hands back None for the damaged JPEG: the same sample is heard of, and the same
    batch-mate takes its slot."""
    from cnnctl.shards.nvimgcodec_decode import NvImageCodec

    url = damaged[0]
    for rank in range(2):
        cpu = epoch(stream(url, AlexNetCrop(40), device=True, rank=rank, on_bad=SkipBad()), 0, 0)[0]
        nv = stream(url, AlexNetCrop(40), device=True, rank=rank, on_bad=SkipBad())
        nv.device_decode.backend = NvImageCodec(torch.device("cpu"))
        assert same(epoch(nv, 0, 0)[0], cpu)


def test_evaluation_streams_of_a_device_run_decode_in_the_workers_as_auto_chooses(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCTL_CACHE_DIR", str(tmp_path))
    url = splits["square"]
    assert decoders.windowed("device", CenterCrop(40), url, mf.load(url)) == decoders.windowed(
        "auto", CenterCrop(40), url, mf.load(url))
    assert decoders.cache_file().exists()  # auto's measurement, made once, for both


def test_cnnctl_train_refuses_device_decoding_of_png_shards_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from cnnctl.orchestrator.cli import app

    make_split(tmp_path, "png", 12, fmt="png")
    sets = ["data.prefix=png", "data.val_split=train", "data.decoder=device", "data.batch_size=4",
            f"run.storage={tmp_path}"]
    res = CliRunner().invoke(app, ["train", "--preset", "demo-fashion", "--data", str(tmp_path), "--cpu",
                                   *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if "data.decoder=device" in line]
    assert len(lines) == 1 and "PNG" in lines[0], res.output
