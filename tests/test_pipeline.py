"""The loaders: output format, labels, rank splits, exact validation counts, determinism, bad input;
the benchmarks' pipelines cut short from them."""

import io
import json
import os
import shutil
import signal

import pytest
import torch
from conftest import BAD, GOOD, drain, jpeg_bytes, make_shard, run_python, shard_labels, tamper_index, truncate
from PIL import Image

from benchmarks.cpu_time import descendants
from benchmarks.stages import dali_stage
from pipeline import baseline, dali_graph
from pipeline.augment import ASPECT_RANGE
from pipeline.base import epoch_seed
from pipeline.config import DataConfig
from pipeline.loader import build_loader
from pipeline.normalize import model_input
from pipeline.shards import ShardError, idx_path, load_split, scan_tar
from pipeline.share import ReaderInputs

CPU = torch.device("cpu")
LOADERS = ["dali", "baseline"]


def cfg(shards, loader="dali", **kw) -> DataConfig:
    base = dict(path=str(shards), loader=loader, batch_size=16, image_size=48, val_image_size=48,
                num_threads=2, workers=2, shuffle_buffer=32)
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_format(shards, loader, split):
    it = build_loader(cfg(shards, loader), split, 0, 1, CPU).epoch(0)
    images, labels = next(it)
    assert images.shape == (16, 3, 48, 48) and images.dtype == torch.uint8  # data.output's default
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.shape == (16,) and 0 <= labels.min() and labels.max() < 10
    x = model_input(images)
    assert x.dtype == torch.float16 and x.is_contiguous(memory_format=torch.channels_last)
    assert -3 < x.float().mean() < 3 and 0.2 < x.float().std() < 2  # normalized, not 0..255


@pytest.mark.parametrize("loader", LOADERS)
def test_pad_channels_gives_a_zero_fourth_channel(shards, loader):
    images, _ = next(build_loader(cfg(shards, loader, pad_channels=True), "val", 0, 1, CPU).epoch(0))
    assert images.shape == (16, 4, 48, 48) and images.is_contiguous(memory_format=torch.channels_last)
    assert images[:, 3].abs().max() == 0 and images[:, :3].abs().max() > 0


def test_dali_output_is_the_dali_buffer_not_a_copy(shards):
    loader = build_loader(cfg(shards), "val", 0, 1, CPU)
    pipe = loader.build(0, 48)
    outputs = pipe.run()
    images, labels = loader._to_torch(*outputs)
    t = outputs[0].as_tensor()
    assert images.data_ptr() == t.data_ptr() and images.is_contiguous(memory_format=torch.channels_last)
    assert images.shape == (16, 3, 48, 48) and labels.tolist() == shard_labels(shards, "validation")[:16]


@pytest.mark.parametrize("loader", LOADERS)
def test_val_labels_equal_shard_cls_in_order(shards, loader):
    got = torch.cat([y for _, y in build_loader(cfg(shards, loader, workers=1), "val", 0, 1, CPU).epoch(0)])
    assert got.tolist() == shard_labels(shards, "validation")


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_val_counts_every_image_once(shards, loader, world):
    n = load_split(shards, "validation").num_samples
    assert n % (world * 16) != 0  # the case that padding would get wrong
    counts = []
    for rank in range(world):
        v = build_loader(cfg(shards, loader), "val", rank, world, CPU)
        batches = [len(y) for _, y in v.epoch(0)]
        assert len(batches) == len(v) and sum(batches) == v.num_samples
        counts.append(sum(batches))
    assert sum(counts) == n


