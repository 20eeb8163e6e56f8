"""Mirror a run folder to S3 (or any S3-compatible server) and keep secrets out of every message.

The target is read from the environment once, at the edge (`ArtifactTarget.from_env` in the flow),
and passed down as a value: nothing below reads environment variables except boto3's own credential
chain, so credentials never travel through parameters, logs, artifacts or files.

Every S3 client of the project is made by `s3_client` here, and retries are botocore's own (standard
mode): each HTTP request (a PUT, one part of a multipart upload, one ranged GET) is retried alone on
a dropped connection, a timeout, a 5xx or throttling, with jittered exponential back-off, and each retry
is logged. Files move through boto3's transfer manager (`transfer_config`), so a large file goes up in parts
and a failed part is re-sent by itself, never the whole file. A 4xx answer (no such bucket, access
denied) is not retried. The final failure raises `PublishError` naming the endpoint and bucket, never
the keys. The local copy is never touched: the run folder stays the source of truth whether or not the
mirror worked.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger("atft_core.publish")

ENV_URI = "ATFT_ARTIFACT_URI"
# Environment variables whose values are secrets: scrubbed from any text we emit.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_SECRET_QUERY = re.compile(r"pass|secret|token|signature|credential|key", re.I)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")

# Tries per HTTP request, the first included. botocore's back-off for a dropped connection or a 5xx
# starts at 50 ms and doubles (1 s for throttling), capped at 20 s: ten tries ride out a blip of
# some seconds, and a longer outage still ends in one clear error instead of hanging a nightly run.
S3_ATTEMPTS = 10
PART_BYTES = 16 << 20  # multipart threshold and part size: what one failed part costs to re-send


def attempts_from_env(env: Mapping[str, str] | None = None) -> int:
    """Tries per S3 request: AWS_MAX_ATTEMPTS (the AWS SDKs' own variable) when set, else S3_ATTEMPTS."""
    text = ((os.environ if env is None else env).get("AWS_MAX_ATTEMPTS") or "").strip()
    if not text:
        return S3_ATTEMPTS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS must be a whole number >= 1 (tries per S3 request), got {text!r}")
    return int(text)


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
    attempts: int = S3_ATTEMPTS  # tries per HTTP request (botocore's max_attempts), the first included
    connect_timeout_s: float = 5.0
    part_bytes: int = PART_BYTES  # multipart threshold and part size of uploads and downloads

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
                         region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
                         attempts=attempts_from_env(env))

    def key_for(self, run_dir: Path, file: Path) -> str:
        """`<prefix>/<run folder name>/<path inside the run folder>`: runs never collide in the bucket."""
        rel = file.relative_to(run_dir).as_posix()
        return "/".join(p for p in (self.prefix, run_dir.name, rel) if p)


def run_files(run_dir: Path) -> list[Path]:
    """Every regular file of a run folder, sorted; hidden temp files (half-written) are skipped."""
    return sorted(p for p in Path(run_dir).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run_dir).parts))


def s3_client(endpoint_url: str | None = None, region: str | None = None, *, attempts: int = S3_ATTEMPTS,
              connect_timeout_s: float = 5.0, logger: logging.Logger | logging.LoggerAdapter = log):
    """The one place an S3 client is made: botocore's standard retries, up to `attempts` tries per request,
    each retry logged as a warning on `logger`. Credentials come from boto3's standard chain only."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout_s, read_timeout=60,
                    retries={"mode": "standard", "total_max_attempts": attempts})
    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    where = redact_url(endpoint_url) if endpoint_url else "the default AWS endpoint"

    # botocore logs its retries at DEBUG only; a retry is worth a warning in the run's log. The cause is
    # seen when botocore decides (needs-retry), the retry itself when its request is made again.
    def note_cause(request_dict, response=None, caught_exception=None, **_):
        request_dict["context"]["atft_cause"] = _cause(response, caught_exception)

    def log_retry(request, operation_name, **_):
        attempt = request.context.get("retries", {}).get("attempt", 1)
        if attempt > 1:
            logger.warning("S3 %s %s at %s: try %d of %d after %s", operation_name, urlsplit(request.url).path,
                           where, attempt, attempts, request.context.get("atft_cause", "an error"))

    client.meta.events.register("needs-retry.s3", note_cause)
    client.meta.events.register("request-created.s3", log_retry)
    return client


def make_s3_client(target: ArtifactTarget, *, logger: logging.Logger | logging.LoggerAdapter = log):
    """The S3 client for `target` (`s3_client` with its endpoint, region, tries and timeout)."""
    return s3_client(target.endpoint_url, target.region, attempts=target.attempts,
                     connect_timeout_s=target.connect_timeout_s, logger=logger)


def transfer_config(part_bytes: int = PART_BYTES):
    """boto3's transfer manager settings: files over `part_bytes` move in parts of that size, each its
    own request that botocore retries alone. Always the classic manager: the CRT one (used when awscrt
    is installed) retries by its own rules, not the client's."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes,
                          preferred_transfer_client="classic")


