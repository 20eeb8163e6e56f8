"""An s3:// panel, read from a real S3 HTTP server on loopback (moto): the cache is built from it, and
the second build of the same objects is a cache hit, both in Prefect (the task shows Cached and never
downloads) and in the cache folder itself (named by content, so a rebuild outside Prefect is a hit).
An object whose name would land outside the download folder is refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import boto3
import pytest

from atft_core.config import CacheConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.source import resolve_input
from atft_core.errors import DatasetError
from atft_core.s3.client import S3Options


def _upload(tiny_demo: Path, endpoint: str, bucket: str) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.upload_file(str(tiny_demo), bucket, "panels/demo.parquet")
    return f"s3://{bucket}/panels/demo.parquet"


def test_s3_panel_builds_then_hits(prefect_harness, tiny_demo, tmp_path, s3_endpoint, s3_bucket):
    from prefect import flow

    from tasks.cache import cached_build

    uri = _upload(tiny_demo, s3_endpoint, s3_bucket)
    cache_dir = tmp_path / "cache"

    @flow(name="s3-panel")
    def twice(uri: str) -> list:
        s3 = S3Options.from_env()
        return [cached_build(uri, cache_dir, CacheConfig(), s3), cached_build(uri, cache_dir, CacheConfig(), s3)]

    state = twice(uri, return_state=True)
    first, second = state.result()
    assert first.hit is False and first.summary["stocks"] == 60 and first.summary["days"] == 260
    assert first.fingerprint == build_cache(tiny_demo, tmp_path / "local", progress=False).fingerprint
    assert second == first  # the Prefect cache hit hands back the first result

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    assert sorted(r.state.name for r in runs) == ["Cached", "Completed"]

    # Outside Prefect: the same objects again -> the folder named by their content is found.
    again = build_cache(uri, cache_dir, CacheConfig(), s3=S3Options.from_env(), progress=False)
    assert again.hit is True and str(again.path) == first.path


def test_a_panel_object_named_outside_the_download_folder_is_refused(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    """An object below the panel's prefix whose name climbs out (`..`) would be downloaded next to the
    staging folder: refused with the key named, and nothing written."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the staging folder goes here
    (tmp_path / "tmp").mkdir()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="panels/x/ok.parquet", Body=b"PAR1")
    s3.put_object(Bucket=s3_bucket, Key="panels/x/../../evil.parquet", Body=b"PAR1")
    with pytest.raises(DatasetError, match=r"panels/x/\.\./\.\./evil\.parquet.*outside the download folder"):
        with resolve_input(f"s3://{s3_bucket}/panels/x", S3Options.from_env()):
            pass
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
