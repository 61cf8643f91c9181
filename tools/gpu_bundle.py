"""Carry DALI and the Python packages the GPU machine lacks as a compressed bundle, in parts that
each travel beside the checkout in one command.

    python tools/gpu_bundle.py build --python 3.12 --out .gpubundle [--part-mib 60] [--wheels DIR]
    python tools/gpu_bundle.py receive .gpubundle/p2 [--store /tmp/firehose-bundle]
    python tools/gpu_bundle.py install [--store ...] --target .gpusite   (once every part is there)
    python tools/gpu_bundle.py check --target .gpusite

`build` downloads the pinned wheels for one Python version, keeps what runs there (no headers,
static or CMake files, no extension modules built for other Pythons, no top-level
`nvidia/__init__.py`: a regular package there would hide the GPU image's own nvidia-* packages),
writes them as one tar compressed with xz -9e, and splits that into OUT/p1 .. OUT/pN. Each part
folder holds its part and the manifest (every part's size and sha256, the whole archive's), so
a part checks itself on arrival. `receive` checks a part and copies it into the store; `install`
checks all of them, extracts the tree once into the target and prints the PYTHONPATH to use.
`check` lists each shared library's NEEDED entries that the bundle does not hold.

Standard library only: it runs on the GPU machine before anything of the project is importable,
which is why it does its own temp-and-rename writes instead of using pipeline/atomic.py.
Bad input: one `error:` line, exit status 2, and nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# What the JPEG pipeline loads, and the Python packages DALI and webdataset import: all of them,
# so the bundle also runs under `python -I -S` with only numpy beside it (the GPU image has its own
# pyyaml, packaging, six and typing_extensions; PYTHONPATH puts these pinned ones first).
# nvjpeg2k and nvtiff are no NEEDED entry, but nvImageCodec's extensions dlopen them whenever a
# decoder is made and log an ERROR line each where they are missing. nvcomp stays out: DALI
# dlopens it only for its decompression operators.
PINS = (
    "nvidia-dali-cuda130==2.4.0",
    "nvidia-nvimgcodec-cu13==0.9.0.20",
    "nvidia-nvjpeg==13.3.2.43",
    "nvidia-nvjpeg2k-cu13==0.11.0.51",
    "nvidia-nvtiff-cu13==0.8.0.82",
    "optree==0.20.0", "gast==0.7.0", "astunparse==1.6.3", "six==1.17.0", "packaging==26.3",
    "typing_extensions==4.16.0",  # optree's; torch has one too, this keeps `python -I -S` runs whole
    "webdataset==1.0.2", "braceexpand==0.1.7", "pyyaml==6.0.4",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "any")
# NEEDED names that the GPU image provides: glibc and the GCC runtime (every Linux has them) and
# the driver's libraries. Anything else must resolve inside the bundle.
GPU_IMAGE_LIBS = frozenset({
    "ld-linux-x86-64.so.2", "libc.so.6", "libdl.so.2", "libm.so.6", "libpthread.so.0", "librt.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libcuda.so.1", "libnvidia-ml.so.1",
})
ARCHIVE = "bundle.tar.xz"
MANIFEST = "manifest.json"
MARKER = ".gpu_bundle.json"  # in an installed tree: the manifest it came from
DEFAULT_STORE = Path(tempfile.gettempdir()) / "firehose-bundle"
EXT_MODULE = re.compile(r"\.cpython-(\d+t?)-[^/]*\.so$")
BLOCK = 1 << 20


class BundleError(Exception):
    """Bad input or a damaged bundle: main() prints it as one `error:` line and exits with 2."""


def python_tag(version: str) -> str:
    """'3.12' -> '312', the tag in extension module names; BundleError for anything else."""
    m = re.fullmatch(r"3\.(\d{1,2})", version)
    if not m:
        raise BundleError(f"--python must look like 3.12, not {version!r}")
    return f"3{m.group(1)}"


def drop_reason(name: str, tag: str) -> str | None:
    """Why the wheel member `name` stays out of a bundle for Python `tag`, or None to keep it."""
    parts = name.split("/")
    if name == "nvidia/__init__.py":
        return "nvidia/__init__.py"
    if parts[0].endswith(".data") or "__pycache__" in parts:
        return "scripts and caches"
    if "include" in parts[:-1] or "cmake" in parts[:-1] or name.endswith((".h", ".hpp", ".cuh", ".a")):
        return "headers, static and CMake files"
    m = EXT_MODULE.search(name)
    if m and m.group(1) != tag:
        return "other Pythons' extension modules"
    return None


def download(version: str, dest: Path) -> list[Path]:
    """The pinned wheels for CPython `version` on x86-64 Linux, fetched by pip into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", version, "--implementation", "cp", "-d", str(dest)]
    cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    done = subprocess.run([*cmd, *PINS], capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != len(PINS):
        said = (done.stderr + done.stdout).splitlines()
        tail = [line for line in said if line.strip() and not line.startswith("WARNING")][-3:]
        raise BundleError(f"pip download got {len(wheels)} of {len(PINS)} wheels: {' | '.join(tail)}")
    return wheels


@contextlib.contextmanager
def xz_writer(path: Path) -> Iterator[BinaryIO]:
    """A stream that lands xz -9e compressed in `path`: through the xz program, which uses every
    core, where there is one, else through the lzma module (one core)."""
    xz = shutil.which("xz")
    if xz is None:
        with lzma.open(path, "wb", preset=9 | lzma.PRESET_EXTREME) as f:
            yield f
        return
    with open(path, "wb") as out:
        proc = subprocess.Popen([xz, "-9e", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
        try:
            yield proc.stdin
            proc.stdin.close()
        except BaseException:
            proc.kill()  # not minutes more compressing an archive nobody will use
            raise
        finally:
            proc.stdin.close()
            if proc.wait() != 0 and proc.returncode != -signal.SIGKILL:
                raise BundleError(f"xz failed with status {proc.returncode}")


def write_tree(wheels: list[Path], tag: str, stream: BinaryIO) -> dict:
    """Write the kept members of `wheels` as one tar to `stream`, as pip would lay them out in
    site-packages. Returns the counts: kept files and bytes, dropped bytes by reason."""
    stats = {"files": 0, "bytes": 0, "dropped_bytes": {}}
    seen = set()
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                for member in sorted(zf.infolist(), key=lambda m: m.filename):
                    if member.is_dir():  # tar makes the folders its files need
                        continue
                    reason = drop_reason(member.filename, tag) or (
                        "already in an earlier wheel" if member.filename in seen else None)
                    if reason:
                        dropped = stats["dropped_bytes"]
                        dropped[reason] = dropped.get(reason, 0) + member.file_size
                        continue
                    seen.add(member.filename)
                    info = tarfile.TarInfo(member.filename)
                    info.size = member.file_size
                    info.mode = (member.external_attr >> 16) & 0o777 or 0o644
                    with zf.open(member) as src:
                        tar.addfile(info, src)
                    stats["files"] += 1
                    stats["bytes"] += member.file_size
    return stats


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def split_archive(archive: Path, out: Path, part_bytes: int) -> list[dict]:
    """Cut `archive` into out/p1/NAME.part1, ... of at most `part_bytes` each; their records."""
    parts = []
    with open(archive, "rb") as src:
        while chunk := src.read(part_bytes):
            index = len(parts) + 1
            name = f"{archive.name}.part{index}"
            (out / f"p{index}").mkdir()
            (out / f"p{index}" / name).write_bytes(chunk)
            parts.append({"index": index, "name": name, "bytes": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})
    return parts


def swap_in(tmp: Path, dest: Path, ours: str) -> None:
    """Put the finished folder `tmp` at `dest` by renames. `dest` may be missing, empty, or an
    earlier result (it holds the file `ours`); anything else is refused, never overwritten."""
    if dest.exists() and any(dest.iterdir()) and not (dest / ours).exists():
        raise BundleError(f"{dest} is not empty and holds no bundle: give an empty or new folder")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temp_folder_for(dest: Path) -> Iterator[Path]:
    """A fresh folder beside `dest` (same file system, so it can be renamed onto it), removed on
    the way out unless it was renamed away."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(version: str, out: Path, part_mib: float, wheels_dir: Path | None) -> dict:
    """Download (or take from `wheels_dir`) the wheels, write the bundle's parts into `out`.
    Returns the manifest."""
    tag = python_tag(version)
    out = out.resolve()
    if part_mib <= 0:
        raise BundleError(f"--part-mib must be positive, not {part_mib}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, temp_folder_for(out) as tmp:
        if wheels_dir is None:
            wheels = download(version, Path(work))
        else:
            wheels = sorted(Path(wheels_dir).glob("*.whl"))
            if not wheels:
                raise BundleError(f"no .whl files in {wheels_dir}")
        archive = Path(work) / ARCHIVE
        with xz_writer(archive) as stream:
            stats = write_tree(wheels, tag, stream)
        manifest = {"python": version, "archive": ARCHIVE, "archive_bytes": archive.stat().st_size,
                    "archive_sha256": sha256_file(archive), "tree_files": stats["files"],
                    "tree_bytes": stats["bytes"], "dropped_bytes": stats["dropped_bytes"],
                    "wheels": [w.name for w in wheels]}
        manifest["parts"] = split_archive(archive, tmp, int(part_mib * (1 << 20)))
        for part in manifest["parts"]:
            (tmp / f"p{part['index']}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
        swap_in(tmp, out, f"p1/{MANIFEST}")
    manifest["build_s"] = round(time.perf_counter() - start, 1)
    return manifest


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {path.parent}") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is not a bundle manifest ({e})") from None
    parts = manifest.get("parts") if isinstance(manifest, dict) else None
    if not parts or "archive_sha256" not in manifest or not all(
            {"index", "name", "bytes", "sha256"} <= set(p) for p in parts):
        raise BundleError(f"{path} is not a bundle manifest (fields missing)")
    return manifest


def part_label(part: dict, manifest: dict) -> str:
    return f"part {part['index']} of {len(manifest['parts'])} ({part['name']})"


def check_part(path: Path, part: dict, manifest: dict) -> None:
    """BundleError naming the part when `path` is missing or not the part's exact bytes."""
    if not path.is_file():
        raise BundleError(f"{part_label(part, manifest)} is missing from {path.parent}")
    digest = sha256_file(path)
    if digest != part["sha256"]:
        raise BundleError(f"{part_label(part, manifest)} in {path.parent} is damaged: sha256 "
                          f"{digest[:12]}..., the manifest says {part['sha256'][:12]}...")


def copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def stored_bundle(store: Path) -> str | None:
    """The archive sha256 of the bundle whose parts `store` collects; None if none or unreadable."""
    try:
        return read_manifest(store / MANIFEST)["archive_sha256"]
    except BundleError:
        return None


def receive(part_dir: Path, store: Path) -> str:
    """Check the part in `part_dir` against its manifest and copy both into `store` (parts of
    another bundle already there are removed). Returns a line saying what is still missing."""
    manifest = read_manifest(part_dir / MANIFEST)
    here = [p for p in manifest["parts"] if (part_dir / p["name"]).exists()]
    if len(here) != 1:
        raise BundleError(f"{part_dir} should hold exactly one part of its manifest, not {len(here)}")
    part = here[0]
    check_part(part_dir / part["name"], part, manifest)
    store.mkdir(parents=True, exist_ok=True)
    if stored_bundle(store) != manifest["archive_sha256"]:
        for old in store.glob(f"{ARCHIVE}.part*"):
            old.unlink()
    copy_atomic(part_dir / MANIFEST, store / MANIFEST)
    copy_atomic(part_dir / part["name"], store / part["name"])
    missing = [str(p["index"]) for p in manifest["parts"] if not (store / p["name"]).exists()]
    got = f"received {part_label(part, manifest)} into {store}"
    return f"{got}; still missing: {', '.join(missing)}" if missing else f"{got}; all parts are here"


class JoinedParts:
    """The parts read back to back as one file, for tarfile's stream mode."""

    def __init__(self, paths: list[Path]):
        self.paths, self.file = list(paths), None

    def read(self, size: int = -1) -> bytes:
        while self.paths or self.file:
            if self.file is None:
                self.file = open(self.paths.pop(0), "rb")
            data = self.file.read(size)
            if data:
                return data
            self.file.close()
            self.file = None
        return b""


def install(store: Path, target: Path) -> str:
    """Extract the bundle whose parts are in `store` into `target` (once: a target that already
    holds this bundle is left alone). Returns the line that sets PYTHONPATH."""
    manifest = read_manifest(store / MANIFEST)
    target = target.resolve()
    line = f"export PYTHONPATH={target}${{PYTHONPATH:+:$PYTHONPATH}}"
    marker = target / MARKER
    if marker.exists() and read_manifest(marker)["archive_sha256"] == manifest["archive_sha256"]:
        print(f"{target} already holds this bundle", file=sys.stderr)
        return line
    paths = [store / p["name"] for p in manifest["parts"]]
    missing = [part_label(p, manifest) for p, path in zip(manifest["parts"], paths) if not path.is_file()]
    if missing:
        raise BundleError(f"{'; '.join(missing)} missing from {store}: receive it first")
    for part, path in zip(manifest["parts"], paths):
        check_part(path, part, manifest)
    with temp_folder_for(target) as tmp:
        try:
            with tarfile.open(fileobj=JoinedParts(paths), mode="r|xz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
            raise BundleError(f"the parts in {store} do not join into a valid archive ({e})") from None
        (tmp / MARKER).write_text(json.dumps(manifest, indent=1))
        swap_in(tmp, target, MARKER)
    print(f"installed {manifest['tree_files']} files into {target}", file=sys.stderr)
    return line


def elf_dynamic(path: Path) -> tuple[list[str], list[str]] | None:
    """(NEEDED names, RUNPATH and RPATH folders) of a 64-bit little-endian ELF file, read from
    its dynamic segment; None when `path` is no such file or a damaged one."""
    try:
        return _read_dynamic(path)
    except (struct.error, StopIteration, UnicodeDecodeError):
        return None


def _read_dynamic(path: Path) -> tuple[list[str], list[str]] | None:
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return None
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        loads, dynamic = [], None
        for i in range(phnum):
            kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
            if kind == 1:  # PT_LOAD: maps file offsets to addresses
                loads.append((vaddr, offset, filesz))
            elif kind == 2:  # PT_DYNAMIC
                dynamic = (offset, filesz)
        if dynamic is None:
            return [], []
        f.seek(dynamic[0])
        raw = f.read(dynamic[1])
        entries = []
        for at in range(0, len(raw) - 15, 16):
            tag, value = struct.unpack_from("<qQ", raw, at)
            if tag == 0:  # DT_NULL
                break
            entries.append((tag, value))
        strtab = next(v for t, v in entries if t == 5)  # DT_STRTAB, an address
        base = next(o + strtab - v for v, o, n in loads if v <= strtab < v + n)

        def string(index: int) -> str:
            f.seek(base + index)
            return f.read(4096).split(b"\0", 1)[0].decode()

        needed = [string(v) for t, v in entries if t == 1]  # DT_NEEDED
        search = [string(v) for t, v in entries if t in (15, 29)]  # DT_RPATH, DT_RUNPATH
    return needed, [d for s in search for d in s.split(":") if d]


def check(site: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], int]:
    """Resolve every shared library's NEEDED entries in the tree at `site` through its own
    RUNPATH/RPATH ($ORIGIN-relative folders inside the tree). Returns (needed from the GPU image,
    unresolved), each {library name: [files needing it]}, and the number of libraries read."""
    site = site.resolve()
    from_image: dict[str, list[str]] = {}
    unresolved: dict[str, list[str]] = {}
    count = 0
    for path in sorted(site.rglob("*.so*")):
        dyn = path.is_file() and not path.is_symlink() and elf_dynamic(path)
        if not dyn:
            continue
        count += 1
        needed, search = dyn
        dirs = [Path(d.replace("${ORIGIN}", str(path.parent)).replace("$ORIGIN", str(path.parent)))
                for d in search]
        dirs = [d.resolve() for d in dirs if d.resolve().is_relative_to(site)]
        rel = str(path.relative_to(site))
        for name in needed:
            if any((d / name).exists() for d in dirs):
                continue
            (from_image if name in GPU_IMAGE_LIBS else unresolved).setdefault(name, []).append(rel)
    return from_image, unresolved, count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download, trim, compress and split the bundle")
    b.add_argument("--python", required=True, help="the GPU machine's Python, e.g. 3.12")
    b.add_argument("--out", type=Path, required=True, help="folder for p1 .. pN")
    b.add_argument("--part-mib", type=float, default=60.0, help="largest part (MiB)")
    b.add_argument("--wheels", type=Path, help="use the wheels in this folder instead of pip download")
    r = sub.add_parser("receive", help="check one part and put it into the store")
    r.add_argument("part_dir", type=Path)
    r.add_argument("--store", type=Path, default=DEFAULT_STORE)
    i = sub.add_parser("install", help="join, check and extract the parts; print PYTHONPATH")
    i.add_argument("--store", type=Path, default=DEFAULT_STORE)
    i.add_argument("--target", type=Path, required=True)
    c = sub.add_parser("check", help="list shared library dependencies the tree does not hold")
    c.add_argument("--target", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            m = build(args.python, args.out, args.part_mib, args.wheels)
            sizes = ", ".join(f"p{p['index']} {p['bytes'] / 2**20:.1f}" for p in m["parts"])
            print(f"{len(m['parts'])} parts in {args.out} (MiB: {sizes}); archive "
                  f"{m['archive_bytes'] / 2**20:.1f} MiB from {m['tree_bytes'] / 2**20:.1f} MiB in "
                  f"{m['tree_files']} files, built in {m['build_s']} s")
        elif args.command == "receive":
            print(receive(args.part_dir, args.store))
        elif args.command == "install":
            print(install(args.store, args.target))
        else:
            if not args.target.is_dir():
                raise BundleError(f"{args.target} is not a folder")
            from_image, unresolved, count = check(args.target)
            print(f"{count} shared libraries in {args.target}")
            for name, users in sorted(from_image.items()):
                print(f"from the GPU image: {name} (needed by {len(users)})")
            for name, users in sorted(unresolved.items()):
                print(f"unresolved: {name} (needed by {', '.join(users)})")
            if unresolved:
                print(f"error: {len(unresolved)} library dependencies resolve nowhere", file=sys.stderr)
                return 1
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # A kill (a timeout) unwinds like an error, so temporary folders and xz go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