def failure(exc: BaseException, attempts: int) -> str:
    """`failed after N attempt(s): <cause>`, redacted: how the final error of an S3 call says what happened.

    A server's answer carries how often botocore retried it; a connection that never answered does not,
    so then the limit is named. A local error (the file vanished) was not retried at all.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    cause = redact(f"{type(exc).__name__}: {exc}")
    answer = exc
    while answer is not None and not isinstance(answer, ClientError):
        answer = answer.__context__  # boto3 wraps the ClientError of `upload_file` in S3UploadFailedError
    retries = answer.response.get("ResponseMetadata", {}).get("RetryAttempts") if answer is not None else None
    if isinstance(retries, int):
        return f"failed after {retries + 1} attempt(s): {cause}"
    if isinstance(exc, BotoCoreError):
        return f"failed after up to {attempts} attempts: {cause}"
    return f"failed: {cause}"


def local_path(folder: Path, rel: str) -> Path | None:
    """`folder / rel` for the part of an S3 key below a folder's prefix; None when that would not be a
    file inside `folder` (absolute, `..`, empty, or out through a symlink). Keys are written by other
    hosts and tools, so each is checked before anything is written."""
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or ".." in parts:
        return None
    path = Path(folder) / rel
    root, resolved = Path(folder).resolve(), path.resolve()
    return path if resolved != root and resolved.is_relative_to(root) else None


def check_reachable(target: ArtifactTarget, *, client=None) -> None:
    """PublishError unless the target's bucket answers (HEAD bucket): asked before a run builds a cache
    and trains for an hour, so a wrong bucket, endpoint or credential is named at once, not at the end."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or make_s3_client(target)
    try:
        client.head_bucket(Bucket=target.bucket)
    except (BotoCoreError, ClientError) as exc:
        raise PublishError(f"the results bucket {target.where} (ATFT_ARTIFACT_URI) is not reachable: "
                           f"{failure(exc, target.attempts)}. Check AWS_ENDPOINT_URL, the bucket name and the "
                           "credentials before starting the run") from None


def upload_run_dir(run_dir: Path, target: ArtifactTarget, *, client=None, files: Iterable[Path] | None = None,
                   logger: logging.Logger | logging.LoggerAdapter = log) -> list[str]:
    """Upload the run folder's files under `target`; return their s3:// URIs.

    Requests are retried by botocore (see the module docstring). The first file that still fails raises
    `PublishError` naming the endpoint, the bucket, the file and the attempts made.
    """
    run_dir = Path(run_dir)
    client = client or make_s3_client(target, logger=logger)
    uris = [upload_file(client, target, path, target.key_for(run_dir, path), local_copy=run_dir)
            for path in (run_files(run_dir) if files is None else list(files))]
    logger.info("mirrored %d file(s) of %s to %s", len(uris), run_dir.name, target.where)
    return uris


def upload_file(client, target: ArtifactTarget, path: Path, key: str, *, local_copy: Path) -> str:
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


def _cause(response, exc: BaseException | None) -> str:
    """One line for what made botocore retry: the exception, or the answer's status and error code."""
    if exc is not None or response is None:
        return redact(f"{type(exc).__name__}: {exc}")
    http, parsed = response
    return f"HTTP {http.status_code} {parsed.get('Error', {}).get('Code', '')}".strip()