def test_ranks_read_disjoint_samples_covering_the_dataset(shards):
    split = load_split(shards, "train")
    keys = []
    for rank in range(2):
        loader = build_loader(cfg(shards, batch_size=1), "train", rank, 2, CPU)
        with loader.rank_share(0) as inputs:
            pipe = dali_graph.build_pipeline(loader.cfg, inputs, None, 0, [], False, 1)
        keys.append({bytes(pipe.run()[2].as_array()[0]).decode() for _ in range(loader.num_samples)})
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == split.num_samples
    lens = {len(build_loader(cfg(shards, loader), "train", r, 2, CPU)) for r in range(2) for loader in LOADERS}
    assert lens == {split.num_samples // 2 // 16}


def sources(outputs) -> list[bytes]:
    """Each sample's 'shard.tar:offset:name' in a DALI batch."""
    return [bytes(outputs[2].at(i)) for i in range(len(outputs[2]))]


@pytest.mark.parametrize("world", [3, 4])
def test_a_rank_parses_only_its_shards_and_reads_what_dali_sharding_reads(shards, world):
    """Each rank's pipeline gets only the shards holding its samples (whole, or through an index
    trimmed to its samples), and yields what DALI's own sample sharding over every shard yields."""
    split = load_split(shards, "train")
    for rank in range(world):
        loader = build_loader(cfg(shards, shuffle_buffer=8), "train", rank, world, CPU)
        files = loader.epoch_files(1)[0]
        seed = 1234 + rank
        with loader.rank_share(1) as inputs:
            mine = dali_graph.build_pipeline(loader.cfg, inputs, None, seed, [], True, 1)
            assert inputs.num_shards == 1 and inputs.paths == loader.rank_files(1)
            assert len(inputs.paths) < len(split.files)
        everything = ReaderInputs(files, [str(idx_path(f)) for f in files], rank, world)
        theirs = dali_graph.build_pipeline(loader.cfg, everything, None, seed, [], True, 1)
        assert mine.reader_meta("reader")["epoch_size"] == loader.num_samples
        for _ in range(len(loader) + 1):  # past the end of the share: the reader wraps the same way
            a, b = mine.run(), theirs.run()
            assert sources(a) == sources(b) and sources(a)


def test_dali_is_deterministic_per_seed_and_epoch(shards):
    def first(seed, epoch):
        return next(build_loader(cfg(shards, seed=seed), "train", 0, 1, CPU).epoch(epoch))
    a, b = first(0, 0), first(0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], first(0, 1)[0]) and not torch.equal(a[0], first(1, 0)[0])


@pytest.mark.parametrize("loader", LOADERS)
def test_crop_size_changes_between_epochs(shards, loader):
    train = build_loader(cfg(shards, loader), "train", 0, 1, CPU, size_at=lambda epoch: 48 if epoch == 0 else 32)
    assert next(train.epoch(0))[0].shape[-1] == 48
    assert next(train.epoch(1))[0].shape[-2:] == (32, 32)


def test_shards_without_index_and_timm_layout(shards, tmp_path):
    timm = tmp_path / "timm"
    timm.mkdir()
    for f in shards.glob("*.tar"):
        shutil.copy(f, timm / f.name)  # no .idx, no _info.json: found by name, classes from config
    train = build_loader(cfg(timm), "train", 0, 1, CPU, num_classes=10)
    assert len(train) == load_split(shards, "train").num_samples // 16
    got = torch.cat([y for _, y in build_loader(cfg(timm), "val", 0, 1, CPU, num_classes=10).epoch(0)])
    assert got.tolist() == shard_labels(shards, "validation")
    with pytest.raises(ValueError, match="no class list"):
        build_loader(cfg(timm), "train", 0, 1, CPU)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sample_names_shard_and_key(tmp_path, loader, case):
    files, needle = BAD[case]
    out = make_shard(tmp_path / "d", GOOD[:3] + [("kbad", files)] + GOOD[3:])
    with pytest.raises(ShardError, match=needle) as e:
        drain(build_loader(cfg(out, loader, batch_size=4, workers=1), "train", 0, 1, CPU))
    assert "x-train-000000" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("index", [True, False])
@pytest.mark.parametrize("cut", ["inside a member", "on a header boundary"])
def test_truncated_shard_is_named(tmp_path, loader, index, cut):
    out = make_shard(tmp_path / "d", GOOD, index=index)
    tar = out / "x-train-000000.tar"
    fourth = scan_tar(tar)[6]  # the 4th sample's jpg: two members (jpg, cls) per sample
    truncate(tar, fourth.offset + 100 if cut == "inside a member" else fourth.offset - 512)
    with pytest.raises(ShardError, match=r"x-train-000000.tar: (truncated|holds 3 samples)") as e:
        drain(build_loader(cfg(out, loader, batch_size=4, workers=1), "train", 0, 1, CPU))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_tampered_index_is_named(tmp_path, loader):
    out = make_shard(tmp_path / "d", GOOD)
    tamper_index(out / "x-train-000000.idx", sample=1)
    with pytest.raises(ShardError, match="x-train-000000.idx: sample k1 does not match"):
        drain(build_loader(cfg(out, loader, batch_size=4, workers=1), "train", 0, 1, CPU))


