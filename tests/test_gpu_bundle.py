"""tools/gpu_bundle.py on small made-up wheels: what a bundle keeps, its parts and checksums,
receive and install (idempotent, refusing missing or damaged parts, leaving nothing
half-written), and the ELF dependency check on libraries built here byte by byte."""

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools import gpu_bundle

PART_MIB = 16 / 1024  # 16 KiB parts: the payload below makes four or five of them
# One wheel as pip would download it: name -> bytes. The big file is random, so xz cannot
# shrink it and the archive needs several parts.
WHEEL = {
    "nvidia/__init__.py": b"__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n",
    "nvidia/fake/__init__.py": b"VERSION = '1.0'\n",
    "nvidia/fake/libbig.so.1": random.Random(0).randbytes(70_000),
    "nvidia/fake/include/fake.h": b"int fake(void);\n",
    "nvidia/fake/lib/libfake_static.a": b"!<arch>\n",
    "nvidia/fake/_impl.cpython-311-x86_64-linux-gnu.so": b"built for 3.11",
    "nvidia/fake/_impl.cpython-312-x86_64-linux-gnu.so": b"built for 3.12",
    "nvidia/fake/__pycache__/x.cpython-311.pyc": b"cache",
    "nvidia_fake-1.0.dist-info/METADATA": b"Name: nvidia-fake\nVersion: 1.0\n",
    "nvidia_fake-1.0.data/scripts/fake-tool": b"#!/bin/sh\n",
}
KEPT_312 = {"nvidia/fake/__init__.py", "nvidia/fake/libbig.so.1",
            "nvidia/fake/_impl.cpython-312-x86_64-linux-gnu.so", "nvidia_fake-1.0.dist-info/METADATA"}


@pytest.fixture()
def wheels(tmp_path):
    d = tmp_path / "wheels"
    d.mkdir()
    with zipfile.ZipFile(d / "nvidia_fake-1.0-py3-none-any.whl", "w") as zf:
        for name, data in WHEEL.items():
            zf.writestr(name, data)
    with zipfile.ZipFile(d / "tiny-2.0-py3-none-any.whl", "w") as zf:
        zf.writestr("tiny.py", b"X = 2\n")
    return d


def run(argv, capsys):
    """(exit status, stdout, stderr) of main(argv)."""
    status = gpu_bundle.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def build(wheels, out, capsys, python="3.12"):
    status, _, err = run(["build", "--python", python, "--wheels", wheels, "--out", out,
                          "--part-mib", PART_MIB], capsys)
    assert status == 0, err
    return json.loads((out / "p1" / "manifest.json").read_text())


def receive_all(out, store, capsys, order=None):
    for index in order or sorted(int(p.name[1:]) for p in out.glob("p*")):
        status, _, err = run(["receive", out / f"p{index}", "--store", store], capsys)
        assert status == 0, err


