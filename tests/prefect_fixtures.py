"""Fixtures for the Prefect and S3 tests: one test harness per session, a loopback S3 server.

Imported by conftest.py before any test module, so the environment below is set before Prefect
is imported anywhere: Prefect reads PREFECT_HOME (profiles, local result storage) at import. Tests
get a private PREFECT_HOME and never talk to a server the developer has running (PREFECT_API_URL
is dropped), and cached task results never leak between test sessions.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="atft-test-prefect-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _HOME
# The work root (runs, caches, demo data, studies of runs given no path): never the developer's own.
_WORK_ROOT = tempfile.mkdtemp(prefix="atft-test-home-")
atexit.register(shutil.rmtree, _WORK_ROOT, ignore_errors=True)
os.environ["ATFT_HOME"] = _WORK_ROOT
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "ATFT_ARTIFACT_URI"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

# Recognisable fake credentials: tests assert these strings never reach logs, artifacts or files.
FAKE_KEY_ID = "AKIATESTFAKEKEYID0042"
FAKE_SECRET = "fake-secret-Zq9vTx3kLm8Wp2Rn5Hs7Jd4"


# Fast settings for `tiny_demo`: 10 training days, 20 validation days, a small model (~5 s on CPU).
TINY_CONFIG_YAML = """\
data: {window: 10, min_stocks: 10, split: {val_days: 20}}
model: {hidden: 16, attn_heads: 2, gat_heads: [2]}
train: {max_train_days: 10, progress: false}
nightly: {challenger_ensemble: 1, challenger_epochs: 1}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flow_run_logs(flow_run_id) -> str:
    """Every log line the API stored for a flow run (its tasks included), after flushing the queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs travel to the API in background batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for every flow test of the session (~16 s, paid once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo panel (60 stocks x 260 days x 16 features): seconds to build and train on."""
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo

    path = tmp_path_factory.mktemp("demo") / "demo.parquet"
    generate_demo(path, DemoConfig(stocks=60, days=260, features=16, market="planted"))
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """A config YAML for fast runs on `tiny_demo` (short validation window, small model)."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_CONFIG_YAML)
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback (moto's threaded server), shared by the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the loopback server, with fake credentials in the environment."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"atft-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
