"""`python -m atft_core.hpo.worker SPEC.json`: one HPO worker process draining a study's queue.

Started by `atft_core.hpo.study.spawn_worker` (the CLI's `--parallel K`, the Prefect stage's in-process
fan-out). The spec (JSON) names the cache, base config, HPO settings, objective and where to write
the worker's report; the storage URL comes from the environment variable `ATFT_HPO_STORAGE` so that a
database password never appears in argv or in a file. Exit code 0 when the queue is drained, 1 when
the worker stopped on an unexpected error (the trial it was running is recorded as FAIL).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from atft_core.config import DryRunConfig
from atft_core.hpo.study import STORAGE_ENV, HpoConfig, run_worker
from atft_core.rundir import write_json


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m atft_core.hpo.worker SPEC.json  (storage URL in $ATFT_HPO_STORAGE)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    spec = json.loads(Path(argv[0]).read_text())
    storage = os.environ.get(STORAGE_ENV)
    if not storage:
        print(f"error: ${STORAGE_ENV} is not set: the worker does not know which study to join", file=sys.stderr)
        return 2
    report = run_worker(spec["cache_path"], DryRunConfig.from_dict(spec["config"]), HpoConfig.from_dict(spec["hpo"]),
                        spec["output_dir"], storage_url=storage, worker_index=int(spec["worker_index"]),
                        sampler_seed=spec.get("sampler_seed"), objective=spec["objective"])
    write_json(Path(spec["result"]), report.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
