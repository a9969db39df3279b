"""data.decoder=device: the JPEGs of a batch decoded on the training process, after the loader.

The loader's workers batch Plans (shards/encoded.py): bytes and each sample's window, drawn from
the sample's seed as the worker-side decoders draw it. ``DeviceDecode`` turns such a batch into the
uint8 N×3×H×W (channels_last) batch the worker-side decoders would have made, then the device batch
stage (orchestrator/device_batch.py) goes on as ever. Two backends:

- CPU: cnnctl's own decoders (the windowed decoder where it is built, else simplejpeg's whole image
  and a crop; ScaleJitter.render for VGG's scale jitter): the pixels are the worker-side ones, bit
  for bit (tests/shards/test_device_decode.py).
- CUDA: NVIDIA nvImageCodec (shards/nvimgcodec_decode.py, the `gpu` extra), imported only here and
  only then: ROI decode of each window (the hardware JPEG decoder of A100/H100 where it takes the
  batch), flips on the GPU, and VGG's resize by shards/pillow_resize.py (Pillow's coefficients and
  integer rounding, on any torch device).

A sample whose header parsed in the worker but whose data is damaged is found only here, after its
batch was made: under on_bad_sample=error the run stops naming its shard and key; under skip it is
counted and its place taken by the batch's previous good sample (label and window too), so the batch
keeps its size and every rank its step count.
"""

from __future__ import annotations

import numpy as np
import torch

from cnnctl.shards import codec
from cnnctl.shards.encoded import EncodedBatch, Plan
from cnnctl.shards.shard_tar import BadSample
from cnnctl.shards.transforms import Transform


class DeviceDecode:
    """EncodedBatch -> uint8 batch on ``device`` ("cpu", or "cuda": the current CUDA device)."""

    def __init__(self, transform: Transform, on_bad, device: torch.device | str = "cpu"):
        self.transform, self.on_bad, self.device = transform, on_bad, torch.device(device)
        self.backend = None
        if self.device.type == "cuda":
            from cnnctl.shards.nvimgcodec_decode import NvImageCodec  # the `gpu` extra: a one-line error without it

            self.backend = NvImageCodec(self.device)

    def batch(self, batch: tuple) -> tuple:
        """A loader's (EncodedBatch, labels, [windows]) -> (uint8 N×3×H×W channels_last, labels,
        [windows]); anything else is handed back as it is."""
        if not batch or not isinstance(batch[0], EncodedBatch):
            return batch
        encoded, labels, *windows = batch
        images, good = self.decode(encoded)
        bad = [i for i, ok in enumerate(good) if not ok]
        if bad:
            labels = labels.clone()
            windows = [w.clone() for w in windows]
            for i in bad:  # the previous good sample, or the first good one for a batch that starts bad
                j = max((k for k in range(i) if good[k]), default=good.index(True))
                images[i] = images[j]
                labels[i] = labels[j]
                for w in windows:
                    w[i] = w[j]
        return (images.movedim(-1, -3), labels, *windows)

    def decode(self, encoded: EncodedBatch) -> tuple[torch.Tensor, list[bool]]:
        """N×H×W×3 uint8 on the device, and which samples decoded (the rest were heard by ``on_bad``)."""
        if self.backend is not None:
            images, errors = self.backend.decode(encoded, self.transform)
        else:
            images = torch.empty((len(encoded), *encoded.shape), dtype=torch.uint8)
            errors = [cpu_decode(p, self.transform, images[i].numpy()) for i, p in enumerate(encoded.plans)]
        for plan, error in zip(encoded.plans, errors):
            if error is not None:
                self.on_bad(BadSample(f"{plan.where}: {error}"))  # raise_bad stops the run here
        good = [e is None for e in errors]
        if not any(good):
            raise BadSample(f"{encoded.plans[0].where} and the rest of its batch: no sample of it decodes")
        return images, good


def cpu_decode(plan: Plan, transform: Transform, out: np.ndarray) -> str | None:
    """One plan into ``out`` (H×W×3 uint8) with cnnctl's decoders, as the worker-side stage would
    decode it; the reason it failed, or None."""
    try:
        if plan.window is not None:
            top, left, flip = plan.window
            if codec.WINDOWED:
                codec.decode_window(plan.data, out, top, left, flip)
                return None
            img = codec.decode(plan.data, "jpg")
            crop = torch.from_numpy(img[top : top + out.shape[0], left : left + out.shape[1]])
        else:
            s, box, flip = plan.jitter
            crop = torch.from_numpy(np.array(transform.render(plan.data, plan.w, plan.h, s, box)))  # writable
        torch.from_numpy(out).copy_(crop.flip(1) if flip else crop)
    except (codec.BadImage, ValueError) as exc:  # simplejpeg and _jpegcrop raise ValueError for corrupt data
        return str(exc)
    return None
