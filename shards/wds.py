"""A cnnctl split as a `webdataset.WebDataset` pipeline, for people's own training loops (DESIGN §3).

cnnctl's own loader (shards/stages.py, shards/reader.py) does not use webdataset: it reads the shards
through shards/shard_tar.py. This module is the bridge for everyone else: ``pipeline`` reads a split's
manifest, splits its shards by rank and by DataLoader worker, and yields ``(image, label, key)`` with
the label from the sample's ``.cls`` member. webdataset is imported here only, inside ``pipeline``.

    from torch.utils.data import DataLoader
    from cnnctl.shards.wds import pipeline

    ds = pipeline("data/fashion-mnist/fashion-mnist-train.manifest.json", rank=rank, world=world,
                  image="torchrgb", shuffle=1000)
    for images, labels, keys in DataLoader(ds.batched(64), batch_size=None, num_workers=4):
        ...

Shards, not samples, are split: rank r takes shards r, r + world, ...; each DataLoader worker of that
rank takes every num_workers-th of those. With fewer shards than ranks x workers some readers get
none, and with shards of unequal counts the ranks get unequal numbers of samples (a DDP loop then
needs ``ds.with_epoch(n)`` or its own stopping rule). Over all ranks and workers, every sample of
the split comes exactly once per pass.
"""

from __future__ import annotations

from functools import partial
from itertools import islice
from typing import Iterator

import fsspec

from cnnctl.shards import manifest as mf

IMAGE_MEMBERS = "jpg;jpeg;png"


def _by_rank(src: Iterator[dict], rank: int, world: int) -> Iterator[dict]:
    yield from islice(src, rank, None, world)


def _open(src: Iterator[dict]) -> Iterator[dict]:
    """Shard URL -> stream, through fsspec (local paths, s3://, gs://, memory://), as the rest of cnnctl
    reads them; webdataset's own opener would shell out to curl or gsutil for remote URLs."""
    for sample in src:
        url = mf.check_url(sample["url"])
        fs, path = fsspec.core.url_to_fs(url)
        yield dict(url=url, stream=fs.open(path, "rb"))


def _label(value) -> int:
    return int(value) if isinstance(value, int) else int(bytes(value).decode("ascii").strip())


def pipeline(manifest: str, *, rank: int = 0, world: int = 1, image: str | None = "rgb8",
             shuffle: int = 0, seed: int = 0):
    """A ``webdataset.WebDataset`` over the split whose manifest is at ``manifest`` (a path or fsspec
    URL, ``<root>/<prefix>-<split>.manifest.json``), yielding ``(image, label, key)`` tuples.

    - ``rank``/``world``: this process's share of the shards (``torch.distributed``'s rank and world
      size, or the data-parallel rank); DataLoader workers split that share again.
    - ``image``: a webdataset decoder spec (``"rgb8"`` HxWx3 uint8 arrays, ``"torchrgb"`` 3xHxW float
      tensors in 0..1, ``"pil"``, ...); ``None`` leaves the encoded bytes. Grayscale PNGs (Fashion-MNIST)
      come out as RGB with the decoders' RGB specs.
    - ``shuffle``: a sample shuffle buffer of that size in each reader (0: shard order, as packed, which
      is already a seeded permutation of the split); ``seed`` seeds it, the same order on every pass:
      build the pipeline with ``seed=epoch`` for another order each epoch.

    The result is a fluid webdataset pipeline: ``.batched(n)``, ``.with_epoch(n)``, ``.map_tuple(...)``
    and the rest apply. Raises FileNotFoundError/ValueError for a missing or foreign manifest, and
    refuses shell-executing URLs (``pipe:``) as the rest of cnnctl does."""
    import webdataset as wds

    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1} (world {world})")
    urls = mf.shard_urls(manifest, mf.load(manifest))
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=partial(_by_rank, rank=rank, world=world),
                        workersplitter=wds.split_by_worker, empty_check=False)
    # webdataset opens local paths itself and other URLs through gopen (curl, gsutil): read them all
    # through fsspec instead, so object stores work with the credentials cnnctl uses.
    openers = [i for i, stage in enumerate(ds.pipeline) if type(stage).__name__ in ("StreamingOpen", "FileCache")]
    if len(openers) != 1:
        raise RuntimeError(f"webdataset {getattr(wds, '__version__', '?')}: cannot find its shard opener to replace")
    ds.pipeline[openers[0]] = _open
    if shuffle:
        ds = ds.shuffle(shuffle, seed=f"{seed}-{rank}")
    if image:
        ds = ds.decode(image)
    return ds.to_tuple(IMAGE_MEMBERS, "cls", "__key__").map_tuple(None, _label, None)
