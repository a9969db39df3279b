"""An ImageNet-shaped source made by the tests: real JPEGs cut from scikit-image's bundled photos,
one input of every bad kind, the real label-file formats, and the real archive shapes."""

from __future__ import annotations

import csv
import io
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from skimage import data as photos

WNIDS = ["n01440764", "n01443537", "n01484850"]
NAMES = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark"}
ILSVRC_IDS = {"n01440764": 449, "n01443537": 450, "n01484850": 442}  # the devkit's IDs: not sorted-wnid order
GOOD_PER_CLASS = 6
VAL_COUNT = 9
FIXED = {"n01440764/n01440764_cmyk.JPEG", "n01440764/n01440764_png.JPEG", "n01440764/n01440764_gray.JPEG"}
REJECTED = {  # source -> a word of the reason
    "n01443537/n01443537_trunc.JPEG": "truncated",
    "n01443537/n01443537_corrupt.JPEG": "corrupt",
    "n01443537/n01443537_empty.JPEG": "empty",
    "n01443537/n01443537_text.JPEG": "not an image",
    "n01484850/n01484850_bomb.JPEG": "decompression bomb",
    "n01484850/n01484850_bombjpeg.JPEG": "decompression bomb",
    "n01484850/README.txt": "extension",
}


def photo(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random crop at a random scale of one of scikit-image's photos, resized to w x h."""
    kinds = [photos.astronaut, photos.coffee, photos.chelsea, photos.rocket, photos.immunohistochemistry]
    src = kinds[rng.integers(5)]()
    sh, sw = src.shape[:2]
    ch, cw = int(sh * rng.uniform(0.4, 1)), int(sw * rng.uniform(0.4, 1))
    top, left = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    return np.asarray(Image.fromarray(src[top : top + ch, left : left + cw]).resize((w, h), Image.BILINEAR))


def jpeg_bytes(arr: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(out, "JPEG", quality=92, **kw)
    return out.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "PNG")
    return out.getvalue()


def png_bomb() -> bytes:
    """A valid PNG whose header claims 20000 x 20000 pixels (IHDR CRC recomputed)."""
    data = bytearray(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    data[16:24] = (20000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def jpeg_bomb(arr: np.ndarray) -> bytes:
    """A JPEG whose frame header claims 20000 x 20000 pixels."""
    data = bytearray(jpeg_bytes(arr))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    return bytes(data)


def make_train(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for k in range(GOOD_PER_CLASS):
            w, h = (int(v) for v in rng.integers(48, 160, 2))
            (root / wnid / f"{wnid}_{1000 + 37 * k + c}.JPEG").write_bytes(jpeg_bytes(photo(rng, w, h)))
    pic = photo(rng, 90, 70)
    (root / "n01440764/n01440764_cmyk.JPEG").write_bytes(jpeg_bytes(pic, "CMYK"))
    (root / "n01440764/n01440764_png.JPEG").write_bytes(png_bytes(pic))
    (root / "n01440764/n01440764_gray.JPEG").write_bytes(jpeg_bytes(pic, "L"))
    good = jpeg_bytes(pic)
    (root / "n01443537/n01443537_trunc.JPEG").write_bytes(good[: len(good) * 2 // 3])
    (root / "n01443537/n01443537_corrupt.JPEG").write_bytes(good[:200] + rng.bytes(len(good) - 200))
    (root / "n01443537/n01443537_empty.JPEG").write_bytes(b"")
    (root / "n01443537/n01443537_text.JPEG").write_text("this is not an image\n" * 20)
    (root / "n01484850/n01484850_bomb.JPEG").write_bytes(png_bomb())
    (root / "n01484850/n01484850_bombjpeg.JPEG").write_bytes(jpeg_bomb(pic))
    (root / "n01484850/README.txt").write_text("notes\n")
    return root


def val_truth() -> dict[str, str]:
    return {f"ILSVRC2012_val_{i:08d}": WNIDS[(i * 2) % 3] for i in range(1, VAL_COUNT + 1)}


def make_val_images(root: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for key in val_truth():
        (root / f"{key}.JPEG").write_bytes(jpeg_bytes(photo(rng, *(int(v) for v in rng.integers(60, 140, 2)))))
    return root


def write_kaggle_csv(path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for key, wnid in val_truth().items():
            w.writerow([key, f"{wnid} 10 12 80 90 {wnid} 1 2 30 40"])


def write_devkit(folder: Path, map_kind: str) -> None:
    """ILSVRC2012_validation_ground_truth.txt plus meta.mat (map_kind 'mat') or an '<ID> <wnid>' text map."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = "".join(f"{ILSVRC_IDS[w]}\n" for w in val_truth().values())
    (folder / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
    ids = {**ILSVRC_IDS, "n00001740": 1001}  # an ancestor synset: meta.mat lists those too
    if map_kind == "mat":
        synsets = np.zeros((len(ids), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                                 ("num_children", "O")])
        for row, (wnid, i) in enumerate(ids.items()):
            synsets[row, 0] = (i, wnid, NAMES.get(wnid, "entity"), 0 if i <= 1000 else 3)
        scipy.io.savemat(folder / "meta.mat", {"synsets": synsets})
    else:
        (folder / "synsets.txt").write_text("".join(f"{i} {w}\n" for w, i in ILSVRC_IDS.items()))


def write_names(folder: Path) -> None:
    (folder / "LOC_synset_mapping.txt").write_text("".join(f"{w} {NAMES[w]}\n" for w in WNIDS))


def tar_folder_of_class_tars(train: Path, out: Path) -> Path:
    """ILSVRC2012_img_train.tar's shape: one uncompressed tar per class, inside one tar."""
    with tarfile.open(out, "w") as outer:
        for wnid in sorted(p.name for p in train.iterdir()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for f in sorted((train / wnid).iterdir()):
                    t.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner.tell()
            outer.addfile(info, io.BytesIO(inner.getvalue()))
    return out


def tar_flat(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as t:
        for f in sorted(folder.iterdir()):
            t.add(f, arcname=f.name)
    return out


@pytest.fixture(scope="session")
def imagenet(tmp_path_factory) -> Path:
    """An ImageNet root as Kaggle ships it, minus the boxes: train/, flat val/, the CSV and the names."""
    root = tmp_path_factory.mktemp("imagenet")
    make_train(root / "train")
    make_val_images(root / "val")
    write_kaggle_csv(root / "LOC_val_solution.csv")
    write_names(root)
    return root


@pytest.fixture(scope="session")
def archives(imagenet, tmp_path_factory) -> Path:
    """ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar of the same images, with the devkit beside them."""
    root = tmp_path_factory.mktemp("archives")
    tar_folder_of_class_tars(imagenet / "train", root / "ILSVRC2012_img_train.tar")
    tar_flat(imagenet / "val", root / "ILSVRC2012_img_val.tar")
    write_devkit(root / "ILSVRC2012_devkit_t12" / "data", "mat")
    shutil.copy(imagenet / "LOC_synset_mapping.txt", root)
    return root
