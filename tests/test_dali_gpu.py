"""DALI's `mixed` decoder on a GPU (skipped without one): it decodes what the CPU decoder does,
within a stated tolerance, with and without the hardware JPEG decoder, and a training epoch
stopped mid-way resumes from its saved position with the same batches."""

import math

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types

from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.shards import load_split

# nvJPEG (and the hardware decoder) and libjpeg-turbo use different IDCTs and chroma upsampling:
# the same crop differs by a little everywhere, never by much on average.
MEAN_ABS_MAX = 2.0  # of 255
PSNR_MIN_DB = 30.0
CROP = dict(crop_pos_x=0.25, crop_pos_y=0.2, crop_w=40, crop_h=36)  # px; every test image is >= 80 px a side


def decoded_crops(shards, device: str, hw_decoder_load: float) -> list[np.ndarray]:
    split = load_split(shards, "train")

    @pipeline_def(batch_size=16, num_threads=2, device_id=0, seed=1)
    def pipe():
        jpg = fn.readers.webdataset(paths=[str(f) for f in split.files], ext=["jpg"], random_shuffle=False)
        extra = {"hw_decoder_load": hw_decoder_load} if device == "mixed" else {}
        return fn.decoders.image_crop(jpg, device=device, output_type=types.RGB, **CROP, **extra)

    p = pipe()
    p.build()
    (images,) = p.run()
    images = images.as_cpu() if device == "mixed" else images
    return [np.array(images[i]) for i in range(len(images))]


@pytest.mark.gpu
@pytest.mark.parametrize("hw_decoder_load", [0.0, 1.0], ids=["hw_decoder_load_0", "hw_decoder_load_1"])
def test_dali_mixed_decode_matches_cpu_decode_of_the_same_crops(shards, hw_decoder_load):
    gpu, cpu = decoded_crops(shards, "mixed", hw_decoder_load), decoded_crops(shards, "cpu", 0.0)
    assert [a.shape for a in gpu] == [b.shape for b in cpu] == [(36, 40, 3)] * 16
    for a, b in zip(gpu, cpu):
        diff = a.astype(np.float64) - b.astype(np.float64)
        mse = float((diff**2).mean())
        assert np.abs(diff).mean() <= MEAN_ABS_MAX
        assert mse == 0 or 10 * math.log10(255**2 / mse) >= PSNR_MIN_DB


@pytest.mark.gpu
def test_dali_mixed_resumes_mid_epoch_with_the_same_batches(shards):
    cfg = DataConfig(path=str(shards), loader="dali", batch_size=16, image_size=48, num_threads=2,
                     shuffle_buffer=32)
    dev = torch.device("cuda", 0)
    loader = build_loader(cfg, "train", 0, 1, dev)
    batches = loader.epoch(1)
    for _ in range(3):
        next(batches)
    position = loader.position()
    rest = [(x.float().cpu(), y.cpu()) for x, y in batches]
    resumed = build_loader(cfg, "train", 0, 1, dev)
    again = [(x.float().cpu(), y.cpu()) for x, y in resumed.epoch(1, skip=3, position=position)]
    assert len(again) == len(rest) > 0
    for (xa, ya), (xb, yb) in zip(again, rest):
        assert torch.equal(ya, yb)
        assert (xa - xb).abs().max() == 0  # the same decoder on the same bytes and crops
