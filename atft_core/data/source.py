"""Where the panel comes from: a parquet file, a directory of parquet files, or an ``s3://`` URI.

Remote inputs are downloaded once into a private temporary folder (never into the cache dir, so a
failed download leaves nothing behind) and then read like local files. The S3 client is the project's
one (`atft_core.s3.client.S3Options.client`): botocore retries each request, or each part of a large object,
alone; an object whose name would land outside that folder is refused. The fingerprint hashes file
*content*, so a file rewritten in place with the same size and name is still a cache miss.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from atft_core.errors import DatasetError
from atft_core.s3.client import S3Options, local_path, transfer_config

log = logging.getLogger("atft_core.data.source")

_HASH_BLOCK = 64 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY (window offsets)


@dataclass(frozen=True)
class LocalInput:
    """Resolved input: the parquet files to read and a display name for error messages."""

    display: str
    files: tuple[Path, ...]


def fingerprint_files(files: tuple[Path, ...], root: Path | None = None) -> str:
    """xxh3-128 over (relative name, bytes) of every file: content-keyed, order-stable.

    Not a cryptographic hash (a cache key, not a signature): far faster than blake2b, so hashing a
    panel takes about as long as reading it.

    Remembered within the process for files whose identity (device, inode, size, mtime in ns) has not
    changed, as make and rsync judge a file: a Prefect run hashes the panel for the build task's cache
    key and again inside the build, and the second read of a large panel would cost seconds. As git
    does with "racily clean" files, nothing modified in the last seconds is remembered: file times
    tick coarsely, so a rewrite of the same size right after could keep the same stamp.
    """
    started = time.time_ns()
    stamp = _stamp(files, root)
    if stamp in _FINGERPRINTS:
        return _FINGERPRINTS[stamp]
    digest = _hash_files(files, root)
    settled = all(mtime < started - _SETTLED_NS for *_, mtime in stamp[1])
    if settled and stamp == _stamp(files, root):  # and unchanged while it was read
        with _FINGERPRINTS_LOCK:  # the build hashes on a thread of its own
            if len(_FINGERPRINTS) >= 16:
                _FINGERPRINTS.pop(next(iter(_FINGERPRINTS)))
            _FINGERPRINTS[stamp] = digest
    return digest


_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINTS_LOCK = threading.Lock()
_SETTLED_NS = 2_000_000_000


def _stamp(files: tuple[Path, ...], root: Path | None) -> tuple:
    """Each file's name, device, inode, size and mtime in ns (the last field of each entry)."""
    return str(root), tuple((str(f), (st := f.stat()).st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                            for f in files)


def _hash_files(files: tuple[Path, ...], root: Path | None) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    for f in files:
        rel = f.relative_to(root) if root is not None and f.is_relative_to(root) else Path(f.name)
        h.update(str(rel).encode() + b"\0")
        with open(f, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            for start in range(0, size, _HASH_BLOCK):
                _hash_window(h, fh, start, min(_HASH_BLOCK, size - start))
    return h.hexdigest()


def _hash_window(h, fh, start: int, length: int) -> None:
    """Hash bytes [start, start + length) of the open file: mapped where possible (hashed in the page
    cache, with less CPU than copying through a read buffer), else read. A window at a time,
    so the mapped pages held are one window's, not the file's."""
    try:
        window = mmap.mmap(fh.fileno(), length, prot=mmap.PROT_READ, offset=start)
    except (OSError, ValueError):  # a filesystem without mmap
        fh.seek(start)
        h.update(fh.read(length))
        return
    with window:
        h.update(window)


def _list_local(path: Path, display: str) -> tuple[Path, ...]:
    if not path.exists():
        raise DatasetError(display, "does not exist; pass --data-path pointing at a parquet file, "
                                    "a directory of parquet files or an s3:// URI")
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*.parquet") if p.is_file()))
        if not files:
            raise DatasetError(display, "is a directory with no *.parquet files in it")
        return files
    return (path,)


@contextmanager
def resolve_input(data_path: str | Path, s3: S3Options | None = None) -> Iterator[LocalInput]:
    """Yield the local parquet files behind ``data_path``; remote copies are deleted afterwards."""
    text = str(data_path)
    if not text.startswith("s3://"):
        path = Path(text).expanduser()
        yield LocalInput(display=text, files=_list_local(path, text))
        return
    staging = Path(tempfile.mkdtemp(prefix="atft-s3-"))
    try:
        files = _download_s3(text, staging, s3 or S3Options.from_env())
        yield LocalInput(display=text, files=files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_s3(uri: str, dest: Path, opts: S3Options) -> tuple[Path, ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise DatasetError(uri, "an s3:// URI needs a bucket: s3://bucket/path/to/file.parquet")
    client = opts.client(log)
    where = opts.endpoint_url or "the default AWS endpoint"
    try:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])
                     if o["Key"] == prefix or o["Key"].endswith(".parquet")]
        if not keys:
            raise DatasetError(uri, f"no parquet object at this prefix on {where}")
        keys.sort()
        files = [_staged(uri, dest, key, prefix) for key in keys]
        for key, local in zip(keys, files):
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(local), Config=transfer_config(opts.part_bytes))
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        # The message never carries credentials: botocore errors name the endpoint, not the keys.
        raise DatasetError(uri, f"cannot read from S3 endpoint {where}: {exc}. Check AWS_ENDPOINT_URL, "
                                "the bucket name and your credentials, then re-run",
                           transient=_transient(exc)) from None
    log.info("downloaded %d object(s) from %s", len(files), uri)
    return tuple(files)


def _staged(uri: str, dest: Path, key: str, prefix: str) -> Path:
    """Where object `key` lands in the staging folder: its path below the URI's prefix (its own name when
    the URI names the object). Checked before anything is downloaded: a name with `..` or a leading "/"
    must not write outside `dest`."""
    rel = key[len(prefix):].lstrip("/") if key != prefix else PurePosixPath(key).name
    path = local_path(dest, rel)
    if path is None:
        raise DatasetError(uri, f"object {key!r} has a name that would land outside the download folder "
                                "(a '..' part or an absolute path); rename or delete it, or point --data-path "
                                "at a prefix without it")
    return path


def _transient(exc: Exception) -> bool:
    """True when the same read may succeed later: no answer, or the server's own 5xx / throttling.

    A 4xx answer (no such bucket or key, access denied) is permanent: retrying only delays the message.
    """
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return True  # connection refused, timeout, DNS: the endpoint did not answer
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or exc.response.get("Error", {}).get("Code") in ("SlowDown", "Throttling", "RequestTimeout")
