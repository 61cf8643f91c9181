"""Where ImageNet images come from: the folder layout or the original archives, and val labels.

Every image becomes a `Sample` that names its bytes (a file, or an offset range inside an archive)
so shard workers read them directly: archives are read in place, never extracted to disk.
"""

from __future__ import annotations

import csv
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_CSV = "LOC_val_solution.csv"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # no '/', no leading '.', so no traversal


class SourceError(ValueError):
    """Unusable source data; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One image: `key` (file stem), `name` (original file name), class `wnid`, and where its
    bytes are: `path` alone for a file, or `path` + `offset` + `size` inside an archive."""

    key: str
    name: str
    wnid: str
    path: str
    offset: int = -1  # -1: the whole file at `path`
    size: int = -1

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_train_folder(root: Path) -> tuple[list[Sample], list[dict]]:
    """Samples of `root/<wnid>/*.JPEG`; returns (samples, problems)."""
    samples, problems = [], []
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise SourceError(f"{root}: no class folders")
    for d in class_dirs:
        files = sorted(f for f in d.iterdir() if f.is_file() and _is_image(f.name))
        if not files:
            raise SourceError(f"{d}: class folder has no images")
        samples += [Sample(_stem(f.name), f.name, d.name, str(f)) for f in files]
    return samples, problems


def _tar_members(tf: tarfile.TarFile, base: int, where: str, problems: list[dict]):
    """Regular members with safe plain names, as (name, absolute data offset, size)."""
    for ti in tf:
        if not ti.isreg():
            continue
        if not SAFE_NAME.match(ti.name):
            problems.append({"file": f"{where}:{ti.name}", "reason": "unsafe member name (not read)"})
            continue
        yield ti.name, base + ti.offset_data, ti.size


def list_train_archive(tar_path: Path) -> tuple[list[Sample], list[dict]]:
    """Samples of ILSVRC2012_img_train.tar (a tar of `<wnid>.tar`), indexed without extraction."""
    samples, problems = [], []
    with tarfile.open(tar_path, "r:") as outer:
        for name, off, _ in _tar_members(outer, 0, str(tar_path), problems):
            if not name.endswith(".tar"):
                continue
            wnid = name[: -len(".tar")]
            inner = tarfile.open(fileobj=outer.extractfile(name), mode="r:")
            found = [
                Sample(_stem(n), n, wnid, str(tar_path), o, s)
                for n, o, s in _tar_members(inner, off, f"{tar_path}:{name}", problems)
                if _is_image(n)
            ]
            if not found:
                raise SourceError(f"{tar_path}:{name}: class archive has no images")
            samples += sorted(found, key=lambda x: x.name)
    if not samples:
        raise SourceError(f"{tar_path}: no class archives inside")
    return samples, problems


def list_val_flat(names_and_refs: list[tuple[str, str, int, int]], labels: dict[str, str], where: str):
    """Flat val images + a {stem: wnid} map -> samples; a missing label is an error naming the file."""
    missing = [n for n, *_ in names_and_refs if _stem(n) not in labels]
    if missing:
        raise SourceError(f"{where}: {len(missing)} val images have no label, first {missing[0]}")
    return [Sample(_stem(n), n, labels[_stem(n)], p, o, s) for n, p, o, s in names_and_refs]


def list_val(src: Path, val_labels: Path | None) -> tuple[list[Sample], list[dict]]:
    """Validation samples from `src/val` (class folders or flat) or `src/ILSVRC2012_img_val.tar`."""
    val_dir, val_tar = src / "val", src / VAL_TAR
    problems: list[dict] = []
    if val_dir.is_dir() and any(d.is_dir() for d in val_dir.iterdir()):
        return list_train_folder(val_dir)
    if val_dir.is_dir():
        refs = [(f.name, str(f), -1, -1) for f in sorted(val_dir.iterdir()) if _is_image(f.name)]
        where = str(val_dir)
    elif val_tar.is_file():
        with tarfile.open(val_tar, "r:") as tf:
            refs = [(n, str(val_tar), o, s) for n, o, s in _tar_members(tf, 0, str(val_tar), problems)]
        refs = sorted(r for r in refs if _is_image(r[0]))
        where = str(val_tar)
    else:
        raise SourceError(f"{src}: neither val/ nor {VAL_TAR}")
    if not refs:
        raise SourceError(f"{where}: no validation images")
    labels = read_val_labels(val_labels or _find_labels(src))
    return list_val_flat(refs, labels, where), problems


def _find_labels(src: Path) -> Path:
    for name in (VAL_CSV, DEVKIT):
        if (src / name).exists():
            return src / name
    raise SourceError(f"{src}: flat val images need --val-labels ({VAL_CSV} or {DEVKIT})")


def read_val_labels(path: Path) -> dict[str, str]:
    """{image stem: wnid} from LOC_val_solution.csv or the ILSVRC2012 devkit tar.gz."""
    if not path.is_file():
        raise SourceError(f"{path}: val label file does not exist")
    if path.name.endswith((".tar.gz", ".tgz")):
        return _read_devkit(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        raise SourceError(f"{path}: unknown val label format (want {VAL_CSV} or {DEVKIT})")
    return {r[0]: r[1].split()[0] for r in rows[1:] if len(r) >= 2 and r[1].strip()}


def _read_devkit(path: Path) -> dict[str, str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise SourceError(f"{path}: reading the devkit needs scipy (pip install firehose[devkit])") from None
    with tarfile.open(path, "r:gz") as tf:
        names = {Path(m.name).name: m for m in tf if m.isreg()}
        if "meta.mat" not in names or "ILSVRC2012_validation_ground_truth.txt" not in names:
            raise SourceError(f"{path}: devkit lacks meta.mat or the validation ground truth")
        meta = loadmat(io.BytesIO(tf.extractfile(names["meta.mat"]).read()), squeeze_me=True)["synsets"]
        gt = tf.extractfile(names["ILSVRC2012_validation_ground_truth.txt"]).read().split()
    id_to_wnid = {int(s[0]): str(s[1]) for s in meta if int(s[4]) == 0}  # num_children 0: the 1000 leaves
    return {f"ILSVRC2012_val_{i:08d}": id_to_wnid[int(g)] for i, g in enumerate(gt, start=1)}


def list_split(src: Path, split: str, val_labels: Path | None) -> tuple[list[Sample], list[dict]]:
    """(samples, problems) for `train` or `validation` from folders, else from archives."""
    if split == "train":
        if (src / "train").is_dir():
            return list_train_folder(src / "train")
        if (src / TRAIN_TAR).is_file():
            return list_train_archive(src / TRAIN_TAR)
        raise SourceError(f"{src}: neither train/ nor {TRAIN_TAR}")
    return list_val(src, val_labels)
