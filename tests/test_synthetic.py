"""Tests for tools/make_synthetic_imagenet.py: layout, labels, determinism, oddities, archives."""
import csv
import hashlib
import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, run_python
from PIL import Image

from tools import make_synthetic_imagenet as msi
from tools.synthetic_images import ImageSpec

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# 4 classes x 16 train + 4 x 2 val = 72 images: enough that the worker pool is used.
SMALL = dict(classes=4, train_per_class=16, val_per_class=2)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by path relative to root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """One dataset with every option on, shared by the read-only tests."""
    return msi.make_dataset(tmp_path_factory.mktemp("a") / "out",
                            msi.DatasetSpec(seed=0, oddities=True, archives=True, **SMALL), workers=2)


def test_deterministic_and_oddities_do_not_change_normal_files(ds, tmp_path):
    same = msi.make_dataset(tmp_path / "same", msi.DatasetSpec(seed=0, oddities=True, archives=True, **SMALL),
                            workers=1)
    assert tree_hashes(same.root) == tree_hashes(ds.root)
    plain = tree_hashes(msi.make_dataset(tmp_path / "plain", msi.DatasetSpec(seed=0, **SMALL), workers=2).root)
    full = tree_hashes(ds.root)
    extra = {rel for rel, _ in ds.oddities} | {t.relative_to(ds.root).as_posix() for t in ds.archives}
    assert set(full) - set(plain) == extra
    assert all(full[rel] == h for rel, h in plain.items())
    other = tree_hashes(msi.make_dataset(tmp_path / "other", msi.DatasetSpec(seed=1, **SMALL), workers=2).root)
    images = [rel for rel in plain if rel.endswith(".JPEG")]
    assert sum(plain[rel] != other[rel] for rel in images) == len(images)


def test_layout_and_counts(ds):
    root = ds.root
    assert list(ds.wnids) == sorted(ds.wnids) and len(ds.wnids) == 4
    assert all(re.fullmatch(r"n\d{8}", w) for w in ds.wnids)
    assert sorted(p.name for p in (root / "train").iterdir()) == list(ds.wnids)
    odd = {rel for rel, _ in ds.oddities}
    for wnid in ds.wnids:
        files = list((root / "train" / wnid).iterdir())
        assert all(re.fullmatch(rf"{wnid}_\d+\.JPEG", p.name) for p in files)
        normal = [p for p in files if p.relative_to(root).as_posix() not in odd]
        assert len(normal) == 16
    assert ds.n_train == 64 and ds.n_val == 8
    assert sorted(p.name for p in (root / "val").iterdir()) == [
        f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 9)]
    mapping = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in mapping] == list(ds.wnids)
    assert not list(root.parent.glob("*.partial-*"))


