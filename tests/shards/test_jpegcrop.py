"""The windowed JPEG decoder (shards/_jpegcrop.c): the same pixels as a whole decode, and the same
batches whichever path the reader takes."""

import random

import numpy as np
import pytest
import simplejpeg

from cnnctl.shards import codec
from cnnctl.shards import manifest as mf
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, ScaleJitter
from cnnctl.shards.writer import PackOptions, pack

from conftest import jpeg_bytes, photo


def test_the_decoder_is_built():
    # Optional for an install (pyproject.toml); `make setup` installs the headers it needs, so here it is built.
    assert codec.WINDOWED, ("cnnctl.shards._jpegcrop is not built: install libjpeg-turbo's headers "
                            "(Debian: libjpeg62-turbo-dev), then reinstall")


def _images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    sizes = [(341, 256), (256, 384), (256, 256), (301, 257), (263, 300), (500, 375), (233, 229)]
    out = [(f"{w}x{h} {sub}", jpeg_bytes(photo(rng, w, h), subsampling=sub))
           for w, h in sizes for sub in (0, 1, 2)]  # 4:4:4, 4:2:2, 4:2:0; odd sizes end mid-iMCU
    for sub in ("440", "411"):  # samplings Pillow does not write; libjpeg-turbo upsamples them on their own paths
        out.append((f"301x263 {sub}", simplejpeg.encode_jpeg(photo(rng, 301, 263), quality=90, colorspace="RGB",
                                                             colorsubsampling=sub)))
    out.append(("grey", jpeg_bytes(photo(rng, 300, 260), mode="L")))
    out.append(("progressive", jpeg_bytes(photo(rng, 320, 256), progressive=True)))
    return out


def _whole(data: bytes, top: int, left: int, h: int, w: int, flip: bool) -> np.ndarray:
    img = simplejpeg.decode_jpeg(data, colorspace="RGB")[top : top + h, left : left + w]
    return img[:, ::-1] if flip else img