def test_baseline_checks_each_shard_once_and_keeps_its_workers(shards, monkeypatch):
    """The shard check (tar headers against the index, count against the manifest) runs once per
    shard for the loader's life, in the training process, not once per epoch; the DataLoader
    workers started for epoch 0 are the ones that read epoch 1."""
    calls = []
    real = baseline.check_index
    monkeypatch.setattr(baseline, "check_index", lambda tar, n: calls.append(tar) or real(tar, n))
    loader = build_loader(cfg(shards, "baseline", workers=2), "train", 0, 1, CPU)
    before = set(descendants(os.getpid()))
    during = []
    for epoch in range(2):
        batches = loader.epoch(epoch)
        next(batches)
        during.append(set(descendants(os.getpid())))
        for _ in batches:
            pass
    assert sorted(calls) == sorted(str(f) for f in load_split(shards, "train").files)  # each shard once
    assert len(during[0] - before) >= 2  # the two workers (and the forkserver, if it started here)
    assert during[1] <= during[0]  # no process started for epoch 1


def parent(pid: int) -> int:
    """The parent pid of `pid`, from /proc/PID/stat (the field after the state)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_baseline_workers_outlive_the_signals_that_stop_a_run(shards):
    """The stop requests that reach every process (SLURM's USR1 notice, a terminal's Ctrl-C) are
    the training process's: the workers ignore them, and the epoch reads to its end."""
    loader = build_loader(cfg(shards, "baseline", workers=2), "train", 0, 1, CPU)
    before = set(descendants(os.getpid()))
    batches = loader.epoch(0)
    assert len(loader) > 2
    labels = [next(batches)[1], next(batches)[1]]  # one batch from each worker: both have started
    # the workers, not the forkserver they were forked from (a child of this process)
    workers = {pid for pid in set(descendants(os.getpid())) - before if parent(pid) != os.getpid()}
    assert len(workers) == 2
    for pid in workers:
        for signum in (signal.SIGUSR1, signal.SIGINT):
            os.kill(pid, signum)
    labels += [y for _, y in batches]
    assert sum(map(len, labels)) == len(loader) * loader.batch_size
    assert workers <= set(descendants(os.getpid()))  # every worker still alive


def test_baseline_does_not_recheck_a_shard_in_later_epochs(tmp_path):
    """An index tampered with after epoch 0 goes unnoticed by epoch 1 of the same loader, whose
    workers read the same tar: no per-epoch integrity pass in any process. A new loader names it."""
    out = make_shard(tmp_path / "d", GOOD)
    loader = build_loader(cfg(out, "baseline", batch_size=4, workers=2), "train", 0, 1, CPU)
    drain(loader)
    tamper_index(out / "x-train-000000.idx", sample=1)
    assert sum(len(y) for _, y in loader.epoch(1)) == len(GOOD)
    with pytest.raises(ShardError, match="x-train-000000.idx: sample k1 does not match"):
        drain(build_loader(cfg(out, "baseline", batch_size=4, workers=2), "train", 0, 1, CPU))


def test_shards_without_jpg_or_cls(tmp_path):
    out = make_shard(tmp_path / "d", [(f"k{i}", [("png", jpeg_bytes()), ("txt", b"1")]) for i in range(8)])
    with pytest.raises(ShardError, match="k0 has no jpg"):
        build_loader(cfg(out, batch_size=4), "train", 0, 1, CPU)


