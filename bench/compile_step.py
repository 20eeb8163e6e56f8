"""torch.compile on vs off for a training step (CPU here), measured in a child process.

The compiled run goes through the trainer's own switch (`TrainConfig.compile`), so this measures
what `--config` users get. Warm-up (the first steps, which compile and, because the number of
stocks changes from day to day, may recompile for dynamic shapes) is reported apart from the
steady-state step time. The child writes its JSON after every phase, so a run stopped by the
time limit still reports the eager time and how long the warm-up had taken so far.

Child: ``python -m bench.compile_step --child-out FILE [--quick] [--dynamic]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from bench.common import Row, fmt_num, run_child

LIMIT_S = 600.0  # wall-clock limit of the child in full mode (run_all --compile-limit)
RUN_IN_QUICK = False  # run_all --compile-in-quick


def _child(out: Path, quick: bool, dynamic: bool, n_steps: int, warmup_steps: int) -> None:
    import torch

    from atft_core.train.trainer import Trainer
    from bench.training import _demo_setup

    warnings.simplefilter("ignore")
    res: dict = {"quick": quick, "dynamic": dynamic, "n_steps": n_steps, "warmup_steps": warmup_steps}

    def save():
        out.write_text(json.dumps(res))

    cache, cfg, label = _demo_setup(quick)
    res["label"] = label
    per_batch = cfg.data.days_per_batch

    def steps(tr, epoch, n):
        tr.sampler.max_days = n * per_batch
        t0 = time.perf_counter()
        tr.train_epoch(epoch)
        return time.perf_counter() - t0

    cfg.train.compile = False
    eager = Trainer(cache, cfg)
    res["eager_warmup_s"] = steps(eager, 0, 1)
    res["eager_steps_s"] = [steps(eager, e, 1) for e in range(1, n_steps + 1)]
    res["eager_step_s"] = min(res["eager_steps_s"])
    save()

    cfg.train.compile = True
    try:
        comp = Trainer(cache, cfg)
        if dynamic:
            comp.forward = torch.compile(comp.model, dynamic=True)
        res["compile_warmup_steps_s"] = []
        for e in range(warmup_steps):  # several single steps: days of different sizes trigger recompiles
            res["compile_warmup_steps_s"].append(steps(comp, 100 + e, 1))
            save()
        # steady state: single steps on the same days, eager and compiled interleaved (same background load)
        res["eager_steps_s"], res["compiled_steps_s"] = [], []
        for e in range(1, n_steps + 1):
            res["eager_steps_s"].append(steps(eager, 200 + e, 1))
            res["compiled_steps_s"].append(steps(comp, 200 + e, 1))
        res["eager_step_s"] = min(res["eager_steps_s"])
        res["compiled_step_s"] = min(res["compiled_steps_s"])
    except Exception as exc:  # noqa: BLE001 - reported as the reason for a SKIP row
        res["error"] = f"{type(exc).__name__}: {exc}"[:500]
    save()


def run(quick: bool) -> list[Row]:
    name = "torch.compile vs eager, train step (CPU)"
    if quick and not RUN_IN_QUICK:
        return [Row("compile", name, float("nan"), "s/step", None, "s/step", float("nan"),
                    "eager step time / compiled step time", "info (report both)", "SKIP",
                    note="quick mode: torch.compile's warm-up on CPU takes minutes (inductor generates and builds "
                         "C++ kernels; measured at ~3-9 min for the tiny model on this 2-core machine), far over "
                         "the CI budget. Full mode measures it: python -m bench.run_all --only compile")]
    args = ["--quick"] if quick else []
    child = run_child("bench.compile_step", args, LIMIT_S)
    r = child.result or {}
    eager = r.get("eager_step_s")
    warm = r.get("compile_warmup_steps_s") or []
    compiled = r.get("compiled_step_s")
    label = r.get("label", "")
    if eager is not None and compiled is not None:
        ratio = eager / compiled
        return [Row("compile", name, compiled, "s/step", eager, "s/step", ratio,
                    "eager step time / compiled step time", "info (report both)", "INFO",
                    note=f"{label}; steady state: best of {r['n_steps']} single steps each, eager and compiled "
                         f"interleaved on the same days. Compiled warm-up {sum(warm):.0f} s over the first "
                         f"{len(warm)} steps ({', '.join(f'{w:.1f}' for w in warm)} s: compile, then recompiles as "
                         "the number of stocks per day changes; inductor reuses its on-disk cache across runs, "
                         "so a cold first run on a machine takes longer: ~200 s measured here); "
                         + (f"it pays back after ~{sum(warm) / (eager - compiled):,.0f} steps."
                            if compiled < eager else "compiled is not faster here, so it never pays back."))]
    if r.get("error"):
        why = f"torch.compile failed on CPU: {r['error']}"
    elif child.timed_out:
        why = (f"torch.compile warm-up did not finish within the {LIMIT_S:.0f} s limit "
               f"(warm-up steps done: {', '.join(f'{w:.0f} s' for w in warm) or 'none'}); raise it with "
               "--compile-limit")
    else:
        why = f"child failed: {child.log_tail[-400:]}"
    return [Row("compile", name, float("nan"), "s/step", eager, "s/step", float("nan"),
                "eager step time / compiled step time", "info (report both)", "SKIP",
                note=f"{why}. Eager: {fmt_num(eager, 's')}/step. {label}")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child-out", required=True, type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dynamic", action="store_true", help="torch.compile(model, dynamic=True) instead of the trainer's")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=3)
    a = p.parse_args()
    _child(a.child_out, a.quick, a.dynamic, a.steps, a.warmup_steps)


if __name__ == "__main__":
    main()