def files_under(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_parts_are_small_self_describing_and_join_to_the_archive(wheels, tmp_path, capsys):
    out = tmp_path / "bundle"
    manifest = build(wheels, out, capsys)
    parts = manifest["parts"]
    assert len(parts) >= 4
    joined = b""
    for part in parts:
        folder = out / f"p{part['index']}"
        assert sorted(p.name for p in folder.iterdir()) == sorted([part["name"], "manifest.json"])
        data = (folder / part["name"]).read_bytes()
        assert len(data) == part["bytes"] <= 16 * 1024
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
        assert json.loads((folder / "manifest.json").read_text()) == manifest
        joined += data
    assert hashlib.sha256(joined).hexdigest() == manifest["archive_sha256"]
    assert manifest["python"] == "3.12" and manifest["tree_files"] == len(KEPT_312) + 1
    assert sorted(out.iterdir()) == [out / f"p{i}" for i in range(1, len(parts) + 1)]


def test_install_from_parts_received_in_any_order(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    manifest = build(wheels, out, capsys)
    order = list(range(len(manifest["parts"]), 0, -1))
    for k, index in enumerate(order):
        status, said, _ = run(["receive", out / f"p{index}", "--store", store], capsys)
        assert status == 0
        assert ("all parts are here" in said) == (k == len(order) - 1)
    site.mkdir()  # an empty folder is a fine target
    status, said, _ = run(["install", "--store", store, "--target", site], capsys)
    assert status == 0
    assert said.strip() == f"export PYTHONPATH={site.resolve()}${{PYTHONPATH:+:$PYTHONPATH}}"
    installed = files_under(site)
    assert json.loads(installed.pop(gpu_bundle.MARKER)) == manifest
    assert installed == {**{n: WHEEL[n] for n in KEPT_312}, "tiny.py": b"X = 2\n"}
    assert not (site / "nvidia" / "__init__.py").exists()  # nvidia stays a namespace package
    assert sorted(os.listdir(tmp_path)) == ["bundle", "site", "store", "wheels"]  # no temp left


def test_python_picks_the_extension_modules(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    build(wheels, out, capsys, python="3.11")
    receive_all(out, store, capsys)
    assert run(["install", "--store", store, "--target", site], capsys)[0] == 0
    assert sorted(p.name for p in (site / "nvidia" / "fake").glob("*.so")) == [
        "_impl.cpython-311-x86_64-linux-gnu.so"]


def test_second_install_is_a_no_op_and_a_new_bundle_replaces_the_old(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    build(wheels, out, capsys)
    receive_all(out, store, capsys)
    assert run(["install", "--store", store, "--target", site], capsys)[0] == 0
    (site / "tiny.py").write_bytes(b"edited")  # a real re-extraction would undo this
    status, said, err = run(["install", "--store", store, "--target", site], capsys)
    assert status == 0 and "already holds this bundle" in err and said.startswith("export PYTHONPATH=")
    assert (site / "tiny.py").read_bytes() == b"edited"

    with zipfile.ZipFile(wheels / "tiny-2.0-py3-none-any.whl", "w") as zf:
        zf.writestr("tiny.py", b"X = 3\n")
    build(wheels, out, capsys)  # over the earlier build's folder
    receive_all(out, store, capsys)  # replaces the stored parts of the old bundle
    assert run(["install", "--store", store, "--target", site], capsys)[0] == 0
    assert (site / "tiny.py").read_bytes() == b"X = 3\n"


def test_a_missing_part_stops_install(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    manifest = build(wheels, out, capsys)
    n = len(manifest["parts"])
    receive_all(out, store, capsys, order=[i for i in range(1, n + 1) if i != 2])
    status, said, err = run(["install", "--store", store, "--target", site], capsys)
    assert status == 2 and said == ""
    assert err == f"error: part 2 of {n} (bundle.tar.xz.part2) missing from {store}: receive it first\n"
    assert not site.exists()


def test_a_damaged_part_is_refused_on_receive_and_on_install(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    manifest = build(wheels, out, capsys)
    n = len(manifest["parts"])
    good = (out / "p3" / "bundle.tar.xz.part3").read_bytes()
    (out / "p3" / "bundle.tar.xz.part3").write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    status, _, err = run(["receive", out / "p3", "--store", store], capsys)
    assert status == 2 and err.startswith(f"error: part 3 of {n} (bundle.tar.xz.part3) in {out / 'p3'} is damaged")
    assert not (store / "bundle.tar.xz.part3").exists()

    (out / "p3" / "bundle.tar.xz.part3").write_bytes(good)
    receive_all(out, store, capsys)
    (store / "bundle.tar.xz.part3").write_bytes(good[:-1])  # damaged after arrival
    status, _, err = run(["install", "--store", store, "--target", site], capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: part 3 of {n} (bundle.tar.xz.part3) in {store} is damaged")
    assert not site.exists() and sorted(os.listdir(tmp_path)) == ["bundle", "store", "wheels"]


def test_parts_that_match_a_forged_manifest_but_are_no_archive(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    build(wheels, out, capsys)
    receive_all(out, store, capsys)
    manifest = json.loads((store / "manifest.json").read_text())
    junk = b"not xz data" * 100
    (store / "bundle.tar.xz.part1").write_bytes(junk)
    manifest["parts"][0].update(bytes=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    (store / "manifest.json").write_text(json.dumps(manifest))
    status, _, err = run(["install", "--store", store, "--target", site], capsys)
    assert status == 2 and err.startswith(f"error: the parts in {store} do not join into a valid archive")
    assert not site.exists() and sorted(os.listdir(tmp_path)) == ["bundle", "store", "wheels"]


def test_bad_input_is_one_error_line(wheels, tmp_path, capsys):
    out = tmp_path / "bundle"
    for argv, message in [
        (["build", "--python", "2.7", "--wheels", wheels, "--out", out], "--python must look like 3.12"),
        (["build", "--python", "3.12", "--wheels", tmp_path, "--out", out], "no .whl files"),
        (["build", "--python", "3.12", "--wheels", wheels, "--out", out, "--part-mib", "0"], "--part-mib"),
        (["receive", tmp_path, "--store", tmp_path / "s"], "no manifest.json"),
        (["install", "--store", tmp_path / "s", "--target", tmp_path / "t"], "no manifest.json"),
        (["check", "--target", tmp_path / "nothing"], "is not a folder"),
    ]:
        status, _, err = run(argv, capsys)
        assert status == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["wheels"]


def test_install_and_build_leave_a_foreign_folder_alone(wheels, tmp_path, capsys):
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    build(wheels, out, capsys)
    receive_all(out, store, capsys)
    site.mkdir()
    (site / "mine.txt").write_text("keep")
    status, _, err = run(["install", "--store", store, "--target", site], capsys)
    assert status == 2 and "is not empty and holds no bundle" in err
    status, _, err = run(["build", "--python", "3.12", "--wheels", wheels, "--out", site], capsys)
    assert status == 2 and "is not empty and holds no bundle" in err
    assert files_under(site) == {"mine.txt": b"keep"}
    assert sorted(os.listdir(tmp_path)) == ["bundle", "site", "store", "wheels"]


def test_build_without_the_xz_program(wheels, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_bundle.shutil, "which", lambda name: None)  # the lzma module path
    out, store, site = tmp_path / "bundle", tmp_path / "store", tmp_path / "site"
    build(wheels, out, capsys)
    receive_all(out, store, capsys)
    assert run(["install", "--store", store, "--target", site], capsys)[0] == 0
    assert (site / "nvidia/fake/libbig.so.1").read_bytes() == WHEEL["nvidia/fake/libbig.so.1"]


def make_elf(needed, runpath=None):
    """A minimal 64-bit ELF shared object: one PT_LOAD at an address unlike its file offset and a
    PT_DYNAMIC segment with NEEDED, RUNPATH and STRTAB entries."""
    names = [*needed, *([runpath] if runpath else [])]
    strtab, offsets = b"\0", []
    for name in names:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    strtab_at, vaddr = 64 + 2 * 56, 0x400000
    dynamic_at = (strtab_at + len(strtab) + 7) // 8 * 8
    entries = [(1, o) for o in offsets[:len(needed)]]
    entries += [(29, offsets[-1])] if runpath else []
    entries += [(5, vaddr + strtab_at), (0, 0)]
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in entries)
    size = dynamic_at + len(dynamic)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01", 3, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, vaddr, vaddr, size, size, 0x1000)
    dyn = struct.pack("<IIQQQQQQ", 2, 6, dynamic_at, vaddr + dynamic_at, vaddr + dynamic_at,
                      len(dynamic), len(dynamic), 8)
    body = header + load + dyn + strtab
    return body + b"\0" * (dynamic_at - len(body)) + dynamic


def test_check_resolves_through_runpath_inside_the_tree(tmp_path, capsys):
    site = tmp_path / "site"
    (site / "pkg" / ".libs").mkdir(parents=True)
    (site / "other").mkdir()
    (site / "pkg" / "libtop.so").write_bytes(make_elf(
        ["libdep-1.so.1", "libc.so.6", "libstdc++.so.6", "libgone.so.2", "libelsewhere.so"],
        "$ORIGIN/.libs:/usr/local/cuda/lib64:$ORIGIN/../../outside"))
    (site / "pkg" / ".libs" / "libdep-1.so.1").write_bytes(make_elf(["libm.so.6"], "$ORIGIN"))
    (site / "other" / "libelsewhere.so").write_bytes(make_elf([]))  # in the tree, not on the path
    (site / "pkg" / "notelf.so").write_bytes(b"not an ELF file at all, though named like one")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "libgone.so.2").write_bytes(make_elf([]))  # outside the tree
    status, said, err = run(["check", "--target", site], capsys)
    assert status == 1 and err == "error: 2 library dependencies resolve nowhere\n"
    assert said.splitlines() == [
        f"3 shared libraries in {site}",  # notelf.so is not one
        "from the GPU image: libc.so.6 (needed by 1)",
        "from the GPU image: libm.so.6 (needed by 1)",
        "from the GPU image: libstdc++.so.6 (needed by 1)",
        "unresolved: libelsewhere.so (needed by pkg/libtop.so)",
        "unresolved: libgone.so.2 (needed by pkg/libtop.so)",
    ]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
def test_elf_reader_agrees_with_readelf():
    import _lzma  # an extension module of this Python: a real shared object

    path = Path(_lzma.__file__)
    shown = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in shown.splitlines() if "(NEEDED)" in line]
    assert needed and gpu_bundle.elf_dynamic(path)[0] == needed
    assert gpu_bundle.elf_dynamic(Path(sys.executable).resolve()) is not None
    assert gpu_bundle.elf_dynamic(Path(io.__file__)) is None  # a .py file


def test_a_truncated_elf_file_is_no_library(tmp_path):
    whole = make_elf(["libc.so.6"], "$ORIGIN")
    (tmp_path / "whole.so").write_bytes(whole)
    (tmp_path / "cut.so").write_bytes(whole[:150])  # cut inside its program headers
    assert gpu_bundle.elf_dynamic(tmp_path / "whole.so") == (["libc.so.6"], ["$ORIGIN"])
    assert gpu_bundle.elf_dynamic(tmp_path / "cut.so") is None
