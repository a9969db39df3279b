"""Which JPEG decoder a stream uses for its crops: the window only (shards/_jpegcrop.c over the
system's libjpeg-turbo) or the whole image (simplejpeg's bundled libjpeg-turbo), which give the same
pixels. Which is faster depends on the machine (the two libjpeg-turbo builds differ) and on how much
of the image the crop covers, so ``auto`` measures both on the split's own samples, in CPU-seconds
of this process, once per (machine, transform, shard image size), and caches the answer in
``$CNNCTL_CACHE_DIR`` (default ``~/.cache/cnnctl``) / decoders.json. ``windowed`` and ``whole``
(data.decoder) override it. ``device`` decodes a training stream's JPEGs on the training process
(shards/device_decode.py: the GPU through nvImageCodec, or the CPU); its evaluation streams, and
anything ``device_problem`` refuses, decode in the workers as ``auto`` chooses.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from cnnctl.shards import codec, shard_tar
from cnnctl.shards import manifest as mf
from cnnctl.shards.stages import decode
from cnnctl.shards.transforms import ScaleJitter, Transform

CHOICES = ("auto", "windowed", "whole", "device")
SAMPLES = 48  # JPEGs of the first shard decoded each way
MIN_CPU_S = 0.25  # each way measured for at least this much CPU time, interleaved


def cache_file() -> Path:
    return Path(os.environ.get("CNNCTL_CACHE_DIR") or Path.home() / ".cache" / "cnnctl") / "decoders.json"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} | {platform.machine()}"


def cache_key(transform: Transform, manifest: dict) -> str:
    """The machine, the transform and the shards' stored image size (the writer's resize/centre crop)."""
    opts = manifest.get("options", {})
    return f"{_machine()} | {transform!r} | resize {opts.get('resize')} center_crop {opts.get('center_crop')}"


def measure(transform: Transform, samples: list[dict], min_cpu_s: float = MIN_CPU_S) -> dict[str, float]:
    """CPU-seconds per sample of decoding ``samples`` (raw shard samples) with ``transform``, each
    way, interleaved so both see the same machine state; {"windowed": s, "whole": s}."""
    shape = transform.sample_shape() or (1, 1, 3)
    slot = np.empty(shape, np.uint8) if transform.windowed else None
    spent, done = {"windowed": 0.0, "whole": 0.0}, {"windowed": 0, "whole": 0}
    while min(spent.values()) < min_cpu_s:
        for way in ("windowed", "whole"):
            rng = random.Random(0)  # the same crops each way
            t0 = time.process_time()
            for raw in samples:
                decode(raw, transform, rng, slot, windowed=way == "windowed")
            spent[way] += time.process_time() - t0
            done[way] += len(samples)
    return {way: spent[way] / done[way] for way in spent}


def _jpeg_samples(manifest_url: str, manifest: dict) -> list[dict]:
    first = mf.shard_urls(manifest_url, manifest)[0]
    return [s for s in shard_tar.tar_samples(first) if "jpg" in s or "jpeg" in s][:SAMPLES]


def windowed(setting: str, transform: Transform, manifest_url: str, manifest: dict) -> bool:
    """Whether a stream of ``transform`` over this split decodes JPEG windows (True) or whole
    images (False), by data.decoder ``setting``."""
    if setting not in CHOICES:
        raise ValueError(f"data.decoder {setting!r}: one of {', '.join(CHOICES)}")
    setting = "auto" if setting == "device" else setting  # what decodes in the workers (evaluation)
    if setting != "auto" or not codec.WINDOWED:
        return setting == "windowed" and codec.WINDOWED
    # it decodes no JPEG windows (whole images, a padded crop) or the shards hold no JPEGs: nothing to choose
    if (not (transform.windowed or isinstance(transform, ScaleJitter))
            or manifest.get("options", {}).get("image_format") == "png"):
        return True
    key, path = cache_key(transform, manifest), cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]["choice"] == "windowed"
    samples = _jpeg_samples(manifest_url, manifest)
    if not samples:
        return True  # no JPEGs: the choice does not matter
    cost = measure(transform, samples)
    choice = "windowed" if cost["windowed"] <= cost["whole"] else "whole"
    cached[key] = {"choice": choice, "cpu_s_per_image": cost, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, path)  # atomic: workers of one node may measure at once, and the last one wins
    except OSError:
        pass  # a read-only home: measured again next time, nothing else changes
    return choice == "windowed"


def device_problem(transform: Transform, manifest: dict) -> str | None:
    """Why data.decoder=device cannot decode this training stream (one line), or None: it decodes
    JPEG shards, for a crop of one window of the image (AlexNet's, a centre crop, an unpadded
    crop-flip) or VGG's scale jitter."""
    fmt = manifest.get("options", {}).get("image_format", "jpg")
    if fmt != "jpg":
        return (f"data.decoder=device decodes JPEG shards, and these hold {fmt.upper()} images: "
                f"set data.decoder=auto (the loader workers decode them)")
    if not (transform.windowed or isinstance(transform, ScaleJitter)):
        return (f"data.decoder=device decodes one window of each image, and {transform!r} is not one "
                f"(a padded crop): set data.decoder=auto")
    return None
