"""Train and test augmentation: AlexNet crops and PCA lighting, VGG scale jitter, ten-crop."""

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from cnnctl.orchestrator.device_batch import Lighting
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, ScaleJitter, TenCrop

# ImageNet's RGB eigen-decomposition on the 0-1 scale (AlexNet §4.1, as fb.resnet.torch quotes it)
EIGVAL = [0.2175, 0.0188, 0.0045]
EIGVEC = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]


def jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.slow  # ~50 s: 40 crops searched over every offset
def test_alexnet_crop_is_a_227_crop_of_the_central_square_maybe_flipped():
    img = np.random.default_rng(0).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    square = img[:, 22:278]
    flips = 0
    for seed in range(40):
        out = AlexNetCrop(227)(img, random.Random(seed))
        assert out.shape == (227, 227, 3)
        hits = [(top, left, f) for top in range(30) for left in range(30) for f in (0, 1)
                if (square[top:top + 227, left:left + 227][:, ::-1 if f else 1] == out).all()]
        assert len(hits) == 1
        flips += hits[0][2]
    assert 5 < flips < 35


def test_ten_crop_of_a_constant_image_is_ten_center_crops():
    img = np.full((256, 320, 3), (12, 130, 250), np.uint8)
    views = TenCrop(227)(img)
    assert views.shape == (10, 227, 227, 3)
    assert all((v == CenterCrop(227)(img)).all() for v in views)


def test_ten_crop_views_are_the_corners_center_and_flips():
    img = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    v = TenCrop(227)(img)
    assert (v[0] == img[:227, :227]).all() and (v[3] == img[29:, 29:]).all() and (v[4] == img[14:241, 14:241]).all()
    assert all((v[i + 5] == v[i][:, ::-1]).all() for i in range(5))


@pytest.mark.parametrize("short, smin, smax", [(256, 256, 512), (256, 384, 384), (600, 256, 290)])
def test_scale_jitter_draws_s_within_bounds_and_crops_the_rescaled_image(short, smin, smax):
    src = photos.astronaut()  # 512x512
    w = round(short * 4 / 3)
    arr = np.asarray(Image.fromarray(src).resize((w, short), Image.BILINEAR))
    data = jpeg(arr)
    t = ScaleJitter(224, smin, smax)
    seen = set()
    for seed in range(25):
        s, box = t.plan(w, short, random.Random(seed))
        assert smin <= s <= smax
        seen.add(s)
        f = s / short
        assert box[2] - box[0] == pytest.approx(224 / f, rel=0.01) and 0 <= box[0] and box[2] <= w + 1e-6
        out = t.load(data, "jpg", random.Random(seed))  # the same draws as plan
        assert out.shape == (224, 224, 3)
        # reference: decode everything, rescale the whole image to S, crop (what the box shortcut replaces)
        full = Image.fromarray(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        scaled = np.asarray(full.resize((round(w * f), round(short * f)), Image.BILINEAR)).astype(int)
        left, top = round(box[0] * f), round(box[1] * f)
        err = np.abs(scaled[top:top + 224, left:left + 224] - out).mean()
        assert err < 6, (s, err)
    assert len(seen) > 1 or smin == smax


def test_scale_jitter_flips_half_the_time():
    img = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    flipped = sum(ScaleJitter(224)(img, random.Random(s)) is not img for s in range(200))
    assert 70 < flipped < 130


def test_lighting_with_sigma_zero_is_the_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(Lighting(EIGVAL, EIGVEC, [1, 1, 1], sigma=0)(x.clone()), x)


def test_lighting_adds_the_pca_formula_per_image():
    lighting = Lighting(EIGVAL, EIGVEC, [0.5, 0.25, 0.2], sigma=0.1, seed=7)
    x = torch.randn(5, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    out = lighting(x.clone())
    lighting.set_epoch(0)  # the same draws again
    alpha = torch.randn(5, 3, generator=lighting.generator, dtype=torch.float64) * 0.1
    p, lam = np.array(EIGVEC), np.array(EIGVAL)
    for n in range(5):
        delta = p @ (alpha[n].numpy() * lam)  # [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T
        expected = x[n] + torch.tensor(delta / np.array([0.5, 0.25, 0.2]), dtype=torch.float32).view(3, 1, 1)
        assert torch.allclose(out[n], expected, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # one offset per image, the same for every pixel
    assert torch.allclose((out - x).std(dim=(2, 3)), torch.zeros(5, 3), atol=1e-6)


def test_lighting_is_seeded_per_epoch():
    a, b = Lighting(EIGVAL, EIGVEC, [1, 1, 1], seed=3), Lighting(EIGVAL, EIGVEC, [1, 1, 1], seed=3)
    x = torch.zeros(4, 3, 2, 2)
    assert torch.equal(a(x.clone()), b(x.clone()))
    b.set_epoch(1)
    assert not torch.equal(a(x.clone()), b(x.clone()))
