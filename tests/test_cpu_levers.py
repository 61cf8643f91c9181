"""The CPU pipeline's levers: the uint8 hand-off (values, config), the scaled JPEG decode, the
shard-time downscale."""

import io
import json
import random
import re

import numpy as np
import pytest
import torch
from conftest import IMAGENET_MEAN, IMAGENET_STD, TINY, call_main, ok, train
from PIL import Image

from benchmarks import cpu_levers
from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.normalize import CPU_CHUNK_ELEMENTS, model_input, normalize_hwc
from pipeline.pil_decode import draft_reduction, resized_random_crop
from tools.shard_writer import ImageOptions, prepare_image
from tools.synthetic_images import render
from train import __main__ as trainer
from train.config import ConfigError, load_config

CPU = torch.device("cpu")


def cfg(shards, loader, output) -> DataConfig:
    return DataConfig(path=str(shards), loader=loader, batch_size=16, image_size=48, val_image_size=48,
                      num_threads=1, workers=0, shuffle_buffer=32, seed=3, output=output)


def within_one_ulp(a: np.ndarray, b: np.ndarray) -> bool:
    """float16 arrays equal to within one unit in the last place of the larger magnitude."""
    a, b = a.astype(np.float16), b.astype(np.float16)
    ulp = np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float64)
    return bool(np.all(np.abs(a.astype(np.float64) - b.astype(np.float64)) <= ulp))


