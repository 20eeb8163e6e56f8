"""Mirror a run folder to S3 (or any S3-compatible server) and keep secrets out of every message.

The target is read from the environment once, at the edge (`ArtifactTarget.from_env` in the flow),
and passed down as a value: nothing below reads environment variables except boto3's own credential
chain, so credentials never travel through parameters, logs, artifacts or files.

An upload is retried per file (a flaky network should not re-send a finished checkpoint) and a final
failure raises `PublishError` naming the endpoint and bucket, never the keys. The local copy is never
touched: the run folder stays the source of truth whether or not the mirror worked.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger("atft_core.publish")
T = TypeVar("T")

ENV_URI = "ATFT_ARTIFACT_URI"
# Environment variables whose values are secrets: scrubbed from any text we emit.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_SECRET_QUERY = re.compile(r"pass|secret|token|signature|credential|key", re.I)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class PublishError(RuntimeError):
    """Mirroring the run folder failed; the local copy is intact and named in the message."""


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host/...` and secret-looking query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: return it untouched (urlunsplit would drop sqlite:////'s empty host)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Scrub URL passwords and the values of known secret environment variables from `text`."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    for name in SECRET_ENV:
        value = (os.environ if env is None else env).get(name)
        if value and len(value) >= 4:  # never blank out single characters everywhere
            text = text.replace(value, f"<{name}>")
    return text


@dataclass(frozen=True)
class ArtifactTarget:
    """Where run folders are mirrored: `s3://bucket/prefix` plus the endpoint to reach it."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # None = AWS itself
    region: str | None = None
    attempts: int = 3  # per file, including the first try
    backoff_s: float = 1.0  # first retry delay; doubles each retry
    connect_timeout_s: float = 5.0

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def where(self) -> str:
        """Human description of the target for messages: URI and (redacted) endpoint."""
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "the default AWS endpoint"
        return f"{self.uri} at {endpoint}"

    @classmethod
    def parse(cls, uri: str, **kwargs) -> "ArtifactTarget":
        if not uri.startswith("s3://"):
            raise ValueError(f"{ENV_URI} must look like s3://bucket/prefix, got {redact_url(uri)!r}")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{ENV_URI} needs a bucket: s3://bucket/prefix, got {redact_url(uri)!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, uri: str | None = None) -> "ArtifactTarget | None":
        """The mirror configured by ATFT_ARTIFACT_URI (None = keep files local only).

        `uri` instead of ATFT_ARTIFACT_URI: a gpu worker reaches the bucket the pipeline named (a flow
        parameter) with its own endpoint and credentials (its environment).
        """
        env = os.environ if env is None else env
        uri = (uri if uri is not None else env.get(ENV_URI) or "").strip()
        if not uri:
            return None
        return cls.parse(uri, endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
                         region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None)

    def key_for(self, run_dir: Path, file: Path) -> str:
        """`<prefix>/<run folder name>/<path inside the run folder>`: runs never collide in the bucket."""
        rel = file.relative_to(run_dir).as_posix()
        return "/".join(p for p in (self.prefix, run_dir.name, rel) if p)


def run_files(run_dir: Path) -> list[Path]:
    """Every regular file of a run folder, sorted; hidden temp files (half-written) are skipped."""
    return sorted(p for p in Path(run_dir).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def make_s3_client(target: ArtifactTarget):
    """A boto3 S3 client for `target`; credentials come from boto3's standard chain only."""
    import boto3
    from botocore.config import Config

    # botocore's own retries are off: `upload_run_dir` retries per file, so attempts are counted
    # (and logged) in one place instead of multiplying botocore's by ours.
    config = Config(connect_timeout=target.connect_timeout_s, read_timeout=60,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=target.endpoint_url, region_name=target.region, config=config)


def upload_run_dir(run_dir: Path, target: ArtifactTarget, *, client=None,
                   files: Iterable[Path] | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   logger: logging.Logger | logging.LoggerAdapter = log) -> list[str]:
    """Upload the run folder's files under `target`; return their s3:// URIs.

    Each file gets `target.attempts` tries with doubling delays. The final failure raises
    `PublishError` naming the endpoint, the bucket, the file and the attempts made.
    """
    run_dir = Path(run_dir)
    client = client or make_s3_client(target)
    uris = [upload_file(client, target, path, target.key_for(run_dir, path), local_copy=run_dir, sleep=sleep,
                        logger=logger)
            for path in (run_files(run_dir) if files is None else list(files))]
    logger.info("mirrored %d file(s) of %s to %s", len(uris), run_dir.name, target.where)
    return uris


def upload_file(client, target: ArtifactTarget, path: Path, key: str, *, local_copy: Path,
                sleep: Callable[[float], None] = time.sleep,
                logger: logging.Logger | logging.LoggerAdapter = log) -> str:
    """Upload one file to `key` of the target's bucket with `target.attempts` tries; its s3:// URI.

    `local_copy`: the folder named in the error as the copy that is kept.
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    def failed(attempt: int, reason: str) -> Exception:
        return PublishError(f"upload of {path.name} to {target.where} failed after {attempt} attempt(s): "
                            f"{reason}. The local copy is kept in {local_copy}. Check AWS_ENDPOINT_URL, the "
                            f"bucket name and the credentials, then re-run")

    with_retries(target, f"upload of {path.name} to {target.where}",
                 lambda: client.upload_file(str(path), target.bucket, key),
                 errors=(BotoCoreError, ClientError, S3UploadFailedError, OSError), failed=failed, sleep=sleep,
                 logger=logger)
    return f"s3://{target.bucket}/{key}"


def with_retries(target: ArtifactTarget, what: str, call: Callable[[], T], *, errors: tuple[type[BaseException], ...],
                 failed: Callable[[int, str], Exception], sleep: Callable[[float], None] = time.sleep,
                 logger: logging.Logger | logging.LoggerAdapter = log) -> T:
    """`call` with `target.attempts` tries and doubling delays from `target.backoff_s` (botocore's own
    retries are off, see `make_s3_client`, so attempts are counted here). An error in `errors` is retried
    unless it is permanent (`is_permanent`) or the last try; then ``failed(attempts made, reason)`` is raised,
    the reason redacted."""
    for attempt in range(1, target.attempts + 1):
        try:
            return call()
        except errors as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")
            if attempt == target.attempts or is_permanent(exc):
                raise failed(attempt, reason) from None
            delay = target.backoff_s * 2 ** (attempt - 1)
            logger.warning("%s failed (attempt %d/%d: %s); retrying in %.1fs", what, attempt, target.attempts,
                           reason, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def is_permanent(exc: BaseException) -> bool:
    """Errors another try cannot fix (no such bucket, access denied): fail at once."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        # boto3 wraps ClientErrors of `upload_file` in S3UploadFailedError; its text names the code.
        text = str(exc)
        return any(code in text for code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                                             "SignatureDoesNotMatch"))
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "404"}
