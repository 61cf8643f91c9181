"""Whole objects from S3-compatible object storage, through boto3 (the `s3` extra, imported only
when an `s3://` path is used).

The endpoint, credentials and region come from the usual AWS variables (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, AWS_REGION or
AWS_DEFAULT_REGION; AWS_MAX_ATTEMPTS overrides the attempts per request). botocore signs,
pools connections, applies the connect and read timeouts and retries a request that fails before
its body starts; a body that breaks mid-stream (a server killed or stalled mid-download) is
started again here, at most `attempts` times, since the sha256 is computed while the bytes are
written and so needs one sequential stream. Every failure is a StorageError naming the URL.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

SCHEME = "s3://"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
PART = ".part"  # a download in progress (or a killed one's leftover): never read as a shard
CHUNK = 1 << 20  # bytes per read of a body


class StorageError(OSError):
    """Object storage failed (unreachable, missing object, wrong checksum, timeout); the message
    names the URL. An OSError: the environment, not the data."""


@dataclass(frozen=True)
class S3Options:
    connect_s: float = 10.0  # TCP connect timeout per attempt
    read_s: float = 60.0  # longest silence from the server while a request or body is read
    attempts: int = 3  # per request (botocore's retries) and per body that breaks mid-stream
    workers: int = 8  # parallel downloads (and pooled connections) per process


DEFAULTS = S3Options()


def is_remote(path: str | Path) -> bool:
    return str(path).startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key/parts` -> (bucket, "key/parts"); ValueError naming the URL without a bucket."""
    bucket, _, key = url.removeprefix(SCHEME).partition("/")
    if not url.startswith(SCHEME) or not bucket:
        raise ValueError(f"{url}: not an s3://bucket/prefix URL")
    return bucket, key.strip("/")


def join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


def endpoint() -> str:
    """The endpoint boto3 will use (for messages): the AWS variables', else AWS's own."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), "AWS S3")


def client(opts: S3Options):
    """A boto3 S3 client with `opts`' timeouts and attempts (thread-safe: one per process).
    StorageError when boto3 is not installed."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError("s3:// data needs boto3: pip install 'firehose[s3]'") from None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    retries = {"mode": "standard", "total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", opts.attempts))}
    # Response checksums "when_required": the sha256 of the manifest checks every shard already.
    config = Config(connect_timeout=opts.connect_s, read_timeout=opts.read_s, retries=retries,
                    response_checksum_validation="when_required", request_checksum_calculation="when_required",
                    max_pool_connections=max(10, opts.workers), region_name=region)
    return boto3.session.Session().client("s3", config=config)


def _request_error(url: str, e: Exception) -> StorageError:
    """The one line for a request that failed (after botocore's retries)."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = err.get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"{url}: no such object at {endpoint()}")
        if code in ("NoSuchBucket",):
            return StorageError(f"{url}: no such bucket at {endpoint()}")
        return StorageError(f"{url}: {code or 'error'} from {endpoint()}: {err.get('Message', e)}")
    return StorageError(f"{url}: {e}")


def get_bytes(s3, url: str) -> bytes:
    """A small object's bytes (the manifest); StorageError naming the URL."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_url(url)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as e:
        raise _request_error(url, e) from None


def download(s3, url: str, dest: Path, sha256: str | None, opts: S3Options) -> None:
    """Object `url` -> file `dest`, through `dest.part`, renamed only once its sha256 equals
    `sha256` (None: not checked). StorageError naming the URL: missing, unreachable, a body that
    broke `opts.attempts` times, or a checksum that differs (the part file is then removed)."""
    part = dest.with_name(dest.name + PART)
    try:
        _download_verified(s3, url, part, sha256, opts)
    except StorageError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def _download_verified(s3, url: str, part: Path, sha256: str | None, opts: S3Options) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_url(url)
    for attempt in range(1, opts.attempts + 1):
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as e:  # botocore has retried it already
            raise _request_error(url, e) from None
        digest = hashlib.sha256()
        try:
            with open(part, "wb") as f:
                for chunk in body.iter_chunks(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
            break
        except BotoCoreError as e:  # the body broke mid-stream: killed, stalled past read_s, cut short
            body.close()
            if attempt == opts.attempts:
                raise StorageError(f"{url}: download failed {attempt} times from {endpoint()} ({e})") from None
            time.sleep(min(2.0 ** attempt / 4, 5.0))
    got = digest.hexdigest()
    if sha256 and got != sha256:
        raise StorageError(f"{url}: sha256 {got[:16]}... differs from the manifest's {sha256[:16]}... "
                           "(the object was changed or damaged in storage)")


def upload(s3, path: Path, url: str) -> None:
    """File `path` -> object `url` (boto3's managed transfer: multipart for big files, retried)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_url(url)
    try:
        s3.upload_file(str(path), bucket, key)
    except (ClientError, BotoCoreError) as e:
        raise _request_error(url, e) from None
    except Exception as e:  # boto3's S3UploadFailedError wraps the cause
        raise StorageError(f"{url}: upload of {path} failed ({e})") from None
