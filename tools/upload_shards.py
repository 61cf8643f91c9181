"""Upload a finished shard folder to object storage, for `data.path: s3://bucket/prefix`.

    python -m tools.upload_shards data/shards s3://bucket/imagenet [--workers 8]

Uploads every tar and index that `_info.json` lists, then the manifest last, so a manifest in
storage always describes files that are all there. A manifest without the indexes' sha256
(written before they were recorded) gets them, computed here, in the uploaded copy. Endpoint and
credentials come from the AWS variables (pipeline/s3.py). An error is one line naming the file or
URL, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import fatal, s3
from pipeline.shards import INFO_NAME, file_sha256, idx_path


def manifest_files(folder: Path) -> tuple[dict, list[Path]]:
    """(The manifest, with every split's `shard_idx_sha256`; the tar and index files it lists).
    FileNotFoundError naming a listed file that is missing, ValueError for an unreadable manifest."""
    try:
        info = json.loads((folder / INFO_NAME).read_text())
        splits = info["splits"].values()
        files = []
        for split in splits:
            tars = [folder / name for name in split["filenames"]]
            if "shard_idx_sha256" not in split:
                split["shard_idx_sha256"] = [file_sha256(idx_path(t)) for t in tars if idx_path(t).exists()]
            files += [f for t in tars for f in (t, idx_path(t))]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder / INFO_NAME}: not a shard manifest ({e!s})") from None
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: listed in {INFO_NAME} but missing")
    return info, files


def upload_folder(folder: Path, url: str, workers: int = 8) -> int:
    """Upload `folder`'s shards, indexes and manifest (last) to `url`; returns the files uploaded."""
    s3.split_url(url)  # a malformed URL fails before any work
    info, files = manifest_files(folder)
    client = s3.client(s3.S3Options(workers=workers))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda f: s3.upload(client, f, s3.join(url, f.name)), files))
    manifest = folder / f".{INFO_NAME}.upload"
    manifest.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    try:
        s3.upload(client, manifest, s3.join(url, INFO_NAME))
    finally:
        manifest.unlink(missing_ok=True)
    return len(files) + 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="a shard folder with _info.json (tools/shard_imagenet.py --out)")
    p.add_argument("url", help="s3://bucket/prefix to upload to")
    p.add_argument("--workers", type=int, default=8, help="parallel uploads")
    a = p.parse_args(argv)
    try:
        n = upload_folder(a.folder, a.url, a.workers)
    except ValueError as e:  # not an s3:// URL
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(fatal.error_line(e), file=sys.stderr)
        return fatal.exit_code(e)
    print(f"{a.url}: {n} files uploaded from {a.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
