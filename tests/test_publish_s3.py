"""Mirroring a run folder to S3, against a real S3 HTTP server on loopback (moto's threaded server),
with a fault-injecting proxy in front of it where a test needs the server to fail."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from atft_core.redact import redact, redact_url
from atft_core.s3.client import S3Options
from atft_core.s3.folders import PublishError, upload_run_dir
from tests.prefect_fixtures import FAKE_KEY_ID, FAKE_SECRET, flow_run_logs, free_port
from tests.s3_faults import FaultyS3


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "20260101T020000Z-dryrun-abcd1234"
    (run / "plots").mkdir(parents=True)
    (run / "gate.json").write_text('{"passed": true}\n')
    (run / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (run / "plots" / "training.png").write_bytes(b"\x89PNG fake")
    (run / ".stage.json.tmp").write_text("half-written")  # a temp file must not be mirrored
    return run


def _keys(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objs = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in objs}


def test_upload_lands_under_prefix(tmp_path, s3_endpoint, s3_bucket):
    run = _run_dir(tmp_path)
    target = S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": f"s3://{s3_bucket}/nightly/atft/",
                                           "AWS_ENDPOINT_URL": s3_endpoint})
    uris = upload_run_dir(run, target)

    prefix = f"nightly/atft/{run.name}"
    stored = _keys(s3_endpoint, s3_bucket)
    assert set(stored) == {f"{prefix}/gate.json", f"{prefix}/metrics.csv", f"{prefix}/plots/training.png"}
    assert stored[f"{prefix}/plots/training.png"] == b"\x89PNG fake"
    assert sorted(uris) == sorted(f"s3://{s3_bucket}/{k}" for k in stored)


def test_target_from_env():
    assert S3Options.artifacts_from_env({}) is None
    t = S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": "s3://bkt", "AWS_REGION": "ap-northeast-1"})
    assert (t.bucket, t.prefix, t.region, t.endpoint_url) == ("bkt", "", "ap-northeast-1", None)
    assert t.uri == "s3://bkt"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": "https://user:hunter22@example.com/x"})
    try:
        S3Options.parse("https://user:hunter22@example.com/x")
    except ValueError as exc:
        assert "hunter22" not in str(exc)
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS must be a whole number >= 1"):
        S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": "s3://bkt", "AWS_MAX_ATTEMPTS": "0"})


def test_redaction():
    assert redact_url("postgresql://optuna:pa55word@db:5432/study") == "postgresql://optuna:***@db:5432/study"
    assert redact_url("http://minio:9000/b?X-Amz-Signature=abc&x=1") == "http://minio:9000/b?X-Amz-Signature=***&x=1"
    text = redact(f"boom with {FAKE_SECRET} at http://u:p4ss@h/", env={"AWS_SECRET_ACCESS_KEY": FAKE_SECRET})
    assert FAKE_SECRET not in text and "p4ss" not in text and "<AWS_SECRET_ACCESS_KEY>" in text


def test_a_failed_part_is_sent_again_alone_not_the_whole_file(tmp_path, s3_endpoint, s3_bucket, caplog):
    """A 12 MiB file goes up in three 5 MiB parts; the server answers 503 to part 2 once. botocore sends
    that part again and only that part: the upload is not started over."""
    run = tmp_path / "runs" / "20260101T020000Z-dryrun-big"
    run.mkdir(parents=True)
    payload = os.urandom(12 << 20)
    (run / "model.pt").write_bytes(payload)
    with FaultyS3(s3_endpoint) as proxy, caplog.at_level(logging.WARNING, logger="atft_core.s3"):
        proxy.fail("PUT", "partNumber=2", status=503)
        target = S3Options(bucket=s3_bucket, prefix="p", endpoint_url=proxy.url, part_bytes=5 << 20)
        assert upload_run_dir(run, target) == [f"s3://{s3_bucket}/p/{run.name}/model.pt"]

    parts = [(parse_qs(urlsplit(path).query)["partNumber"][0], status) for _, path, status in proxy.requests("PUT")]
    assert sorted(parts) == [("1", 200), ("2", 200), ("2", 503), ("3", 200)]
    assert len(proxy.requests("POST", "?uploads")) == 1  # one multipart upload, never restarted
    assert _keys(s3_endpoint, s3_bucket)[f"p/{run.name}/model.pt"] == payload
    retries = [r.getMessage() for r in caplog.records if "try 2 of" in r.getMessage()]
    assert len(retries) == 1 and "UploadPart" in retries[0] and "HTTP 503" in retries[0]


def test_a_missing_bucket_fails_at_once_without_retries(tmp_path, s3_endpoint, s3_bucket, caplog):
    run = _run_dir(tmp_path)
    with FaultyS3(s3_endpoint) as proxy, caplog.at_level(logging.WARNING, logger="atft_core.s3"):
        target = S3Options(bucket=f"{s3_bucket}-missing", endpoint_url=proxy.url)
        with pytest.raises(PublishError, match="after 1 attempt.*NoSuchBucket") as err:
            upload_run_dir(run, target)
    assert len(proxy.seen) == 1 and proxy.seen[0][2] == 404  # one request, its 404 not retried
    assert f"s3://{s3_bucket}-missing" in str(err.value) and proxy.url in str(err.value)
    assert not [r for r in caplog.records if "try 2 of" in r.getMessage()]


def test_forced_failure_retries_then_fails_clearly(tmp_path, s3_bucket, caplog):
    run = _run_dir(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens here: every connection is refused
    # AWS_MAX_ATTEMPTS, the AWS SDKs' own variable, sets the tries per request
    target = S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": f"s3://{s3_bucket}/p", "AWS_ENDPOINT_URL": closed,
                                           "AWS_MAX_ATTEMPTS": "3"})
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    with caplog.at_level(logging.INFO), pytest.raises(PublishError) as err:
        upload_run_dir(run, target)

    message = str(err.value)
    assert closed in message and f"s3://{s3_bucket}/p" in message
    assert "after up to 3 attempts" in message and str(run) in message  # names the kept local copy
    retries = [r.getMessage() for r in caplog.records if "S3 PutObject" in r.getMessage()]
    assert [m.split(": try ")[1][:6] for m in retries] == ["2 of 3", "3 of 3"]  # botocore's two retries
    assert "EndpointConnectionError" in retries[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # local copy untouched
    for text in (message, caplog.text):
        assert FAKE_SECRET not in text and FAKE_KEY_ID not in text


def test_mirror_task_fails_loudly_in_a_flow(prefect_harness, tmp_path, s3_bucket):
    """Under Prefect: the mirror task ends Failed with the clear message, the retry in the task's log and
    no traceback (a PublishError is an answer); no secret reaches the logs."""
    from prefect import flow

    from tasks.expected_errors import install_log_filter
    from tasks.publish import mirror_run

    run = _run_dir(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"

    @flow(name="mirror-check")
    def mirror_check(run_dir: str, target: S3Options):
        install_log_filter()  # as every flow of the pipeline does
        return mirror_run(run_dir, target)

    target = S3Options(bucket=s3_bucket, endpoint_url=closed, attempts=2, connect_timeout_s=1)
    state = mirror_check(str(run), target, return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, PublishError) and closed in str(exc)
    assert (run / "gate.json").exists()

    text = flow_run_logs(state.state_details.flow_run_id)
    assert "try 2 of 2" in text and "failed after up to 2 attempts" in text
    assert "Traceback" not in text
    assert FAKE_SECRET not in text and FAKE_KEY_ID not in text