@pytest.mark.parametrize("name, data", _images(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_window_equals_the_same_window_of_a_whole_decode(name, data):
    h, w = codec.jpeg_size(data)
    rng = random.Random(name)
    windows = [(0, 0, 227, 227), (h - 227, w - 227, 227, 227), (0, w - 224, 224, 224), (h - 1, 0, 1, w), (0, 0, h, w)]
    windows += [(top, left, rng.randint(1, h - top), rng.randint(1, w - left)) for top, left in
                ((rng.randrange(h), rng.randrange(w)) for _ in range(20))]
    for top, left, wh, ww in windows:
        for flip in (False, True):
            out = np.empty((wh, ww, 3), np.uint8)
            codec.decode_window(data, out, top, left, flip)
            np.testing.assert_array_equal(out, _whole(data, top, left, wh, ww, flip),
                                          err_msg=f"{name} {top, left, wh, ww, flip}")


def test_bad_input_is_a_value_error_naming_the_problem():
    data = jpeg_bytes(photo(np.random.default_rng(1), 300, 256))
    out = np.empty((227, 227, 3), np.uint8)
    with pytest.raises(ValueError, match="outside the 300x256 image"):
        codec.decode_window(data, out, 30, 0, False)
    with pytest.raises(ValueError, match="(?i)premature end|corrupt"):
        codec.decode_window(data[: len(data) // 2], out, 0, 0, False)  # a warning in libjpeg: an error here
    with pytest.raises(ValueError, match="(?i)premature end|corrupt"):  # damage below the window is found too
        codec.decode_window(data[: len(data) * 9 // 10], np.empty((50, 50, 3), np.uint8), 0, 0, False)
    with pytest.raises(ValueError, match="Not a JPEG file"):
        codec.decode_window(b"GIF89a" + bytes(200), out, 0, 0, False)
    for bad in (np.empty((227, 454, 3), np.uint8)[:, ::2], np.empty((227, 227, 3), np.float32),
                np.empty((227, 227), np.uint8)):
        with pytest.raises(ValueError, match="C-contiguous HxWx3 uint8"):
            codec.decode_window(data, bad, 0, 0, False)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> str:
    """200 photos of ImageNet-like shapes packed as the writer packs ImageNet (shorter side 256)."""
    root = tmp_path_factory.mktemp("jpegcrop")
    rng = np.random.default_rng(2)
    for i in range(200):
        folder = root / "src" / "train" / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(photo(rng, int(rng.integers(300, 500)),
                                                           int(rng.integers(260, 400)))))
    pack(class_folders(root / "src" / "train", "train"), str(root / "shards"), "pj",
         PackOptions(resize=256, shard_size=60))
    return mf.manifest_url(str(root / "shards"), "pj", "train")


@pytest.mark.parametrize("transform, train, workers", [(AlexNetCrop(227), True, 0), (AlexNetCrop(227), True, 2),
                                                       (CenterCrop(224), False, 0)])
def test_the_reader_gives_the_same_batches_with_and_without_windowed_decoding(jpeg_shards, monkeypatch, transform,
                                                                              train, workers):
    def batches():
        stream = ShardStream(jpeg_shards, Split(0, 1), 16, transform, train=train, seed=5, frame=256)
        stream.set_epoch(1)
        return [(x.clone(), y, w) for x, y, w in loader(stream, workers=workers)]

    windowed = batches()
    monkeypatch.setattr(codec, "WINDOWED", False)  # transforms decode whole images and crop after
    whole = batches()
    assert len(windowed) == len(whole) >= 12
    for (xa, ya, wa), (xb, yb, wb) in zip(windowed, whole):
        assert torch_equal(xa, xb) and torch_equal(ya, yb) and torch_equal(wa, wb)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_scale_jitter_gives_the_same_sample_from_its_window_as_from_the_whole_image(monkeypatch):
    t = ScaleJitter(224, 256, 512)
    rng = np.random.default_rng(3)
    images = [jpeg_bytes(photo(rng, w, h)) for w, h in ((341, 256), (256, 384), (256, 256), (300, 263), (500, 375))]
    windowed = [t.load(d, "jpg", random.Random(seed)) for d in images for seed in range(12)]
    monkeypatch.setattr(codec, "WINDOWED", False)
    whole = [t.load(d, "jpg", random.Random(seed)) for d in images for seed in range(12)]
    for a, b in zip(windowed, whole):
        np.testing.assert_array_equal(a, b)


def test_scale_jitter_decodes_every_pixel_the_resize_reads():
    # Pillow's bilinear resize of a box reads, for output pixel i, the source pixels
    # [int(c - support + 0.5), int(c + support + 0.5)) with c = box0 + (i + 0.5) * scale and
    # support = max(1, scale) (Resample.c, precompute_coeffs): all of them must lie in the window
    t = ScaleJitter(224, 256, 512)
    for seed in range(300):
        rng = random.Random(seed)
        w, h = rng.randint(224, 700), rng.randint(224, 700)
        _, box = t.plan(w, h, rng)
        x0, y0, x1, y1 = t.support(box, w, h)
        for lo, hi, start, end, size in ((box[0], box[2], x0, x1, w), (box[1], box[3], y0, y1, h)):
            scale = (hi - lo) / 224
            support = max(1.0, scale)
            centres = [lo + (i + 0.5) * scale for i in range(224)]
            first = max(0, min(int(c - support + 0.5) for c in centres))
            last = min(size, max(int(c + support + 0.5) for c in centres))
            assert start <= first and last <= end, (seed, w, h, box)


def test_a_corrupt_jpeg_leaves_the_draws_where_a_whole_decode_leaves_them(monkeypatch):
    # the window is drawn from the header before decoding either way, so a bad sample cannot shift
    # the batches after it between a machine with the decoder and one without
    data = jpeg_bytes(photo(np.random.default_rng(4), 341, 256))
    bad = data[: len(data) * 9 // 10]
    states = []
    for windowed in (True, False):
        monkeypatch.setattr(codec, "WINDOWED", windowed)
        rng = random.Random(7)
        with pytest.raises(ValueError, match="(?i)premature end|corrupt"):
            AlexNetCrop(227).load_into(bad, "jpg", rng, np.empty((227, 227, 3), np.uint8))
        states.append(rng.random())
    assert states[0] == states[1]
