"""The sharding tool: labels, oddities, DALI-readable indexes, resume, --verify, bad input."""

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from conftest import digests, ok, run_python, started, tamper_index
from PIL import Image

from pipeline.shards import read_idx
from tools import shard_imagenet

TOOL = Path(shard_imagenet.__file__)  # run as a script, the way the README shows it


def read_split(out: Path, split: str) -> list[dict]:
    info = json.loads((out / "_info.json").read_text())
    urls = [str(out / f) for f in info["splits"][split]["filenames"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_labels_match_source_folders(synthetic, shards):
    info = json.loads((shards / "_info.json").read_text())
    assert info["classes"] == list(synthetic.wnids)
    samples = read_split(shards, "train")
    assert len(samples) == info["splits"]["train"]["num_samples"] == 10 * 20 + 3  # +3 repaired oddities
    for s in samples:
        meta = json.loads(s["json"])
        wnid = meta["filename"].split("_")[0]
        assert int(s["cls"]) == synthetic.wnids.index(wnid) and meta["wnid"] == wnid
        assert s["__key__"] == meta["filename"].rsplit(".", 1)[0]
        assert (meta["width"], meta["height"]) == Image.open(io.BytesIO(s["jpg"])).size


def test_val_labels_from_csv(synthetic, shards):
    samples = read_split(shards, "validation")
    assert [s["__key__"] for s in samples] == sorted(s["__key__"] for s in samples)  # file order
    for s in samples:
        i = int(s["__key__"].rsplit("_", 1)[1]) - 1
        assert int(s["cls"]) == synthetic.wnids.index(synthetic.val_wnids[i])


def test_oddities_reencoded_or_skipped(synthetic, shards):
    info = json.loads((shards / "_info.json").read_text())["splits"]["train"]
    kinds = {Path(p).name: k for p, k in synthetic.oddities}
    skipped = {x["file"]: x["reason"] for x in info["skipped"]}
    reencoded = {x["file"] for x in info["reencoded"]}
    by_name = {json.loads(s["json"])["filename"]: s for s in read_split(shards, "train")}
    for name, kind in kinds.items():
        if kind in ("truncated", "empty"):
            assert name in skipped and name not in by_name
            assert ("empty" if kind == "empty" else "truncated") in skipped[name]
        else:
            assert name in reencoded
            im = Image.open(io.BytesIO(by_name[name]["jpg"]))
            assert (im.format, im.mode) == ("JPEG", "RGB")


def test_shards_equal_sizes_and_manifest(shards):
    info = json.loads((shards / "_info.json").read_text())
    lengths = info["splits"]["train"]["shard_lengths"]
    skipped = len(info["splits"]["train"]["skipped"])
    assert len(lengths) == 6 and sum(lengths) + skipped == 205
    assert max(lengths) - min(lengths) <= 1 + skipped  # equal +-1, less the skipped files
    for split in info["splits"].values():
        for name, n, size in zip(split["filenames"], split["shard_lengths"], split["shard_bytes"]):
            assert len(read_idx((shards / name).with_suffix(".idx"))) == n
            assert (shards / name).stat().st_size == size


def test_index_matches_wds2idx_and_dali_reads_it(shards, tmp_path):
    from nvidia.dali import fn, pipeline_def

    info = json.loads((shards / "_info.json").read_text())["splits"]["train"]
    tars = [str(shards / f) for f in info["filenames"]]
    wds2idx = Path(sys.executable).parent / "wds2idx"
    subprocess.run([str(wds2idx), tars[0], str(tmp_path / "ref.idx")], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "ref.idx").read_text() == Path(tars[0]).with_suffix(".idx").read_text()

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def reader():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=[t[:-4] + ".idx" for t in tars],
                                         ext=["jpg", "cls"], name="r")
        return jpg, cls

    pipe = reader()
    pipe.build()
    assert pipe.reader_meta()["r"]["epoch_size"] == info["num_samples"]


def test_archives_give_the_same_shards(synthetic, shards, tmp_path):
    out = tmp_path / "from_archives"
    rc = shard_imagenet.main(["--src", str(synthetic.root / "archives"), "--out", str(out),
                              "--val-labels", str(synthetic.root / "LOC_val_solution.csv"),
                              "--samples-per-shard", "40", "--workers", "2"])
    assert rc == 0
    a, b = digests(shards), digests(out)
    a.pop("_info.json"), b.pop("_info.json")  # the manifest records the differing --src
    assert a == b


def test_rejects_path_traversal_in_archives(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    jpg = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(jpg, "JPEG")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        for name in ("n01_1.JPEG", "../../evil.JPEG"):
            ti = tarfile.TarInfo(name)
            ti.size = len(jpg.getvalue())
            t.addfile(ti, io.BytesIO(jpg.getvalue()))
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as t:
        ti = tarfile.TarInfo("n01.tar")
        ti.size = len(inner.getvalue())
        t.addfile(ti, io.BytesIO(inner.getvalue()))
    out = tmp_path / "out"
    assert shard_imagenet.main(["--src", str(src), "--out", str(out), "--splits", "train"]) == 0
    info = json.loads((out / "_info.json").read_text())["splits"]["train"]
    assert info["num_samples"] == 1
    assert any("evil" in x["file"] and "unsafe" in x["reason"] for x in info["skipped"])
    assert not (tmp_path / "evil.JPEG").exists() and not any(tmp_path.rglob("evil*"))


def test_kill_and_resume_is_byte_identical(synthetic, tmp_path):
    args = [TOOL, "--src", synthetic.root, "--samples-per-shard", 4, "--workers", 1]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert shard_imagenet.main([*map(str, args[1:]), "--out", str(ref)]) == 0  # the reference, in this process
    with started(*args, "--out", out) as proc:
        while len(list((out / ".shard_state").glob("*.tar.json"))) < 5 and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "_info.json").exists()  # killed mid-way
    ok(run_python(*args, "--out", out, timeout=120))
    assert digests(out) == digests(ref)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def test_seed_changes_train_order_only(synthetic, shards, tmp_path):
    out = tmp_path / "seed1"
    shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out), "--samples-per-shard", "40",
                         "--seed", "1", "--workers", "2"])
    keys = lambda d, s: [x["__key__"] for x in read_split(d, s)]
    assert keys(out, "train") != keys(shards, "train")
    assert sorted(keys(out, "train")) == sorted(keys(shards, "train"))
    assert keys(out, "validation") == keys(shards, "validation")


