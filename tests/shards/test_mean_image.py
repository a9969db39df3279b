"""The per-pixel mean image (AlexNet §2): the writer's mean of the central squares, and the reader's
windows that say which patch of it each crop subtracts."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnctl.shards import manifest as mf
from cnnctl.shards.layouts import class_folders
from cnnctl.shards.reader import ShardStream, Split, loader
from cnnctl.shards.transforms import AlexNetCrop, CenterCrop, TenCrop
from cnnctl.shards.writer import PackOptions, pack

SIDE, CROP = 32, 24


def _coded(i: int, h: int, w: int) -> np.ndarray:
    """An image whose pixels say where they are in its central square: R = row + 100, G = column + 100
    (in the square's frame), B = i."""
    t0, l0 = (h - min(h, w)) // 2, (w - min(h, w)) // 2
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows - t0 + 100, cols - l0 + 100, np.full((h, w), i)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """40 lossless PNGs of 32 px shorter side, landscape and portrait, packed at --resize 32."""
    root = tmp_path_factory.mktemp("coded")
    for i in range(40):
        h, w = (SIDE, SIDE + 2 * (i % 5)) if i % 2 else (SIDE + i % 7, SIDE)
        folder = root / "src" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_coded(i, h, w)).save(folder / f"im{i}.png")
    manifest, _ = pack(class_folders(root / "src", "train"), str(root / "out"), "m",
                       PackOptions(image_format="png", resize=SIDE, shard_size=16))
    return mf.manifest_url(str(root / "out"), "m", "train"), manifest


def _stored(url: str, manifest: dict) -> list[np.ndarray]:
    out = []
    for shard in mf.shard_urls(url, manifest):
        with tarfile.open(shard) as t:
            out += [np.asarray(Image.open(io.BytesIO(t.extractfile(m).read())))
                    for m in t.getmembers() if m.name.endswith(".png")]
    return out


def test_the_mean_image_is_the_mean_of_the_central_squares(coded):
    url, manifest = coded
    info = manifest["stats"]["mean_image"]
    assert info == {"file": "m-train.mean.npy", "side": SIDE, "images": 40, "scale": "0-255"}
    squares = []
    for img in _stored(url, manifest):
        h, w = img.shape[:2]
        t0, l0 = (h - SIDE) // 2, (w - SIDE) // 2
        squares.append(img[t0 : t0 + SIDE, l0 : l0 + SIDE].astype(np.float64))
    mean = mf.load_mean_image(url, manifest)
    assert mean.dtype == np.float32 and mean.shape == (SIDE, SIDE, 3)
    np.testing.assert_allclose(mean, np.mean(squares, 0), rtol=0, atol=1e-4)
    # the coded rows and columns survive the mean: R = row + 100, G = column + 100
    np.testing.assert_allclose(mean[:, :, 0], np.arange(SIDE)[:, None] + 100 + 0 * mean[:, :, 0], atol=1e-4)
    np.testing.assert_allclose(mean[:, :, 1], np.arange(SIDE)[None, :] + 100 + 0 * mean[:, :, 1], atol=1e-4)


@pytest.mark.parametrize("transform, train", [(AlexNetCrop(CROP), True), (CenterCrop(CROP), False)])
def test_each_batch_says_where_its_crops_lay_in_the_square(coded, transform, train):
    url, _ = coded
    stream = ShardStream(url, Split(0, 1), 8, transform, train=train, seed=3, frame=SIDE)
    flips, batches = 0, list(loader(stream))
    assert len(batches) == 5
    for images, _, windows in batches:
        assert windows.shape == (len(images), 3)
        for img, (top, left, flip) in zip(images.permute(0, 2, 3, 1).numpy(), windows.tolist()):
            cols = np.arange(left, left + CROP)[:: -1 if flip else 1]
            assert (img[:, :, 0] == np.arange(top, top + CROP)[:, None] + 100).all()
            assert (img[:, :, 1] == cols[None, :] + 100).all()
            assert 0 <= top <= SIDE - CROP and 0 <= left <= SIDE - CROP
            flips += flip
    assert (0 < flips < 40) if train else flips == 0


def test_a_frame_needs_a_windowed_transform_and_an_image_of_its_size(coded, tmp_path):
    url, _ = coded
    with pytest.raises(ValueError, match="TenCrop is not one window"):
        ShardStream(url, Split(), 8, TenCrop(CROP), train=False, frame=SIDE)
    stream = ShardStream(url, Split(), 8, CenterCrop(CROP), train=False, frame=SIDE + 4)
    with pytest.raises(Exception, match=r"m-train-00000\d.tar: sample 'im\d+': "
                                        r"its central square is 32px, not the mean image's 36px"):
        list(loader(stream))


def test_no_mean_image_without_a_common_size(fmnist_root):
    # Fashion-MNIST packed as stored (no --resize): the manifest says so, and asking for one is an error
    url = mf.manifest_url(fmnist_root, "fashion-mnist", "train")
    manifest = mf.load(url)
    assert manifest["stats"]["mean_image"] is None
    with pytest.raises(ValueError, match="no per-pixel mean image .*without --resize"):
        mf.load_mean_image(url, manifest)
