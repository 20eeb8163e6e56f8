"""How this process reaches S3: the options read from the environment, the one client factory, and
what an S3 failure says.

Retries are botocore's own (standard mode): each HTTP request (a PUT, one part of a multipart upload,
one ranged GET) is retried alone on a dropped connection, a timeout, a 5xx or throttling, with
jittered exponential back-off, and each retry is logged. A 4xx answer (no such bucket, access denied)
is not retried. Messages name the endpoint and the bucket, never the keys.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from atft_core.redact import redact, redact_url

log = logging.getLogger("atft_core.s3")

ENV_URI = "ATFT_ARTIFACT_URI"
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


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 and, for the artifact target, which `s3://bucket/prefix` runs go to.

    Built at the edge (CLI / flow) by `from_env` (connection only: an s3:// input names its own bucket)
    or `artifacts_from_env` (with ATFT_ARTIFACT_URI's bucket and prefix).
    """

    endpoint_url: str | None = None  # None = AWS itself
    region: str | None = None
    attempts: int = S3_ATTEMPTS  # tries per HTTP request (botocore's max_attempts), the first included
    connect_timeout_s: float = 5.0
    part_bytes: int = PART_BYTES  # multipart threshold and part size of uploads and downloads
    bucket: str | None = None  # the artifact target's bucket; None for connection settings only
    prefix: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def where(self) -> str:
        """Human description of the target for messages: URI and (redacted) endpoint."""
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "the default AWS endpoint"
        return f"{self.uri} at {endpoint}"

    @classmethod
    def parse(cls, uri: str, **kwargs) -> "S3Options":
        """The artifact target `s3://bucket/prefix`, with connection settings `kwargs`."""
        if not uri.startswith("s3://"):
            raise ValueError(f"{ENV_URI} must look like s3://bucket/prefix, got {redact_url(uri)!r}")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{ENV_URI} needs a bucket: s3://bucket/prefix, got {redact_url(uri)!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Options":
        """Endpoint (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL), region and tries from the environment."""
        env = os.environ if env is None else env
        return cls(endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
                   region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
                   attempts=attempts_from_env(env))

    @classmethod
    def artifacts_from_env(cls, env: Mapping[str, str] | None = None, uri: str | None = None) -> "S3Options | None":
        """The mirror configured by ATFT_ARTIFACT_URI (None = keep files local only).

        `uri` instead of ATFT_ARTIFACT_URI: a gpu worker reaches the bucket the pipeline named (a flow
        parameter) with its own endpoint and credentials (its environment).
        """
        env = os.environ if env is None else env
        uri = (uri if uri is not None else env.get(ENV_URI) or "").strip()
        if not uri:
            return None
        connection = cls.from_env(env)
        target = cls.parse(uri)
        return dataclasses.replace(connection, bucket=target.bucket, prefix=target.prefix)

    def key_for(self, run_dir: Path, file: Path) -> str:
        """`<prefix>/<run folder name>/<path inside the run folder>`: runs never collide in the bucket."""
        rel = file.relative_to(run_dir).as_posix()
        return "/".join(p for p in (self.prefix, run_dir.name, rel) if p)

    def client(self, logger: logging.Logger | logging.LoggerAdapter = log):
        """The one place an S3 client is made: botocore's standard retries, up to `attempts` tries per request,
        each retry logged as a warning on `logger`. Credentials come from boto3's standard chain only."""
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=self.connect_timeout_s, read_timeout=60,
                        retries={"mode": "standard", "total_max_attempts": self.attempts})
        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
        where = redact_url(self.endpoint_url) if self.endpoint_url else "the default AWS endpoint"

        # botocore logs its retries at DEBUG only; a retry is worth a warning in the run's log. The cause is
        # seen when botocore decides (needs-retry), the retry itself when its request is made again.
        def note_cause(request_dict, response=None, caught_exception=None, **_):
            request_dict["context"]["atft_cause"] = _cause(response, caught_exception)

        def log_retry(request, operation_name, **_):
            attempt = request.context.get("retries", {}).get("attempt", 1)
            if attempt > 1:
                logger.warning("S3 %s %s at %s: try %d of %d after %s", operation_name, urlsplit(request.url).path,
                               where, attempt, self.attempts, request.context.get("atft_cause", "an error"))

        client.meta.events.register("needs-retry.s3", note_cause)
        client.meta.events.register("request-created.s3", log_retry)
        return client


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


def _cause(response, exc: BaseException | None) -> str:
    """One line for what made botocore retry: the exception, or the answer's status and error code."""
    if exc is not None or response is None:
        return redact(f"{type(exc).__name__}: {exc}")
    http, parsed = response
    return f"HTTP {http.status_code} {parsed.get('Error', {}).get('Code', '')}".strip()