def test_val_csv_lists_every_val_image_once(ds):
    with open(ds.root / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"]
    ids = [r[0] for r in rows[1:]]
    assert sorted(ids) == sorted(p.stem for p in (ds.root / "val").iterdir())
    assert len(ids) == len(set(ids)) == ds.n_val
    for image_id, pred in rows[1:]:
        wnid, *box = pred.split()
        assert wnid in ds.wnids and wnid == ds.val_wnids[int(image_id[-8:]) - 1]
        width, height = Image.open(ds.root / "val" / f"{image_id}.JPEG").size
        assert [int(x) for x in box] == [0, 0, width - 1, height - 1]
    assert sorted(set(ds.val_wnids)) == list(ds.wnids)


def test_val_folders_layout_matches_labels(tmp_path):
    out = msi.make_dataset(tmp_path / "f", msi.DatasetSpec(classes=3, train_per_class=1, val_per_class=2,
                                                           val_layout="folders"), workers=1)
    for k, wnid in enumerate(out.val_wnids, start=1):
        assert (out.root / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG").is_file()
    assert len(list((out.root / "val").rglob("*.JPEG"))) == 6


def test_images_are_rgb_jpegs_of_varied_size(ds):
    odd = {rel for rel, _ in ds.oddities}
    sizes = set()
    for p in sorted(ds.root.glob("*/**/*.JPEG")):
        if p.relative_to(ds.root).as_posix() in odd:
            continue
        with Image.open(p) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB"), p
            im.load()
            sizes.add(im.size)
            assert 120 <= min(im.size) and max(im.size) <= 640
    assert len(sizes) > 20


def test_oddities_are_what_they_claim(ds):
    assert [kind for _, kind in ds.oddities] == list(msi.ODDITY_KINDS)
    assert list(ds.oddities) == msi.oddity_paths(list(ds.wnids), 16)
    for rel, kind in ds.oddities:
        path = ds.root / rel
        assert re.fullmatch(r"train/(n\d{8})/\1_\d+\.JPEG", rel)
        data = path.read_bytes()
        if kind == "empty":
            assert data == b""
        elif kind == "png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
        elif kind == "truncated":
            assert data.startswith(b"\xff\xd8")
            with pytest.raises(OSError), Image.open(path) as im:
                im.load()
        else:
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == {"cmyk": "CMYK", "gray": "L"}[kind]


def test_archives_hold_the_folder_bytes(ds):
    train_tar, val_tar = ds.archives
    assert train_tar.name == "ILSVRC2012_img_train.tar" and val_tar.name == "ILSVRC2012_img_val.tar"
    with tarfile.open(train_tar) as outer:
        assert outer.getnames() == [f"{w}.tar" for w in ds.wnids]
        for member in outer.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (0, 0, 0, "", 0o644)
            wnid = member.name[:-4]
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read())) as inner:
                names = inner.getnames()
                assert names == sorted(p.name for p in (ds.root / "train" / wnid).iterdir())
                for name in names:
                    assert inner.extractfile(name).read() == (ds.root / "train" / wnid / name).read_bytes()
    with tarfile.open(val_tar) as tar:
        assert tar.getnames() == sorted(p.name for p in (ds.root / "val").iterdir())
        for m in tar.getmembers():
            assert tar.extractfile(m).read() == (ds.root / "val" / m.name).read_bytes()


def test_class_colour_statistics_differ(ds):
    # Mean RGB per image; classes should sit apart and a nearest-mean rule beat chance.
    def mean_rgb(path):
        return np.asarray(Image.open(path).convert("RGB").resize((32, 32)), np.float32).mean((0, 1))

    feats = {w: np.array([mean_rgb(ds.root / "train" / w / f"{w}_{i}.JPEG") for i in range(16)])
             for w in ds.wnids}
    means = np.stack([f.mean(0) for f in feats.values()])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(means), 1)]
    assert dists.min() > 5.0, dists
    correct = sum(int(np.argmin(np.linalg.norm(means - x, axis=1)) == c)
                  for c, f in enumerate(feats.values()) for x in f)
    assert correct / sum(len(f) for f in feats.values()) > 0.5  # chance is 0.25


def test_realistic_sizes_like_imagenet(tmp_path):
    out = msi.make_dataset(tmp_path / "r", msi.DatasetSpec(classes=4, train_per_class=3, val_per_class=0,
                                                           images=ImageSpec(realistic=True)), workers=1)
    files = sorted((out.root / "train").rglob("*.JPEG"))
    assert len(files) == 12
    assert 80_000 <= np.mean([p.stat().st_size for p in files]) <= 140_000
    dims = [Image.open(p).size for p in files]
    assert all(400 <= max(d) <= 500 and min(d) >= 250 for d in dims)
    assert sum(sorted(d) == [375, 500] for d in dims) >= 6


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["--out", str(out), "--classes", "2", "--train-per-class", "1", "--val-per-class", "1"]
    assert msi.main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").exists()
    assert msi.main([*args, "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "LOC_val_solution.csv").is_file()


def test_cli_bad_quality_range_exits_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        msi.main(["--out", str(tmp_path / "q"), "--quality-range", "90"])
    assert e.value.code == 2
    assert msi.main(["--out", str(tmp_path / "q"), "--quality-range", "95,70"]) == 2


def test_runs_as_a_script(tmp_path):
    out = tmp_path / "s"
    own_path = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # the caller's, not the project's: the install finds it
    stdout = ok(run_python(TOOLS / "make_synthetic_imagenet.py", "--out", out, "--classes", 2, "--train-per-class", 2,
                           "--val-per-class", 1, "--workers", 1, env=own_path, timeout=120))
    assert "wrote 4 train + 2 val images" in stdout
    assert len(list(out.rglob("*.JPEG"))) == 6
