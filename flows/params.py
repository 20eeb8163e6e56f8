"""The parameters of flow `atft`, as one typed model: what a run may ask for, and its two configs.

Prefect addresses a deployment run's parameters by their top-level names (`prefect deployment run
atft/dryrun -p require_gpu=false`, `-p n_trials=2`), so the flow keeps them flat in its signature and
turns them into this model on its first line; everything below the flow receives the model, never
the loose names. tests/test_flows.py checks that the flow's signature and this model list the same
names with the same defaults, so the two cannot drift.

No Prefect import here: the CLI builds the same model and checks the configs it implies before a
server starts (a bad flag answers in a second, exit 2).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from atft_core.config import AtftConfig

Mode = Literal["dryrun", "hpo"]
GpuDispatch = Literal["auto", "deployment", "local"]
Device = Literal["auto", "cpu", "cuda"]
Profile = Literal["auto", "atft", "gogooku3"]
DEFAULT_TRIALS = 5
GPU_START_TIMEOUT_S = 600.0  # how long a run may wait while its pool has no live worker
GPU_TIMEOUT_S = 5 * 3600.0

# The names under which a parameter overrides a config value (AtftConfig.with_overrides).
_CONFIG_OVERRIDES = ("max_epochs", "device", "ensemble", "resume_from", "min_gpu_util", "min_rankic",
                     "require_gpu", "profile", "challenger_ensemble", "challenger_epochs")


class PipelineParams(BaseModel):
    """One run of flow `atft`. None keeps the config file's (or the library's) value.

    Paths (data_path, output_dir, cache_dir, config_path, resume_from, a file storage): absolute as
    given, a relative one under the work root (`ATFT_HOME`), never under the run's working folder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field("dryrun", description="dryrun: cache -> GPU dry run -> gate; hpo: then an Optuna study")
    data_path: str | None = Field(None, description="parquet file, folder or s3:// URI (None: the demo panel)")
    config_path: str | None = Field(None, description="YAML with sections data/cache/model/loss/train/gate")
    max_epochs: int | None = Field(None, ge=1, description="epochs of the gate's dry run")
    require_gpu: bool | None = Field(
        None, description="None: required when the run comes from a deployment or trains on the gpu pool; "
                          "only an explicit false turns that off (a developer's CPU check)")
    device: Device | None = Field(None, description="None keeps the config's (auto: a GPU when there is one)")
    min_gpu_util: float | None = Field(None, ge=0, le=1, description="the gate's GPU utilisation floor")
    min_rankic: float | None = Field(None, ge=-1, le=1, description="the gate's validation RankIC floor")
    profile: Profile | None = Field(None, description="the panel's column layout")
    resume_from: str | None = Field(None, description="a checkpoint.pt to continue (same panel layout)")
    ensemble: int | None = Field(None, ge=1, description="models from seeds seed..seed+K-1, their mean predicts")
    output_dir: str | None = Field(None, description="each run gets its own folder below (None: <work root>/runs)")
    cache_dir: str | None = Field(None, description="None: <work root>/cache")
    n_trials: int | None = Field(None, ge=1, description=f"HPO trials this run adds (None: {DEFAULT_TRIALS})")
    hpo_max_epochs: int | None = Field(None, ge=1, description="epochs of each HPO trial (None: max_epochs)")
    study_name: str | None = Field(None, description="the Optuna study that nights continue (None: atft)")
    storage: str | None = Field(None, description="Optuna storage URL or journal:PATH (None: <work root>/studies)")
    challenger_ensemble: int | None = Field(None, ge=1, le=64,
                                            description="mode hpo: models in the night's challenger (None: the "
                                                        "config's nightly.challenger_ensemble, the recipe's 3)")
    challenger_epochs: int | None = Field(None, ge=1, description="mode hpo: epochs of each challenger model (None: "
                                                                 "nightly.challenger_epochs, the recipe's 3)")
    hpo_workers: int = Field(1, ge=1, description="workers sharing the study (PostgreSQL for > 1 on the gpu pool)")
    gpu_stage: GpuDispatch = Field(
        "auto", description="auto: the gpu deployment when this run comes from a deployment; deployment; local")
    gpu_start_timeout_s: float = Field(GPU_START_TIMEOUT_S, gt=0,
                                       description="a gpu-pool run not started by then, with no live worker, "
                                                   "is cancelled")
    gpu_timeout_s: float = Field(GPU_TIMEOUT_S, gt=0, description="a gpu-pool run not finished by then is cancelled")

    def config(self) -> AtftConfig:
        """The gate's config: the file (or defaults) with this run's overrides, every value in range."""
        return AtftConfig.load(self.config_path).with_overrides(**self._overrides()).validated()

    def hpo_config(self) -> AtftConfig:
        """Each HPO trial's config: the same file and panel layout, its own epochs."""
        return AtftConfig.load(self.config_path).with_overrides(
            max_epochs=self.hpo_max_epochs or self.max_epochs, device=self.device, profile=self.profile).validated()

    def flow_kwargs(self) -> dict[str, Any]:
        """What differs from the defaults, as the flow's keyword arguments (what the run's UI page shows)."""
        return self.model_dump(exclude_defaults=True)

    def _overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CONFIG_OVERRIDES}
