"""Flow `atft` under one session-scoped Prefect test harness, on a tiny demo panel.

- a passing run: every artifact reads back from the API, the run folder holds every file, the
  S3 mirror (a loopback S3 server) holds the same files, and no credential appears anywhere;
- a failing gate: the run ends Failed, the gate report is still published, the HPO hook never runs;
- the cache task: a Prefect cache hit on the same input, a rebuild when the folder was deleted;
- a bad dataset: `run_pipeline` re-raises DatasetError (the CLI's exit code 2).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from atft_core.errors import DatasetError
from atft_core.rundir import find_run_dir, new_run_dir
from tests.prefect_fixtures import FAKE_KEY_ID, FAKE_SECRET, flow_run_logs


def _artifacts(flow_run_id: str) -> dict[str, object]:
    """Keyed artifacts created by one flow run (and its tasks), by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def _task_runs(flow_run_id: str) -> dict[str, str]:
    """Task name -> state name for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


@pytest.fixture
def shared_cache(tmp_path) -> Path:
    """This test's own cache folder: no test relies on what another (earlier) test left behind."""
    return tmp_path / "cache"


def test_pipeline_completes_and_publishes(prefect_harness, tiny_demo, tiny_config, shared_cache, tmp_path,
                                          s3_endpoint, s3_bucket, monkeypatch):
    from prefect.artifacts import Artifact

    from flows.pipeline import run_pipeline

    monkeypatch.setenv("ATFT_ARTIFACT_URI", f"s3://{s3_bucket}/nightly")
    out = tmp_path / "runs"
    result = run_pipeline(data_path=str(tiny_demo), max_epochs=1, output_dir=str(out), cache_dir=str(shared_cache),
                          config_path=str(tiny_config), min_rankic=-1.0)

    assert result["ok"] is True and result["state"] == "Completed"
    assert result["passed"] is True and result["error"] is None
    run = Path(result["run_dir"])
    assert run.parent == out.resolve() and run.name.endswith(result["flow_run_id"][:8])
    for name in ("run.json", "stage.json", "gate.json", "metrics.csv", "val_predictions.parquet",
                 "checkpoint.pt", "plots/training.png", "plots/gpu_util.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "gate.json").read_text())["passed"] is True

    # Artifacts read back from the API, attached to this run.
    arts = _artifacts(result["flow_run_id"])
    assert {"dryrun-gate", "cache-summary", "epoch-metrics", "plot-training", "plot-gpu-util",
            "run-files", "run-folder", "run-mirror"} <= set(arts)
    gate = Artifact.get("dryrun-gate")
    assert gate.flow_run_id == arts["dryrun-gate"].flow_run_id
    assert "Dry-run gate: PASSED" in gate.data and "val_rankic" in gate.data
    summary = {row["item"]: row["value"] for row in json.loads(arts["cache-summary"].data)}
    assert summary["stocks"] == "60" and summary["days"] == "260"
    epochs = json.loads(arts["epoch-metrics"].data)
    assert len(epochs) == 1 and "val_rankic" in epochs[0]
    assert arts["plot-training"].data.startswith("data:image/png;base64,")

    # The S3 mirror holds exactly the run folder's files.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    local = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert keys == {f"nightly/{run.name}/{rel}" for rel in local}

    # No credential in any file, artifact or log line.
    texts = [p.read_bytes().decode("latin-1") for p in run.rglob("*") if p.is_file()]
    texts += [str(a.data) + str(a.description) for a in arts.values()]
    texts.append(flow_run_logs(result["flow_run_id"]))
    for text in texts:
        assert FAKE_SECRET not in text and FAKE_KEY_ID not in text


def test_failing_gate_fails_run_and_skips_hpo(prefect_harness, tiny_demo, tiny_config, shared_cache, tmp_path,
                                              monkeypatch):
    from prefect import flow

    import flows.hpo_stage
    from atft_core.config import AtftConfig
    from flows.pipeline import run_pipeline
    from tasks.cache import cached_build

    # An earlier run built this cache (done here, so the test passes alone and in any order).
    flow(name="warm-cache")(cached_build)(str(tiny_demo), shared_cache, AtftConfig.from_yaml(tiny_config).cache,
                                          None)
    hpo_calls = []
    monkeypatch.setattr(flows.hpo_stage, "run_hpo_stage", lambda **kw: hpo_calls.append(kw) or {})
    result = run_pipeline(mode="hpo", data_path=str(tiny_demo), max_epochs=1, output_dir=str(tmp_path / "runs"),
                          cache_dir=str(shared_cache), config_path=str(tiny_config), min_rankic=1.0)

    assert result["ok"] is False and result["state"] == "Failed" and result["passed"] is False
    assert "dry-run gate failed" in result["error"] and "val_rankic" in result["error"]
    assert hpo_calls == []  # stopped before the HPO study
    tasks = _task_runs(result["flow_run_id"])
    assert tasks["dryrun-gate"] == "Failed"
    assert tasks["build-cache"] == "Cached"  # same input and build parameters as the earlier build
    assert not [name for name in tasks if "hpo" in name]
    arts = _artifacts(result["flow_run_id"])
    assert "Dry-run gate: FAILED" in arts["dryrun-gate"].data  # published before the run failed
    assert "epoch-metrics" in arts  # evidence is published when the gate fails, too
    assert (Path(result["run_dir"]) / "plots" / "training.png").is_file()


def test_cache_task_hits_and_rebuilds(prefect_harness, tiny_demo, tmp_path):
    from prefect import flow

    from atft_core.config import CacheConfig
    from tasks.cache import cached_build

    cache_dir = tmp_path / "cache"

    @flow(name="cache-check")
    def twice() -> list:
        first = cached_build(str(tiny_demo), cache_dir, CacheConfig(), None)
        second = cached_build(str(tiny_demo), cache_dir, CacheConfig(), None)
        shutil.rmtree(first.path)  # someone cleans the cache dir: the cached result is now stale
        third = cached_build(str(tiny_demo), cache_dir, CacheConfig(), None)
        other = cached_build(str(tiny_demo), cache_dir, CacheConfig(clip=3.0), None)
        return [first, second, third, other]

    first, second, third, other = twice()
    assert first.hit is False and second == first  # Prefect cache hit: same result, body skipped
    assert Path(third.path).is_dir() and third.path == first.path and third.hit is False
    assert other.path != first.path  # different build parameters, different key and folder


def test_bad_dataset_reraises(prefect_harness, tmp_path):
    from flows.pipeline import run_pipeline

    with pytest.raises(DatasetError, match="does not exist"):
        run_pipeline(data_path=str(tmp_path / "missing.parquet"), output_dir=str(tmp_path / "runs"),
                     cache_dir=str(tmp_path / "cache"))


def test_run_dirs_are_never_reused(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    a = new_run_dir(tmp_path, "dryrun", "abcdef12-3456", now=now)
    b = new_run_dir(tmp_path, "dryrun", "abcdef12-3456", now=now)
    assert a.name == "20260102T030405Z-dryrun-abcdef12" and b.name == a.name + "-1"
    assert find_run_dir(tmp_path, "abcdef12-3456") in (a, b)
    assert find_run_dir(tmp_path, "ffffffff") is None


def test_flow_modules_import_without_a_circle():
    """Stage flows import only flows.common and flows.remote_stage; the pipeline composes them (its parameters
    in flows.params); nothing imports the pipeline back."""
    import ast

    root = Path(__file__).resolve().parents[1] / "flows"
    imports: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions count too
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module if node.module != "flows" else f"flows.{node.names[0].name}")
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        imports[path.stem] = {n.split(".")[1] for n in names if n.startswith("flows.")}
    assert imports["common"] == imports["params"] == set()
    assert imports["remote_stage"] == {"params"}
    assert imports["gpu_stage"] == {"remote_stage"}
    assert imports["hpo_stage"] == {"common", "remote_stage", "params"}
    assert imports["nightly"] == {"gpu_stage", "remote_stage"}
    assert imports["pipeline"] == {"common", "gpu_stage", "hpo_stage", "nightly", "remote_stage", "params"}
    assert not any("pipeline" in deps for name, deps in imports.items() if name != "cli")
