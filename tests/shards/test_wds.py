"""cnnctl's shards read by other tools: plain `webdataset.WebDataset`, Ray Data's `read_webdataset`,
and `shards.wds.pipeline` (cnnctl's bridge for people's own training loops), each giving the keys,
labels and counts of the split, checked against its manifest and cnnctl's own tar reader."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from cnnctl.shards import manifest as mf
from cnnctl.shards import shard_tar
from cnnctl.shards.wds import pipeline


def _split(root: str, split: str = "train") -> tuple[str, dict, dict[str, int]]:
    """(manifest URL, manifest, {key: label}) with the labels as cnnctl's reader reads them."""
    url = mf.manifest_url(root, "fashion-mnist", split)
    manifest = mf.load(url)
    truth = {}
    for shard, info in zip(mf.shard_urls(url, manifest), manifest["shards"]):
        got = {s["__key__"]: int(s["cls"]) for s in shard_tar.tar_samples(shard)}
        assert len(got) == info["count"]
        truth |= got
    assert len(truth) == manifest["num_samples"]
    return url, manifest, truth


def _check_labels(manifest: dict, labels: dict[str, int]) -> None:
    classes = [c["index"] for c in manifest["classes"]]
    assert set(labels.values()) == set(classes)
    per_class = manifest["num_samples"] // len(classes)  # the fixture takes the same number of each class
    assert Counter(labels.values()) == {c: per_class for c in classes}


def test_plain_webdataset_reads_a_split(fmnist_root):
    url, manifest, truth = _split(fmnist_root)
    got, per_shard = {}, Counter()
    for s in wds.WebDataset(mf.shard_urls(url, manifest), shardshuffle=False):
        assert set(s) >= {"__key__", "__url__", "png", "cls", "json"}, set(s)
        assert s["__key__"] not in got
        got[s["__key__"]] = int(s["cls"])
        per_shard[Path(s["__url__"]).name] += 1
    assert got == truth
    assert per_shard == {info["name"]: info["count"] for info in manifest["shards"]}
    _check_labels(manifest, got)


def test_ray_data_reads_a_split(ray_cluster, fmnist_root):
    import ray

    url, manifest, truth = _split(fmnist_root)
    ds = ray.data.read_webdataset(mf.shard_urls(url, manifest), decoder=None)
    rows = ds.select_columns(["__key__", "cls"]).take_all()
    assert len(rows) == manifest["num_samples"]
    got = {r["__key__"]: int(bytes(r["cls"])) for r in rows}
    assert got == truth
    _check_labels(manifest, got)
    # decoded: the grayscale PNGs come out as 28x28 images
    first = ray.data.read_webdataset(mf.shard_urls(url, manifest)[:1]).take(1)[0]
    assert np.asarray(first["png"]).shape[:2] == (28, 28)


@pytest.mark.dali
def test_nvidia_dali_reads_a_split_on_cpu(fmnist_root):
    """DALI's webdataset reader, on the CPU (no GPU, no index files): not a dependency of cnnctl (its
    wheel is ~0.4 GB), so this runs where `nvidia-dali-cuda120` is installed and is deselected elsewhere."""
    from nvidia.dali import fn, pipeline_def, types

    url, manifest, truth = _split(fmnist_root)
    batch = 50

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None)
    def read():
        image, cls = fn.readers.webdataset(paths=mf.shard_urls(url, manifest), ext=["png", "cls"], name="shards",
                                           missing_component_behavior="error")
        return fn.decoders.image(image, device="cpu", output_type=types.RGB), cls

    pipe = read()
    pipe.build()
    assert pipe.epoch_size("shards") == manifest["num_samples"]
    labels, shapes = [], set()
    for _ in range(manifest["num_samples"] // batch):
        images, cls = pipe.run()
        labels += [int(bytes(np.asarray(cls.at(i))).decode()) for i in range(len(cls))]
        shapes |= {images.at(i).shape for i in range(len(images))}
    assert shapes == {(28, 28, 3)}
    assert Counter(labels) == Counter(truth.values())


def test_pipeline_over_2_ranks_and_2_workers_yields_each_sample_once(fmnist_root):
    url, manifest, truth = _split(fmnist_root)
    seen: list[tuple[str, int]] = []
    for rank in range(2):
        loader = DataLoader(pipeline(url, rank=rank, world=2, image="rgb8", shuffle=50, seed=1),
                            batch_size=None, num_workers=2)
        for image, label, key in loader:
            assert image.shape == (28, 28, 3) and image.dtype.is_floating_point is False
            seen.append((key, int(label)))
    keys = [k for k, _ in seen]
    assert len(keys) == len(set(keys)) == manifest["num_samples"]
    assert dict(seen) == truth
    _check_labels(manifest, dict(seen))


def test_pipeline_batches_and_refuses_what_it_should(fmnist_root, tmp_path):
    url, manifest, truth = _split(fmnist_root, "test")
    images, labels, keys = next(iter(pipeline(url, image="torchrgb").batched(16)))
    assert tuple(images.shape) == (16, 3, 28, 28) and float(images.max()) <= 1.0
    assert [truth[k] for k in keys] == labels.tolist()
    raw = next(iter(pipeline(url, image=None)))
    assert raw[0][:8] == b"\x89PNG\r\n\x1a\n" and raw[1] == truth[raw[2]]
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        pipeline(url, rank=2, world=2)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        pipeline(str(tmp_path / "x-train.manifest.json"))
    with pytest.raises(mf.UnsafeURLError):
        pipeline("pipe:cat x-train.manifest.json")


def test_pipeline_reads_a_split_in_an_object_store(fmnist_root, s3_server):
    """Shards in S3 open through fsspec (webdataset alone would shell out to curl)."""
    url, manifest, truth = _split(fmnist_root, "test")
    s3_server.mkdir("cnn-wds")
    s3_server.put(str(Path(url).parent / "fashion-mnist-test*"), "cnn-wds/fm/")
    got = {key: label for _, label, key in pipeline("s3://cnn-wds/fm/fashion-mnist-test.manifest.json", image=None)}
    assert got == truth