def test_multiple_of_and_max_side(synthetic, tmp_path):
    out = tmp_path / "k"
    assert shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out), "--samples-per-shard", "100",
                                "--shards-multiple-of", "4", "--max-side", "100", "--check", "header"]) == 0
    info = json.loads((out / "_info.json").read_text())["splits"]
    assert len(info["train"]["filenames"]) == 4 and len(info["validation"]["filenames"]) == 4
    for s in read_split(out, "train"):
        assert max(Image.open(io.BytesIO(s["jpg"])).size) <= 100


def test_header_check_catches_truncated(synthetic, tmp_path):
    out = tmp_path / "h"
    shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out), "--check", "header",
                         "--splits", "train"])
    skipped = json.loads((out / "_info.json").read_text())["splits"]["train"]["skipped"]
    kinds = dict((Path(p).name, k) for p, k in synthetic.oddities)
    assert sorted(kinds[x["file"]] for x in skipped) == ["empty", "truncated"]


def test_verify_catches_truncated_shard_and_tampered_index(shards, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    assert shard_imagenet.main(["--verify", "--out", str(bad)]) == 0
    tar = bad / "imagenet1k-train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    tamper_index(bad / "imagenet1k-train-000002.idx", sample=0)
    capsys.readouterr()
    assert shard_imagenet.main(["--verify", "--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "imagenet1k-train-000001.tar" in err and "truncated" in err
    assert "imagenet1k-train-000002.idx" in err and "does not match" in err


def _expect_usage_error(capsys, args, needle):
    assert shard_imagenet.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_bad_input_exits_2(synthetic, shards, tmp_path, capsys):
    out = tmp_path / "o"
    _expect_usage_error(capsys, ["--src", str(tmp_path / "nope"), "--out", str(out)], "nope")
    (tmp_path / "empty").mkdir()
    _expect_usage_error(capsys, ["--src", str(tmp_path / "empty"), "--out", str(out)], "empty")
    noimg = tmp_path / "noimg"
    (noimg / "train" / "n01").mkdir(parents=True)
    _expect_usage_error(capsys, ["--src", str(noimg), "--out", str(out), "--splits", "train"], "n01")
    flat = tmp_path / "flat"
    shutil.copytree(synthetic.root / "val", flat / "val")
    (flat / "labels.txt").write_text("something else\n")
    _expect_usage_error(capsys, ["--src", str(flat), "--out", str(out), "--splits", "val",
                                 "--val-labels", str(flat / "labels.txt")], "labels.txt")
    _expect_usage_error(capsys, ["--src", str(synthetic.root), "--out", str(shards), "--seed", "7"],
                        str(shards))
    assert not out.exists()  # nothing half-written


def test_val_labels_from_the_devkit(synthetic, shards, tmp_path):
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (ILSVRC2012_ID -> WNID; non-leaf synsets ignored) and
    the ground-truth IDs, one per val image in order; gives the same shards as the CSV."""
    sio = pytest.importorskip("scipy.io")
    import numpy as np

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    ids = {w: i + 1 for i, w in enumerate(reversed(synthetic.wnids))}  # IDs in another order than wnids
    rows = [(i, w, w, "", 0, np.zeros(0), 0, 20) for w, i in ids.items()]
    rows.append((1001, "n00000001", "a parent", "", 2, np.array([1, 2]), 1, 0))
    synsets = np.array(rows, dtype=[(f, object) for f in fields])
    buf = io.BytesIO()
    sio.savemat(buf, {"synsets": synsets})
    truth = "".join(f"{ids[w]}\n" for w in synthetic.val_wnids).encode()
    devkit = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as t:
        for name, data in (("ILSVRC2012_devkit_t12/data/meta.mat", buf.getvalue()),
                           ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    out = tmp_path / "devkit"
    assert shard_imagenet.main(["--src", str(synthetic.root), "--out", str(out), "--val-labels", str(devkit),
                                "--samples-per-shard", "40", "--workers", "2"]) == 0
    a, b = digests(shards), digests(out)
    a.pop("_info.json"), b.pop("_info.json")
    assert a == b
