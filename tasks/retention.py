"""The nightly's last step: remove old run folders, unused caches and temp leftovers (atft_core.retention)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from atft_core.retention import RetentionConfig, collect
from atft_core.workroot import WorkRoot


@task(name="retention", cache_policy=NO_CACHE, persist_result=False,
      description="Keep the last run folders and the recently used caches under the work root; remove the rest.")
def retention_task(work_root: str, cfg: RetentionConfig | None = None) -> dict[str, Any]:
    report = collect(WorkRoot(Path(work_root)), cfg or RetentionConfig())
    logger = get_run_logger()
    for line in report.lines():
        logger.info("gc: %s", line)
    create_markdown_artifact("## Retention\n\n" + "\n".join(f"- {line}" for line in report.lines()), key="retention",
                             description="What the nightly removed and kept under the work root")
    return report.to_dict()
