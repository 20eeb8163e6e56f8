"""What a GPU stage learned, as the run folder's `stage.json`: the one contract between the processes.

The stage may train in another flow run on another host; the pipeline reads this file, never
Prefect's result persistence, because the run folder is what both share (directly or through S3)
and what a person opens later. One typed record, written by the stage and read by the gate, the
report and the CLI, so a field cannot be renamed on one side only.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atft_core.provenance import code_version
from atft_core.rundir import read_json, write_json

if TYPE_CHECKING:
    from atft_core.config import AtftConfig
    from atft_core.dryrun import DryRunResult

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class StageResult:
    passed: bool
    gate: dict[str, Any]  # GateResult.to_dict(): each criterion with value, threshold and verdict
    gate_markdown: str  # the gate, then model vs baselines, then the signal report
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    gpu: dict[str, Any] = field(default_factory=dict)  # GpuMonitor.summary()
    files: dict[str, str] = field(default_factory=dict)  # name -> path relative to the run folder
    config: dict[str, Any] = field(default_factory=dict)  # AtftConfig.to_dict() of what trained
    cache_path: str = ""
    host: str = ""
    code: dict[str, Any] = field(default_factory=dict)  # the commit of the checkout that trained
    seconds: float = 0.0

    @classmethod
    def from_dryrun(cls, result: DryRunResult, cfg: AtftConfig, cache_path: str | Path, run_dir: Path,
                    seconds: float) -> StageResult:
        from atft_core.dryrun import json_safe

        stage = cls(
            passed=bool(result.gate.passed),
            gate=result.gate.to_dict(),
            # model vs ridge vs oracle, then the signal report: a RankIC means little without them
            gate_markdown="\n\n".join(part for part in (result.gate.to_markdown(),
                                                          result.baselines.get("markdown", ""),
                                                          result.report_markdown) if part),
            metrics=result.metrics, history=result.history, gpu=result.gpu,
            files={name: _relative(Path(p), run_dir) for name, p in result.files.items()},
            config=cfg.to_dict(), cache_path=str(cache_path), host=platform.node(), code=code_version(),
            seconds=round(seconds, 3))
        # NaN -> null, numpy scalars -> numbers: the file is plain JSON, and so is what is read back
        return cls.from_dict(json_safe(stage.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StageResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / STAGE_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> StageResult:
        """The stage's result from the run folder, wherever the stage ran."""
        path = Path(run_dir) / STAGE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the GPU stage did not finish writing its results (see "
                                    "the gpu run's logs; a gpu worker on another host needs ATFT_ARTIFACT_URI set "
                                    "for the pipeline, so that results travel through S3)")
        return cls.from_dict(read_json(path))

    @classmethod
    def exists(cls, run_dir: str | Path) -> bool:
        return (Path(run_dir) / STAGE_FILE).exists()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
