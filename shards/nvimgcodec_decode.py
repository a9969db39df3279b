"""data.decoder=device on CUDA: a batch's JPEG windows decoded by NVIDIA nvImageCodec.

Imported only by shards/device_decode.py when data.decoder=device runs on CUDA; nvImageCodec is the
`gpu` extra (``pip install 'cnnctl[gpu]'``, nvidia-nvimgcodec-cu12 with its nvJPEG), never needed
on CPU. One ``Decoder.decode`` call per batch takes every sample's region of interest (a
CodeStream's sub-stream): the window of a windowed transform, or the pixels VGG's resize reads
(ScaleJitter.support), which shards/pillow_resize.py then resizes as Pillow does. nvImageCodec picks the
hardware JPEG decoder (A100/H100) or the CUDA one per image; ``:fancy_upsampling=1`` asks for
libjpeg-turbo's chroma upsampling. A sample it cannot decode comes back as None: the stage hears of
it as a bad sample.

``device`` may be the CPU (nvImageCodec's CPU-only backend, libjpeg-turbo), which is how this
module is checked where a wheel is installed and no GPU is (tests/shards/test_device_decode.py).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from nvidia import nvimgcodec
except ImportError:  # the one line a user sees, raised when the stage is made
    nvimgcodec = None

from cnnctl.shards.encoded import EncodedBatch
from cnnctl.shards.pillow_resize import resize_box
from cnnctl.shards.transforms import ScaleJitter, Transform

OPTIONS = ":fancy_upsampling=1"
MISSING = ("data.decoder=device on CUDA needs NVIDIA nvImageCodec, which is not installed: "
           "pip install 'cnnctl[gpu]' (nvidia-nvimgcodec-cu12), or set data.decoder=auto")


class NvImageCodec:
    def __init__(self, device: torch.device):
        if nvimgcodec is None:
            raise RuntimeError(MISSING)
        self.device = device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.decoder = nvimgcodec.Decoder(device_id=index, options=OPTIONS)
        else:
            self.decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, options=OPTIONS,
                                              backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
        self.params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SRGB, apply_exif_orientation=False)

    def regions(self, encoded: EncodedBatch, transform: Transform) -> list[tuple[int, int, int, int]]:
        """Each sample's (x0, y0, x1, y1) to decode."""
        if isinstance(transform, ScaleJitter):
            return [transform.support(p.jitter[1], p.w, p.h) for p in encoded.plans]
        h, w = encoded.shape[:2]
        return [(p.window[1], p.window[0], p.window[1] + w, p.window[0] + h) for p in encoded.plans]

    def decode(self, encoded: EncodedBatch, transform: Transform) -> tuple[torch.Tensor, list[str | None]]:
        """N×H×W×3 uint8 on the device, and each sample's error (None: decoded)."""
        regions = self.regions(encoded, transform)
        sources = [nvimgcodec.CodeStream(p.data).get_sub_code_stream(region=nvimgcodec.Region(y0, x0, y1, x1))
                   for p, (x0, y0, x1, y1) in zip(encoded.plans, regions)]
        images = self.decoder.decode(sources, params=self.params)
        out = torch.zeros((len(encoded), *encoded.shape), dtype=torch.uint8, device=self.device)
        errors: list[str | None] = []
        for i, (plan, image, (x0, y0, _, _)) in enumerate(zip(encoded.plans, images, regions)):
            if image is None:
                errors.append("nvImageCodec cannot decode it (corrupt or unsupported JPEG)")
                continue
            # DLPack hands the decoder's CUDA stream over to torch's; the CPU backend's image is host memory
            cuda = self.device.type == "cuda"
            pixels = torch.from_dlpack(image) if cuda else torch.from_numpy(np.asarray(image.cpu()))
            if plan.jitter is not None:
                s, box, flip = plan.jitter
                pixels = resize_box(pixels, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0), encoded.shape[0])
            else:
                flip = plan.window[2]
            out[i] = pixels.flip(1) if flip else pixels
            errors.append(None)
        return out, errors
