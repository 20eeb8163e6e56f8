"""Folders through S3: the run folder's mirror, and the cache and run folders that travel between the
pipeline and gpu workers on hosts that share no disk with it (layout: `atft_core.s3`).

The pipeline shares its cache before it hands training to the gpu pool; a gpu worker fetches the
cache into its own work folder (once per cache), trains into its own copy of the run folder and
uploads it; the pipeline fetches the run folder back before the gate. A cache is taken only when
its manifest is there, so a worker never trains on half an upload; a download lands in a temporary
folder renamed into place, so a crash leaves no half cache behind either.

What still fails after botocore's retries is one `PublishError` (mirroring, uploading) or
`ExchangeError` (a folder another host should have uploaded), naming the endpoint and bucket. The
local copy is never touched: the run folder stays the source of truth whether or not the mirror
worked. Object names come from another host, so one that would land outside the destination folder
(`..`, absolute) is refused before anything is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from atft_core.redact import redact
from atft_core.s3.client import S3Options, failure, local_path, transfer_config

T = TypeVar("T")

log = logging.getLogger("atft_core.s3")

MANIFEST = "_exchange.json"


class PublishError(RuntimeError):
    """Mirroring the run folder failed; the local copy is intact and named in the message."""


class ExchangeError(RuntimeError):
    """A folder another host should have uploaded is not there (or not complete), cannot be read, or
    names a file outside the folder it is fetched into."""


def run_files(run_dir: Path) -> list[Path]:
    """Every regular file of a run folder, sorted; hidden temp files (half-written) are skipped."""
    return sorted(p for p in Path(run_dir).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def check_reachable(target: S3Options, *, client=None) -> None:
    """PublishError unless the target's bucket answers (HEAD bucket): asked before a run builds a cache
    and trains for an hour, so a wrong bucket, endpoint or credential is named at once, not at the end."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or target.client()
    try:
        client.head_bucket(Bucket=target.bucket)
    except (BotoCoreError, ClientError) as exc:
        raise PublishError(f"the results bucket {target.where} (ATFT_ARTIFACT_URI) is not reachable: "
                           f"{failure(exc, target.attempts)}. Check AWS_ENDPOINT_URL, the bucket name and the "
                           "credentials before starting the run") from None


def upload_run_dir(run_dir: Path, target: S3Options, *, client=None, files: Iterable[Path] | None = None,
                   logger: logging.Logger | logging.LoggerAdapter = log) -> list[str]:
    """Upload the run folder's files under `target`; return their s3:// URIs.

    The first file that still fails raises `PublishError` naming the endpoint, the bucket, the file and
    the attempts made.
    """
    run_dir = Path(run_dir)
    client = client or target.client(logger)
    uris = [upload_file(client, target, path, target.key_for(run_dir, path), local_copy=run_dir)
            for path in (run_files(run_dir) if files is None else list(files))]
    logger.info("mirrored %d file(s) of %s to %s", len(uris), run_dir.name, target.where)
    return uris


