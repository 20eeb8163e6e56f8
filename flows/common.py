"""What every flow needs: the run's config, its input panel, and where a GPU stage runs.

The flows import this module and never each other's internals: `pipeline` composes the two stage
flows (`gpu_stage`, `hpo_stage`), and neither stage imports `pipeline` or the other stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

from prefect import get_run_logger
from prefect.runtime import deployment as current_deployment

from atft_core.config import DryRunConfig

DEFAULT_DATA_ROOT = "data"
GPU_DEPLOYMENT = "atft-gpu-stage/gpu"
GpuDispatch = Literal["auto", "deployment", "local"]


class GpuStageFailed(RuntimeError):
    """A stage's flow run on the gpu pool did not complete, or its deployment is missing."""


def demo_data_path(data_root: str | Path = DEFAULT_DATA_ROOT) -> Path:
    return Path(data_root) / "demo" / "demo.parquet"


def resolve_data_path(data_path: str | None, data_root: str | Path = DEFAULT_DATA_ROOT) -> str:
    """The given path, or the demo panel under `data_root`, generated on first use.

    Written to a temporary name and renamed, so a run interrupted mid-generation (or two runs at
    once) never leaves a half-written panel that later runs would take for the real one.
    """
    if data_path:
        return data_path
    demo = demo_data_path(data_root).resolve()
    if not demo.exists():
        from atft_core.data.demo import DemoConfig, generate_demo

        demo.parent.mkdir(parents=True, exist_ok=True)
        tmp = demo.with_name(f".{demo.name}.{os.getpid()}.tmp")
        logging.getLogger("atft").info("generating the demo market at %s (once; later runs reuse it)", demo)
        generate_demo(tmp, DemoConfig())
        Path(f"{tmp}.oracle.json").replace(f"{demo}.oracle.json")
        Path(f"{tmp}.oracle.parquet").replace(f"{demo}.oracle.parquet")
        tmp.replace(demo)
    return str(demo)


def build_config(config_path: str | None = None, *, max_epochs: int | None = None, device: str | None = None,
                 min_gpu_util: float | None = None, min_rankic: float | None = None,
                 require_gpu: bool | None = None, profile: str | None = None,
                 resume_from: str | None = None) -> DryRunConfig:
    """The YAML config (or defaults) with the flow's explicit overrides on top; None keeps the file's value."""
    from atft_core.data.roles import with_profile

    cfg = DryRunConfig.from_yaml(config_path) if config_path else DryRunConfig()
    cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, columns=with_profile(cfg.cache.columns,
                                                                                           profile)))
    train = {k: v for k, v in (("max_epochs", max_epochs), ("device", device), ("resume_from", resume_from))
             if v is not None}
    gate = {k: v for k, v in (("min_gpu_util", min_gpu_util), ("min_rankic", min_rankic),
                              ("require_gpu", require_gpu)) if v is not None}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train),
                               gate=dataclasses.replace(cfg.gate, **gate))


def gpu_deployment_for(dispatch: GpuDispatch, name: str = GPU_DEPLOYMENT) -> str | None:
    """The deployment `name` to run a GPU stage on, or None to run it in-process.

    `auto` uses the deployment only when this pipeline itself runs from a deployment (a worker is
    serving the pools) and the GPU deployment exists; a CLI run against a server stays in-process
    unless asked (`deployment`), since nothing guarantees a `gpu` worker is listening.
    """
    if dispatch == "local":
        return None
    if dispatch == "auto" and current_deployment.id is None:
        return None
    if deployment_exists(name):
        return name
    if dispatch == "deployment":
        raise GpuStageFailed(f"deployment {name} does not exist: run `make up` (or "
                             "`prefect deploy --all --prefect-file deployments/prefect.yaml`) first")
    get_run_logger().warning("deployment %s not found: running the GPU stage in-process", name)
    return None


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True
