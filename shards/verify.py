"""Re-read a packed split and check it against its manifest (``cnnctl shard verify``).

Each shard is read in full: its bytes and sha256 against the manifest, the tar's integrity, every
sample's members (image, .cls, .json), labels in range, keys unique across the split, and the
sample counts. Optionally every image is decoded too.
"""

from __future__ import annotations

import hashlib

import fsspec

from cnnctl.shards import codec
from cnnctl.shards import manifest as mf
from cnnctl.shards import shard_tar


def _sample_problems(key: str, members: dict[str, bytes], n_classes: int, decode: bool) -> list[str]:
    if not mf.KEY_RE.match(key):
        return [f"key {key!r} is not [A-Za-z0-9_-]+"]
    images = [e for e in codec.IMAGE_EXTS if e in members]
    missing = [e for e in ("cls", "json") if e not in members] + ([] if images else ["jpg/png"])
    if missing:
        return [f"sample {key} lacks {', '.join(missing)}"]
    label = members["cls"].strip()  # ASCII digits only, as the loader reads them (stages.label)
    if not (0 < len(label) <= 18 and label.isdigit()) or int(label) >= n_classes:
        return [f"sample {key}: label {label[:24].decode('ascii', 'replace')!r} "
                f"is not a class index 0..{n_classes - 1}"]
    if decode:
        try:
            codec.decode(members[images[0]], images[0])
        except (codec.BadImage, ValueError) as exc:
            return [f"sample {key}: image does not decode ({exc})"]
    return []


def verify(url: str, decode: bool = False) -> tuple[dict, list[str]]:
    """The manifest and one line per problem, each naming its shard; no lines means sound."""
    manifest = mf.load(url)
    n_classes, problems, first_seen, total = len(manifest["classes"]), [], {}, 0
    for entry, shard_url in zip(manifest["shards"], mf.shard_urls(url, manifest)):
        name, found = entry["name"], []
        try:
            with fsspec.open(mf.check_url(shard_url), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if len(data) != entry["bytes"]:
            found.append(f"{len(data)} bytes, the manifest says {entry['bytes']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            found.append(f"sha256 {digest[:16]}..., the manifest says {entry['sha256'][:16]}...")
        try:
            samples = list(shard_tar.samples(data))
        except shard_tar.BadSample as exc:
            problems.extend(f"{name}: {p}" for p in found + [f"damaged tar ({exc})"])
            continue
        for sample in samples:
            key = sample["__key__"]
            found.extend(_sample_problems(key, sample, n_classes, decode))
            if key in first_seen:
                found.append(f"key {key} repeats (also in {first_seen[key]})")
            first_seen.setdefault(key, name)
        if len(samples) != entry["count"]:
            found.append(f"{len(samples)} samples, the manifest says {entry['count']}")
        total += len(samples)
        problems.extend(f"{name}: {p}" for p in found)
    if manifest["stats"].get("mean_image"):
        try:
            mf.load_mean_image(url, manifest)
        except (OSError, ValueError) as exc:
            problems.append(f"{manifest['stats']['mean_image']['file']}: {exc}")
    if total != manifest["num_samples"] and not problems:
        problems.append(f"{mf.manifest_name(manifest['prefix'], manifest['split'])}: shards hold {total} samples, "
                        f"num_samples says {manifest['num_samples']}")
    return manifest, problems
