"""The dry-run gate: publish the report first, then fail the run if a criterion failed.

Order matters: when the gate fails, the person opening the failed run needs the report (each
criterion, its value, threshold and verdict) more than ever, so the artifact is created before the
exception that ends the run.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from atft_core.stage_result import StageResult
from tasks.expected_errors import expected

GATE_KEY = "dryrun-gate"


@expected
class GateFailed(RuntimeError):
    """The dry run did not meet the gate; the pipeline stops before the HPO study."""


@task(name="dryrun-gate", cache_policy=NO_CACHE, persist_result=False,
      description="Publish the gate report, then fail the run if the dry run did not pass.")
def check_gate(stage: StageResult, run_dir: str) -> dict[str, Any]:
    create_markdown_artifact(stage.gate_markdown + f"\n\nRun folder: `{run_dir}`\n", key=GATE_KEY,
                             description="Dry-run gate: each criterion with value, threshold and verdict")
    if not stage.passed:
        raise GateFailed(f"dry-run gate failed: {failed_criteria(stage.gate) or 'see the dryrun-gate artifact'}; "
                         f"the HPO study is not started. Report: {run_dir}/gate.json")
    get_run_logger().info("dry-run gate passed")
    return stage.gate


def publish_gate_not_reached(run_dir: str, reason: str) -> None:
    """The `dryrun-gate` artifact of a run whose GPU stage never produced a verdict (failed, timed out,
    crashed, no worker): FAILED, why, and where to look. Without it the UI shows a red run whose gate
    artifact is last night's, and the reason only in a log line."""
    create_markdown_artifact(
        "## Dry-run gate: FAILED (no verdict)\n\n"
        f"The GPU stage ended before the gate could be applied:\n\n> {reason}\n\n"
        "Where to look: the gpu stage's flow run (a subflow of this run in the UI) and its logs; the gpu "
        "worker's log (`$PREFECT_HOME/worker-gpu-*.log` on the stack `make up` starts).\n\n"
        f"Run folder: `{run_dir}`\n", key=GATE_KEY,
        description="Dry-run gate: no verdict, the GPU stage did not finish")


def failed_criteria(gate: dict[str, Any]) -> str:
    """`name = value (needs > threshold)` for each failed criterion of `GateResult.to_dict()`."""
    out = []
    for c in gate.get("criteria", []):
        if c.get("passed") is False:
            needs = f" (needs {c.get('op', '>')} {c['threshold']})" if c.get("threshold") is not None else ""
            out.append(f"{c['name']} = {c.get('value')}{needs}" + (f": {c['note']}" if c.get("note") else ""))
    return "; ".join(out)
