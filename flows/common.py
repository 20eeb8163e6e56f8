"""What every flow needs: its input panel (a given path, or the demo market generated on first use).

The flows import this module, `params` and `remote_stage`, never each other's internals: `pipeline`
composes the two stage flows (`gpu_stage`, `hpo_stage`), and neither stage imports `pipeline` or the
other stage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from atft_core.data.demo.config import DemoConfig
from atft_core.workroot import WorkRoot


def demo_data_path(root: WorkRoot) -> Path:
    """The default demo panel, named after its market (an older `demo.parquet` is another market)."""
    return root.demo / f"demo-{DemoConfig().market}.parquet"


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
        from atft_core.data.demo.generate import generate_demo

        demo.parent.mkdir(parents=True, exist_ok=True)
        tmp = demo.with_name(f".{demo.name}.{os.getpid()}.tmp")
        logging.getLogger("atft").info("generating the demo market at %s (once; later runs reuse it)", demo)
        generate_demo(tmp, DemoConfig())
        Path(f"{tmp}.oracle.json").replace(f"{demo}.oracle.json")
        Path(f"{tmp}.oracle.parquet").replace(f"{demo}.oracle.parquet")
        tmp.replace(demo)
    return str(demo)
