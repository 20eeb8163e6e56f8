"""What every flow needs: the run's config and its input panel.

The flows import this module and `remote_stage`, never each other's internals: `pipeline` composes
the two stage flows (`gpu_stage`, `hpo_stage`), and neither stage imports `pipeline` or the other stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from atft_core.config import AtftConfig
from atft_core.workroot import WorkRoot


def demo_data_path(root: WorkRoot) -> Path:
    return root.demo / "demo.parquet"


def resolve_data_path(data_path: str | None, root: WorkRoot) -> str:
    """The given path (a relative one under the work root), or the demo panel under the work root,
    generated on first use.

    Written to a temporary name and renamed, so a run interrupted mid-generation (or two runs at
    once) never leaves a half-written panel that later runs would take for the real one.
    """
    if data_path:
        return str(root.resolve_data(data_path))
    demo = demo_data_path(root)
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
                 resume_from: str | None = None, ensemble: int | None = None) -> AtftConfig:
    """The YAML config (or defaults) with the flow's explicit overrides on top; None keeps the file's value."""
    from atft_core.data.roles import with_profile

    cfg = AtftConfig.from_yaml(config_path) if config_path else AtftConfig()
    cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, columns=with_profile(cfg.cache.columns,
                                                                                           profile)))
    train = {k: v for k, v in (("max_epochs", max_epochs), ("device", device), ("resume_from", resume_from),
                               ("ensemble", ensemble))
             if v is not None}
    gate = {k: v for k, v in (("min_gpu_util", min_gpu_util), ("min_rankic", min_rankic),
                              ("require_gpu", require_gpu)) if v is not None}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train),
                               gate=dataclasses.replace(cfg.gate, **gate))