def test_missing_paths_and_bad_config(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="nope"):
        build_loader(cfg(tmp_path / "nope"), "train", 0, 1, CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no shards"):
        build_loader(cfg(tmp_path / "empty"), "train", 0, 1, CPU)
    with pytest.raises(ValueError, match="data.batch_size"):
        build_loader(cfg(shards, batch_size=500), "train", 0, 1, CPU)
    with pytest.raises(ValueError, match="ranks but only"):
        build_loader(cfg(shards), "val", 0, 51, CPU)
    with pytest.raises(ValueError, match="data.loader"):
        build_loader(cfg(shards, loader="fast"), "train", 0, 1, CPU)


@pytest.mark.gpu
def test_dali_gpu_batch_is_on_the_gpu(shards):
    dev = torch.device("cuda", 0)
    images, labels = next(build_loader(cfg(shards), "train", 0, 1, dev).epoch(0))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert model_input(images).is_cuda and model_input(images).dtype == torch.float16
    cpu_images, _ = next(build_loader(cfg(shards), "val", 0, 1, CPU).epoch(0))
    gpu_images, _ = next(build_loader(cfg(shards), "val", 0, 1, dev).epoch(0))
    gpu, cpu = model_input(gpu_images).float().cpu(), model_input(cpu_images).float()
    assert (gpu - cpu).abs().mean() < 0.1  # same pipeline, two decoders


# --- the benchmarks' pipelines, cut short from the loaders -------------------------------------

def test_decode_stage_decodes_the_training_crop(shards):
    """The DALI benchmark's decode stage decodes what training decodes: the random crop of the
    train graph's first stage (here with min_area 0.5), not the whole image."""
    loader = build_loader(cfg(shards, batch_size=32, min_area=0.5), "train", 0, 1, CPU)
    images, _, src = next(dali_stage(loader, "decode")[0])

    def same_seed(stage):
        with loader.rank_share(0) as inputs:
            pipe = dali_graph.build_pipeline(loader.cfg, inputs, None, epoch_seed(loader.cfg.seed, 0), [stage], True, 2)
        return pipe.run()
    crop = same_seed(dali_graph.decode_random_crop(dali_graph.Decoder(None), 0.5))
    whole = same_seed(dali_graph.decode(dali_graph.Decoder(None)))
    assert sources(crop) == sources(whole) == [bytes(src.at(i)) for i in range(len(src))]  # the same samples
    assert images.shape() == crop[0].shape() != whole[0].shape()
    for (h, w, _), (full_h, full_w, _) in zip(images.shape(), whole[0].shape()):
        # RandomResizedCrop's contract, against the whole image: area in [0.5, 1], aspect ratio in
        # ASPECT_RANGE, both within the rounding of the crop's sides to whole pixels
        tolerance = 2 / min(h, w)
        assert h <= full_h and w <= full_w and h * w / (full_h * full_w) >= 0.5 * (1 - tolerance)
        assert ASPECT_RANGE[0] * (1 - tolerance) <= w / h <= ASPECT_RANGE[1] * (1 + tolerance)


def test_read_stage_yields_the_encoded_bytes(shards):
    loader = build_loader(cfg(shards, batch_size=4), "train", 0, 1, CPU)
    batches, count, nbytes = dali_stage(loader, "read")
    batch = next(batches)
    jpgs = [bytes(batch[0].at(i)) for i in range(count(batch))]
    for jpg in jpgs:
        Image.open(io.BytesIO(jpg)).verify()  # a whole JPEG, undecoded
    assert len(jpgs) == 4 and nbytes(batch) == sum(map(len, jpgs))


# The baseline's stages with DALI unimportable, as on a machine with torch + webdataset only.
WITHOUT_DALI = """
import sys
sys.modules["nvidia.dali"] = None  # `import nvidia.dali` (and any of its modules) now raises ImportError
import benchmarks.suite
from benchmarks import pipeline_bench
assert pipeline_bench.main(sys.argv[1:]) == 0
assert [m for m, v in sys.modules.items() if m.startswith("nvidia.dali") and v is not None] == []
"""


def test_baseline_benchmarks_run_without_dali(shards, tmp_path):
    out = tmp_path / "p.json"
    args = ["--data", str(shards), "--device", "cpu", "--loaders", "baseline", "--json", str(out), "--batch-size",
            "8", "--image-size", "32", "--warmup", "1", "--steps", "1", "--repeats", "1", "--threads", "1"]
    r = run_python("-c", WITHOUT_DALI, *args, timeout=180, threads=None)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["loaders"]) == {"baseline"}
    assert set(result["loaders"]["baseline"]["threads"]["1"]) == {"read", "decode", "train"}
    assert result["provenance"]["dali"] is None
