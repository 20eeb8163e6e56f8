"""Folders between hosts through S3 (atft_core.s3.folders), against a real S3 HTTP server on loopback (moto),
with a fault-injecting proxy in front of it where a test needs the server to fail."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import boto3
import pytest

from atft_core.s3.client import S3Options
from atft_core.s3.folders import (
    MANIFEST,
    ExchangeError,
    cache_key,
    fetch_cache,
    fetch_folder,
    is_complete,
    run_key,
    share_folder,
)
from tasks.expected_errors import is_expected
from tests.s3_faults import DROP, FaultyS3


def _target(bucket: str, endpoint: str) -> S3Options:
    return S3Options.artifacts_from_env({"ATFT_ARTIFACT_URI": f"s3://{bucket}/team", "AWS_ENDPOINT_URL": endpoint})


def _cache(root: Path) -> Path:
    cache = root / "cache" / "abc123-h1"
    (cache / "shards").mkdir(parents=True)
    (cache / "meta.json").write_text('{"stocks": 3}\n')
    (cache / "shards" / "x.arrow").write_bytes(bytes(range(256)) * 40)
    return cache


def test_cache_goes_up_once_and_comes_down_whole(tmp_path, s3_endpoint, s3_bucket):
    target = _target(s3_bucket, s3_endpoint)
    cache = _cache(tmp_path / "cpu-host")
    key = cache_key(target, cache.name)
    assert key == "team/cache/abc123-h1" and not is_complete(target, key)

    assert share_folder(cache, target, key, manifest=True, skip_complete=True) == 2
    assert is_complete(target, key)
    assert share_folder(cache, target, key, manifest=True, skip_complete=True) == 0  # written once

    work = tmp_path / "gpu-host"
    local = fetch_cache(target, cache.name, work)
    assert local == work / "cache" / cache.name
    assert (local / "shards" / "x.arrow").read_bytes() == (cache / "shards" / "x.arrow").read_bytes()
    assert sorted(p.name for p in local.rglob("*")) == ["meta.json", "shards", "x.arrow"]  # no manifest, no temp
    (local / "meta.json").write_text("local copy")
    assert fetch_cache(target, cache.name, work) == local  # already here: not downloaded again
    assert (local / "meta.json").read_text() == "local copy"


def test_half_uploaded_cache_is_refused(tmp_path, s3_endpoint, s3_bucket):
    target = _target(s3_bucket, s3_endpoint)
    cache = _cache(tmp_path / "cpu")
    key = cache_key(target, cache.name)
    share_folder(cache, target, key)  # no manifest: as if the upload stopped before its end
    with pytest.raises(ExchangeError, match="not a complete folder.*ATFT_ARTIFACT_URI"):
        fetch_cache(target, cache.name, tmp_path / "gpu")
    assert not (tmp_path / "gpu" / "cache" / cache.name).exists()

    # A manifest that lists a file the bucket lacks (or with another size): refused, nothing left behind.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listing = {"meta.json": 14, "shards/x.arrow": 10240, "shards/y.arrow": 5}
    s3.put_object(Bucket=s3_bucket, Key=f"{key}/{MANIFEST}", Body=json.dumps({"files": listing}).encode())
    with pytest.raises(ExchangeError, match="shards/y.arrow.*missing or has the wrong size"):
        fetch_cache(target, cache.name, tmp_path / "gpu")
    assert not (tmp_path / "gpu" / "cache").exists() or not any((tmp_path / "gpu" / "cache").iterdir())


def test_run_folder_round_trip_and_subfolder(tmp_path, s3_endpoint, s3_bucket):
    target = _target(s3_bucket, s3_endpoint)
    gpu_run = tmp_path / "gpu" / "runs" / "20260101T020000Z-dryrun-abcd1234"
    (gpu_run / "workers").mkdir(parents=True)
    (gpu_run / "stage.json").write_text('{"passed": true}\n')
    (gpu_run / "workers" / "worker-0.json").write_text('{"worker": "w0"}\n')
    (gpu_run / ".stage.json.tmp").write_text("half")  # never shared
    assert share_folder(gpu_run, target, run_key(target, gpu_run.name)) == 2

    cpu_run = tmp_path / "cpu" / "runs" / gpu_run.name
    cpu_run.mkdir(parents=True)
    (cpu_run / "run.json").write_text("{}")
    assert fetch_folder(target, run_key(target, cpu_run.name, "workers"), cpu_run / "workers") == 1
    assert not (cpu_run / "stage.json").exists()
    assert fetch_folder(target, run_key(target, cpu_run.name), cpu_run) == 2
    assert json.loads((cpu_run / "stage.json").read_text()) == {"passed": True}
    assert sorted(p.relative_to(cpu_run).as_posix() for p in cpu_run.rglob("*") if p.is_file()) == [
        "run.json", "stage.json", "workers/worker-0.json"]
    # Nothing uploaded yet (a stage that never started): nothing fetched, no error.
    assert fetch_folder(target, run_key(target, "other-run"), tmp_path / "other") == 0


def test_unreachable_bucket_is_one_clear_error(tmp_path, s3_endpoint, s3_bucket):
    with FaultyS3(s3_endpoint) as proxy:
        target = _target("no-such-bucket-" + s3_bucket, proxy.url)
        # a missing bucket is permanent: one request, its 404 not retried
        with pytest.raises(ExchangeError, match="listing .*no-such-bucket.*after 1 attempt.*Check AWS_ENDPOINT_URL"):
            fetch_folder(target, run_key(target, "r"), tmp_path / "r")
    assert [status for *_, status in proxy.seen] == [404]


def test_a_503_and_a_dropped_connection_are_retried_and_the_cache_comes_down_whole(tmp_path, s3_endpoint, s3_bucket,
                                                                                  caplog):
    target = _target(s3_bucket, s3_endpoint)
    cache = _cache(tmp_path / "cpu-host")
    share_folder(cache, target, cache_key(target, cache.name), manifest=True)
    with FaultyS3(s3_endpoint) as proxy, caplog.at_level(logging.WARNING, logger="atft_core.s3"):
        proxy.fail("GET", "list-type=2", status=503)
        proxy.fail("GET", "shards/x.arrow", status=DROP)
        got = fetch_cache(dataclasses.replace(target, endpoint_url=proxy.url), cache.name, tmp_path / "gpu-host")
    assert (got / "shards" / "x.arrow").read_bytes() == (cache / "shards" / "x.arrow").read_bytes()
    assert (got / "meta.json").read_text() == (cache / "meta.json").read_text()
    assert [status for *_, status in proxy.requests("GET", "list-type=2")] == [503, 200]
    assert [status for *_, status in proxy.requests("GET", "shards/x.arrow")] == [DROP, 200]
    assert [status for *_, status in proxy.requests("GET", "meta.json")] == [200]  # the others sent once
    retried = [r.getMessage() for r in caplog.records if "try 2 of" in r.getMessage()]
    assert len(retried) == 2 and "ListObjectsV2" in retried[0] and "HTTP 503" in retried[0]
    assert "GetObject" in retried[1] and "x.arrow" in retried[1]
    assert not list(got.parent.glob(".*"))  # no temporary file or folder left behind


def _put(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key=key, Body=body)


def test_a_run_folder_object_named_outside_the_folder_is_refused(tmp_path, s3_endpoint, s3_bucket):
    """Another host (or a stray tool) wrote keys whose part below the run folder climbs out of it or is an
    absolute path: the fetch names the key and writes nothing, not even the good files."""
    target = _target(s3_bucket, s3_endpoint)
    key = run_key(target, "x")
    _put(s3_endpoint, s3_bucket, f"{key}/stage.json", b"{}")
    local = tmp_path / "a" / "b" / "x"
    outside = tmp_path / "outside" / "evil"  # an absolute path: the key has "//" after the folder
    for bad in ("../../evil", str(outside)):
        _put(s3_endpoint, s3_bucket, f"{key}/{bad}", b"owned")
        with pytest.raises(ExchangeError, match=f"refusing to fetch {key}/{bad}.*outside") as err:
            fetch_folder(target, key, local)
        assert is_expected(err.value)  # an answer, logged without a traceback
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").delete_object(
            Bucket=s3_bucket, Key=f"{key}/{bad}")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written, inside or out
    assert fetch_folder(target, key, local) == 1  # the folder itself, once clean, comes down


def test_a_cache_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path, s3_endpoint, s3_bucket):
    target = _target(s3_bucket, s3_endpoint)
    key = cache_key(target, "abc123-h1")
    _put(s3_endpoint, s3_bucket, f"{key}/../../evil", b"owned")  # listed and sized as the manifest says
    _put(s3_endpoint, s3_bucket, f"{key}/{MANIFEST}", json.dumps({"files": {"../../evil": 5}}).encode())
    work = tmp_path / "gpu"
    with pytest.raises(ExchangeError, match=r"refusing to fetch team/cache/abc123-h1/\.\./\.\./evil"):
        fetch_cache(target, "abc123-h1", work)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nor the manifest, nor a temp folder


def test_a_study_file_of_another_host_is_refused_by_a_remote_worker(tmp_path):
    from atft_core.hpo.storage import StudyNotReachable, check_study_reachable

    check_study_reachable("postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db:5432/optuna")  # any host
    (tmp_path / "optuna.db").write_bytes(b"")
    check_study_reachable(f"sqlite:///{tmp_path / 'optuna.db'}")  # the file is here (a shared disk)
    for url in (f"sqlite:///{tmp_path / 'elsewhere.db'}", f"journal:{tmp_path / 'elsewhere.log'}"):
        with pytest.raises(StudyNotReachable, match="file on the pipeline's host.*PostgreSQL") as err:
            check_study_reachable(url)
        assert is_expected(err.value)  # an answer, logged without a traceback