def upload_file(client, target: S3Options, path: Path, key: str, *, local_copy: Path) -> str:
    """Upload one file to `key` of the target's bucket through the transfer manager; its s3:// URI.

    `local_copy`: the folder named in the error as the copy that is kept.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.upload_file(str(path), target.bucket, key, Config=transfer_config(target.part_bytes))
    except (BotoCoreError, ClientError, Boto3Error, OSError) as exc:
        raise PublishError(f"upload of {path.name} to {target.where} {failure(exc, target.attempts)}. "
                           f"The local copy is kept in {local_copy}. Check AWS_ENDPOINT_URL, the bucket name and "
                           "the credentials, then re-run") from None
    return f"s3://{target.bucket}/{key}"


def cache_key(target: S3Options, name: str) -> str:
    return "/".join(p for p in (target.prefix, "cache", name) if p)


def run_key(target: S3Options, run_name: str, sub: str = "") -> str:
    """The run folder's keys (the mirror's), or those of its subfolder `sub` (e.g. "workers")."""
    return "/".join(p for p in (target.prefix, run_name, sub.strip("/")) if p)


def is_complete(target: S3Options, key: str, *, client=None) -> bool:
    """Whether `key` holds a whole folder (its manifest was uploaded, which happens last)."""
    from botocore.exceptions import ClientError

    client = client or target.client()
    try:
        client.head_object(Bucket=target.bucket, Key=f"{key}/{MANIFEST}")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise ExchangeError(f"cannot read {target.where}: {redact(str(exc))}. Check AWS_ENDPOINT_URL, the bucket "
                            "name and the credentials") from None
    return True


def share_folder(local: Path, target: S3Options, key: str, *, manifest: bool = False, skip_complete: bool = False,
                 client=None, logger: logging.Logger | logging.LoggerAdapter = log) -> int:
    """Upload every file of `local` under `key`; the number of files uploaded.

    manifest: upload `_exchange.json` (file list and sizes) last, marking the folder complete.
    skip_complete: upload nothing when `key` is already complete (a cache is written once).
    """
    local = Path(local)
    client = client or target.client(logger)
    if skip_complete and is_complete(target, key, client=client):
        logger.info("%s is already at %s/%s", local.name, target.uri, key.removeprefix(target.prefix).strip("/"))
        return 0
    files = run_files(local) if local.is_dir() else []
    for path in files:
        upload_file(client, target, path, f"{key}/{path.relative_to(local).as_posix()}", local_copy=local)
    if manifest:
        listing = {p.relative_to(local).as_posix(): p.stat().st_size for p in files}
        marker = local.parent / f".{local.name}.{os.getpid()}{MANIFEST}"
        marker.write_text(json.dumps({"files": listing}, indent=1, sort_keys=True))
        try:
            upload_file(client, target, marker, f"{key}/{MANIFEST}", local_copy=local)
        finally:
            marker.unlink(missing_ok=True)
    logger.info("shared %d file(s) of %s through %s", len(files), local.name, target.where)
    return len(files)


def fetch_folder(target: S3Options, key: str, local: Path, *, complete: bool = False, client=None,
                 logger: logging.Logger | logging.LoggerAdapter = log) -> int:
    """Download every object under `key` into `local`; the number of files.

    complete=True (a cache): the folder must carry its manifest, every listed file is checked for
    its size, and the files land in a temporary folder renamed to `local` (which must not exist).
    Otherwise (a run folder) files are written one by one into `local`, each atomically; an empty
    or missing `key` gives 0. Either way every name is checked first (`local_path`): one that would
    land outside `local` raises `ExchangeError` and nothing is downloaded.
    """
    client = client or target.client(logger)
    local = Path(local)
    objects = _list(client, target, key)
    if not complete:
        names = [rel for rel in objects if rel != MANIFEST]
        paths = {rel: _inside(target, key, local, rel) for rel in names}
        local.mkdir(parents=True, exist_ok=True)
        for rel in names:
            _download(client, target, f"{key}/{rel}", paths[rel])
        return len(names)
    if MANIFEST not in objects:
        raise ExchangeError(f"{target.uri}/{key.removeprefix(target.prefix).strip('/')} is not a complete folder "
                            f"at {target.where} (no {MANIFEST}): the pipeline shares the cache before it starts a "
                            "gpu run; check that it and this worker use the same ATFT_ARTIFACT_URI and endpoint")
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _download(client, target, f"{key}/{MANIFEST}", tmp / MANIFEST)
        listing: dict[str, int] = json.loads((tmp / MANIFEST).read_text())["files"]
        paths = {rel: _inside(target, key, tmp, rel) for rel in listing}
        for rel, size in listing.items():
            if objects.get(rel) != size:
                raise ExchangeError(f"{rel} of {key} at {target.where} is missing or has the wrong size "
                                    f"({objects.get(rel)} bytes, manifest says {size}): share the folder again")
            _download(client, target, f"{key}/{rel}", paths[rel])
        (tmp / MANIFEST).unlink()
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(local)  # atomic; fails if another process got there first, which the caller checks
    except OSError:
        if not local.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("fetched %d file(s) of %s from %s", len(listing), local.name, target.where)
    return len(listing)


def fetch_cache(target: S3Options, name: str, work_dir: Path, *, client=None,
                logger: logging.Logger | logging.LoggerAdapter = log) -> Path:
    """`work_dir/cache/<name>`, downloaded on first use: the shared cache folder on this host."""
    local = Path(work_dir) / "cache" / name
    if not local.is_dir():
        fetch_folder(target, cache_key(target, name), local, complete=True, client=client, logger=logger)
    return local


def _inside(target: S3Options, key: str, folder: Path, rel: str) -> Path:
    """Where object `key/rel` goes in `folder`; `ExchangeError` when that is outside it."""
    path = local_path(folder, rel)
    if path is None:
        raise ExchangeError(f"refusing to fetch {key}/{rel} from {target.where}: its name would put it outside "
                            f"{folder}. Only the pipeline and its gpu workers should write under {target.uri}; "
                            "delete that object and check who else writes there")
    return path


def _list(client, target: S3Options, key: str) -> dict[str, int]:
    """{path below key: size} of the objects under `key`. Keys ending in "/" are folder markers that some
    tools create (a web console's "create folder"): no file, so skipped."""
    def listing() -> dict[str, int]:
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=f"{key}/"):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    out[obj["Key"][len(key) + 1:]] = int(obj["Size"])
        return out

    return _s3(target, f"listing {key}", listing)


def _download(client, target: S3Options, key: str, path: Path) -> None:
    """One object to `path`, through a temporary name: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        _s3(target, f"download of {key}",
            lambda: client.download_file(target.bucket, key, str(tmp), Config=transfer_config(target.part_bytes)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _s3(target: S3Options, what: str, call: Callable[[], T]) -> T:
    """`call`, whose failure (botocore has retried what can be retried) is one `ExchangeError`."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except (BotoCoreError, ClientError, Boto3Error) as exc:  # Boto3Error: a download's stream kept breaking
        raise ExchangeError(f"{what} at {target.where} {failure(exc, target.attempts)}. Check "
                            "AWS_ENDPOINT_URL, the bucket name and the credentials") from None
