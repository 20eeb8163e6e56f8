"""Hook for the HPO study (issue 5): the pipeline calls `run_hpo_stage` after a passed gate in mode "hpo".

The HPO engineer replaces the body: an Optuna study in shared storage whose trials run as
`atft-gpu-stage`-style deployment runs on the `gpu` pool (one trial per worker), writing its
trials CSV / best params into `run_dir` so `mirror_run` uploads them with the rest. Keep the
signature: the pipeline passes the cache task's result, the run folder and the typed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atft_core.config import DryRunConfig


def run_hpo_stage(*, cache: dict[str, Any], run_dir: Path, config: DryRunConfig, n_trials: int | None,
                  study_name: str | None, storage: str | None) -> dict[str, Any]:
    raise NotImplementedError("mode 'hpo' (the Optuna study) arrives with issue 5; run mode 'dryrun' for now")