@pytest.mark.parametrize("loader", ["dali", "baseline"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_uint8_hand_off_normalizes_to_the_float16_values(shards, loader, split):
    fp16, _ = next(build_loader(cfg(shards, loader, "float16"), split, 0, 1, CPU).epoch(0))
    raw, labels = next(build_loader(cfg(shards, loader, "uint8"), split, 0, 1, CPU).epoch(0))
    assert raw.dtype == torch.uint8 and raw.shape == fp16.shape == (16, 3, 48, 48)
    assert raw.is_contiguous(memory_format=torch.channels_last)
    assert raw.float().std() > 10  # 0..255 pixels, not normalized values cast to uint8
    # The same crops and flips (same seed), normalized independently in float64:
    expected = ((raw.numpy().transpose(0, 2, 3, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)
    assert within_one_ulp(fp16.numpy(), expected)
    on_device = model_input(raw)
    assert on_device.dtype == torch.float16 and on_device.is_contiguous(memory_format=torch.channels_last)
    assert within_one_ulp(on_device.numpy(), fp16.numpy())


def test_normalize_of_a_large_cpu_batch_is_the_same_in_chunks():
    raw = torch.randint(0, 256, (5, 300, 300, 3), dtype=torch.uint8)  # above CPU_CHUNK_ELEMENTS: chunked
    assert raw.numel() > CPU_CHUNK_ELEMENTS
    assert within_one_ulp(normalize_hwc(raw).numpy(), (raw.numpy() / 255 - IMAGENET_MEAN) / IMAGENET_STD)


def test_model_input_leaves_float16_alone_and_keeps_the_padding_zero():
    x = torch.randn(2, 3, 4, 4).half().to(memory_format=torch.channels_last)
    assert model_input(x) is x  # the model-only path gets its tensor untouched
    raw = torch.full((2, 4, 4, 4), 255, dtype=torch.uint8).to(memory_format=torch.channels_last)
    raw[:, 3] = 0  # the padding channel a 4-channel stem reads
    out = model_input(raw)
    assert out[:, 3].abs().max() == 0
    expected = torch.tensor((1 - IMAGENET_MEAN) / IMAGENET_STD, dtype=torch.float32)
    assert torch.allclose(out[0, :3, 0, 0].float(), expected, atol=2e-3)


@pytest.mark.parametrize("loader", ["dali", "baseline"])
def test_uint8_hand_off_pads_a_zero_fourth_channel(shards, loader):
    c = cfg(shards, loader, "uint8")
    c.pad_channels = True
    raw, _ = next(build_loader(c, "train", 0, 1, CPU).epoch(0))
    assert raw.shape == (16, 4, 48, 48) and raw.dtype == torch.uint8 and raw[:, 3].max() == 0
    assert model_input(raw)[:, 3].abs().max() == 0


def test_output_key_is_checked_in_one_line():
    with pytest.raises(ConfigError, match="data.output") as e:
        load_config(None, ["data.loader=synthetic", "data.output=bfloat16"])
    assert "\n" not in str(e.value) and "uint8" in str(e.value)
    r = call_main(trainer.main, ["data.loader=synthetic", "data.output=int8", "run_dir=out"])
    assert r.returncode == 2 and "data.output" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_trainer_trains_on_a_uint8_hand_off(shards, tmp_path):
    out = ok(train([*TINY, f"data.path={shards}", f"run_dir={tmp_path / 'u8'}", "train.epochs=1",
                    "data.output=uint8", "data.num_threads=1"]))
    assert "eval epoch 0" in out and "top-1" in out and not re.search(r"\bnan\b", out.lower())


# --- the scaled decode (PIL draft) ----------------------------------------------------------------

@pytest.mark.parametrize("crop_w, crop_h, size, reduction", [
    (500, 375, 224, 1),  # 375 < 2 x 224
    (500, 375, 160, 2),  # 375 >= 320
    (500, 375, 93, 4),  # 375 >= 4 x 93 = 372
    (300, 200, 100, 2),
    (300, 199, 100, 1),
    (1000, 960, 120, 8),
])
def test_draft_reduction_keeps_the_crop_at_output_resolution(crop_w, crop_h, size, reduction):
    assert draft_reduction(crop_w, crop_h, size) == reduction


@pytest.fixture(scope="module")
def photo() -> bytes:
    """An ImageNet-like 500 x 375 JPEG at quality 90."""
    buf = io.BytesIO()
    Image.fromarray(render(1, np.random.default_rng(5), 500, 375, True)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(255**2 / err)


def test_draft_leaves_crops_it_cannot_scale_unchanged(photo):
    for seed in range(10):  # at 224 px no crop of a 500 x 375 image is 448 px high
        a, b = (resized_random_crop(photo, 224, 0.08, random.Random(seed), draft=d) for d in (True, False))
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_draft_output_stays_close_to_the_full_decode(photo):
    scaled = 0
    for seed in range(10):
        a, b = (resized_random_crop(photo, 96, 0.5, random.Random(seed), draft=d) for d in (True, False))
        assert a.size == b.size == (96, 96)
        scaled += not np.array_equal(np.asarray(a), np.asarray(b))
        assert psnr(a, b) > 30
    assert scaled == 10  # every crop of half the image or more is >= 2 x 96 px: all were scaled


# --- shard-time downscale -------------------------------------------------------------------------

def test_max_side_downscales_keeping_the_aspect_ratio(photo):
    data, w, h, note = prepare_image(photo, ImageOptions(max_side=320, quality=85))
    assert (w, h) == (320, 240) and Image.open(io.BytesIO(data)).size == (320, 240) and "320" in note
    assert prepare_image(photo, ImageOptions(max_side=500))[0] == photo  # within the limit: the bytes as they were


# --- the measurement command ----------------------------------------------------------------------

def test_cpu_levers_bad_data_is_one_error_line(tmp_path):
    r = call_main(cpu_levers.main, ["--data", str(tmp_path / "missing")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert str(tmp_path / "missing") in r.stderr


@pytest.mark.slow
def test_cpu_levers_reports_every_figure(shards, tmp_path):
    out = tmp_path / "levers.json"
    r = call_main(cpu_levers.main, ["--data", str(shards), "--threads", "1", "--image-sizes", "40", "--batch-size",
                                    "8", "--warmup", "0", "--steps", "1", "--repeats", "1", "--psnr-images", "6",
                                    "--json", str(out)])
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())["sizes"]["40"]
    dali = fig["dali"]["1"]
    assert set(cpu_levers.dali_variants(40, 0.08)) == set(dali)
    figures = [*dali.values(), *fig["baseline_in_process"].values(), fig["normalize_on_cpu"]]
    assert all(v["img_per_s"] > 0 and v["img_per_cpu_s"] > 0 for v in figures)
    psnr = fig["psnr_db"]
    # An antialiased linear resize is the reference's own filter; nearest neighbour aliases.
    assert psnr["dali:linear+aa"] > 40 and psnr["dali:linear+aa"] > psnr["dali:nn"] + 5
    assert 0 <= fig["draft_share"]["min_area_0.08"] <= 1
