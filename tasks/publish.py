"""Publish a run: plots and tables in the Prefect UI, links to its files, and the S3 mirror.

Everything shown here is also a file in the run folder, so the UI is a view of the folder, never
the only copy. Plots are embedded as data URLs because the UI cannot load a worker's local files.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from atft_core.evaluate.plots import plot_gpu, plot_training
from atft_core.redact import redact
from atft_core.s3.client import S3Options
from atft_core.s3.folders import run_files, upload_run_dir
from atft_core.stage_result import StageResult
from tasks import expected_errors  # noqa: F401 - installs the filter: a PublishError logs no traceback

# Run files worth a link of their own on the run page (the rest are listed in `run-files`).
_LINKED = ("gate.json", "metrics.csv", "stage.json", "run.json")


@task(name="publish-report", cache_policy=NO_CACHE, persist_result=False,
      description="Plots, per-epoch metrics table and links to the run's files.")
def publish_report(run_dir: str, stage: StageResult) -> dict[str, str]:
    run = Path(run_dir)
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    history = stage.history
    times, util = gpu_series(stage.gpu)
    threshold = stage.config.get("gate", {}).get("min_gpu_util")
    made = {
        "training": plot_training(history, plots / "training.png"),
        "gpu": plot_gpu(times, util, plots / "gpu_util.png", threshold=threshold,
                        note=str(stage.gpu.get("reason") or "")),
    }
    if history:
        create_table_artifact([_round_row(h) for h in history], key="epoch-metrics",
                              description="Per-epoch training loss, validation IC / RankIC and timing")
    create_image_artifact(_data_url(made["training"]), key="plot-training",
                          description="Loss, IC and RankIC per epoch")
    create_image_artifact(_data_url(made["gpu"]), key="plot-gpu-util",
                          description="GPU utilisation while training (dashed: gate threshold)")
    files = run_files(run)
    lines = ["| file | bytes |", "|---|---:|"] + [f"| `{p.relative_to(run).as_posix()}` | {p.stat().st_size:,} |"
                                                 for p in files]
    create_markdown_artifact(f"Run folder: `{run}`\n\n" + "\n".join(lines), key="run-files",
                             description="Every file this run wrote")
    create_link_artifact(run.as_uri(), link_text=run.name, key="run-folder", description="This run's folder")
    for p in files:
        if p.name in _LINKED or p.suffix in (".png", ".pt", ".parquet"):
            create_link_artifact(p.as_uri(), link_text=p.relative_to(run).as_posix())
    get_run_logger().info("published %d file(s) of %s", len(files), run)
    return {name: str(path) for name, path in made.items()}


@task(name="mirror-to-s3", cache_policy=NO_CACHE, persist_result=False,
      description="Upload the run folder to ATFT_ARTIFACT_URI; fails loudly, keeps the local copy.")
def mirror_run(run_dir: str, target: S3Options) -> list[str]:
    # No task-level retries: botocore retries each request (one part of a large file alone), so a
    # task retry would only re-send files that are already up.
    logger = get_run_logger()
    uris = upload_run_dir(Path(run_dir), target, logger=logger)
    prefix = f"{target.uri}/{Path(run_dir).name}"
    create_link_artifact(prefix, link_text=prefix, key="run-mirror",
                         description=redact(f"Copy of this run's folder at {target.where}"))
    return uris


def gpu_series(gpu: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(seconds since start, utilisation 0..1) from `GpuMonitor.summary()["samples"]` pairs."""
    pairs = [p for p in gpu.get("samples") or [] if len(p) == 2]
    return [float(t) for t, _ in pairs], [float(u) for _, u in pairs]


def _data_url(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _round_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float):
            out[k] = None if not math.isfinite(v) else round(v, 5)
        elif isinstance(v, (int, str, bool)) or v is None:
            out[k] = v
        else:
            out[k] = str(v)
    return out
