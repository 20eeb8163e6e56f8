"""An s3:// panel, read from a real S3 HTTP server on loopback (moto): the cache is built from it, and
the second build of the same objects is a cache hit, both in Prefect (the task shows Cached and never
downloads) and in the cache folder itself (named by content, so a rebuild outside Prefect is a hit)."""

from __future__ import annotations

from pathlib import Path

import boto3

from atft_core.config import CacheConfig
from atft_core.data.cache import build_cache
from atft_core.data.source import S3Options


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
    def twice(uri: str) -> list[dict]:
        s3 = S3Options.from_env()
        return [cached_build(uri, cache_dir, CacheConfig(), s3), cached_build(uri, cache_dir, CacheConfig(), s3)]

    state = twice(uri, return_state=True)
    first, second = state.result()
    assert first["hit"] is False and first["summary"]["stocks"] == 60 and first["summary"]["days"] == 260
    assert first["fingerprint"] == build_cache(tiny_demo, tmp_path / "local", progress=False).fingerprint
    assert second == first  # the Prefect cache hit hands back the first result

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    assert sorted(r.state.name for r in runs) == ["Cached", "Completed"]

    # Outside Prefect: the same objects again -> the folder named by their content is found.
    again = build_cache(uri, cache_dir, CacheConfig(), s3=S3Options.from_env(), progress=False)
    assert again.hit is True and str(again.path) == first["path"]
