"""One-command GPU check (`make gpu-check`): CUDA tests, eager vs static-shape bench, reference-size dry run.

    python3 -m bench.gpu_check --out gpu_check.json            # what `make gpu-check` runs
    python3 -m bench.gpu_check --device cpu --out x.json        # small sizes on CPU (< 1 min; the suite runs it)

Built for the lent machine (one H100/H200, Python 3.12 with its own torch, no network): it imports
only the standard library until the packages the image lacks are installed from carried wheels
(`--wheels .whl`, made here by `make gpu-wheels`) into `--site`, then only `atft_core`, numpy,
polars/pyarrow (the cache) and pynvml: no Prefect, Optuna, boto3 or Postgres.

Stages, in this order (the JSON is rewritten after each, so a stage cut short leaves the earlier ones):
1. ``tests``: pytest on the test files whose assertions change on a CUDA host (sync-free step under
   ``torch.cuda.set_sync_debug_mode("error")``, static == eager on the GPU, the GPU criterion with
   real NVML, ...), without the Prefect conftest. CUDA only (the CPU suite runs them anyway).
2. ``bench``: the same training at the reference size, eager vs static shapes: step ms, days/s,
   epoch seconds (extrapolated to the split and to 4,000 x 1,150 days), host syncs per step, CUDA
   syncs seen by the sync debug mode, peak GPU memory, GPU utilisation.
3. ``dryrun``: `run_dryrun` at the reference size (`ModelConfig.reference_20m()`, one epoch, the
   trainer's defaults: static shapes on CUDA) on a synthetic cache of >= 4,000 stocks x 1,000 days x
   300 features written directly (no parquet), resident on the device; the gate's GPU criterion.
4. ``bench`` again on CUDA: static shapes + ``torch.compile(mode="reduce-overhead")`` (CUDA graphs),
   last because compiling takes minutes (`--no-compile` leaves it out).
On CPU, ``memory`` estimates the reference model's training memory for one 4,000-stock day from the
autograd-saved tensors at two small stock counts (linear in stocks) plus weights, grads and Adam.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# import name -> wheel file prefixes that provide it (only installed when the interpreter lacks it)
WHEELS: dict[str, tuple[str, ...]] = {
    "polars": ("polars-", "polars_runtime_32-"), "yaml": ("pyyaml-",), "pynvml": ("nvidia_ml_py-",),
    "tqdm": ("tqdm-",), "numpy": ("numpy-",), "pyarrow": ("pyarrow-",),
}
FORBIDDEN = ("prefect", "optuna", "boto3", "psycopg", "psycopg2", "sqlalchemy")
CUDA_TESTS = ["tests/test_sync_free.py", "tests/test_gpu_monitor.py", "tests/test_gate.py", "tests/test_loss.py",
              "tests/test_model.py", "tests/test_batches.py", "tests/test_prefetch.py", "tests/test_trainer.py"]


def install_missing(wheel_dir: Path, site: Path) -> dict[str, Any]:
    """pip-install (offline, no deps) the carried wheels of every module this interpreter lacks."""
    missing = [m for m in WHEELS if importlib.util.find_spec(m) is None]
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    picked = [w for w in wheels for m in missing if w.name.lower().startswith(WHEELS[m])]
    lacking = [m for m in missing if not any(w.name.lower().startswith(WHEELS[m]) for w in picked)]
    if lacking:
        raise SystemExit(f"gpu-check: this python lacks {lacking} and {wheel_dir} has no wheel for them: run "
                         "`make gpu-wheels` where there is network and carry the .whl folder")
    if picked:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, picked)], check=True)
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", str(REPO))])
    return {"missing_before": missing, "installed": [w.name for w in picked]}


def run_tests(timeout_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", *CUDA_TESTS]
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        tail, rc = (p.stdout + p.stderr)[-3000:], p.returncode
    except subprocess.TimeoutExpired as exc:
        tail, rc = f"timed out after {timeout_s:.0f} s: {str(exc.stdout or '')[-2000:]}", 124
    return {"files": CUDA_TESTS, "passed": rc == 0, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "summary": tail.strip().splitlines()[-1] if tail.strip() else "", "tail": tail}


def _configs(device: str, small: bool, model: str):
    from atft_core.config import AtftConfig, ModelConfig
    from bench.common import tiny_config

    if small:
        cfg = tiny_config(device, val_days=10)
    else:
        cfg = AtftConfig()
        cfg.model = ModelConfig.reference_20m() if model == "reference_20m" else ModelConfig.reference()
        cfg.train.device, cfg.train.progress, cfg.train.patience = device, False, 10**6
    cfg.train.max_epochs = 1
    return cfg


def measure(kind: str, cache, cfg, warm_days: int, timed_days: int, sync_steps: int) -> dict[str, Any]:
    """One training path: warm-up epoch, sync count, then a timed epoch of `timed_days` days."""
    import dataclasses
    import warnings

    import torch

    from atft_core.train.gpu_monitor import monitor_for_device
    from atft_core.train.syncs import SyncCounter
    from atft_core.train.trainer import Trainer, rss_mb

    train = dataclasses.replace(cfg.train, static_shapes="off" if kind == "eager" else "on",
                                compile=kind == "static+compile", log_every=10**6, max_train_days=warm_days)
    cfg = dataclasses.replace(cfg, train=train)
    tr = Trainer(cache, cfg)
    cuda = tr.device.type == "cuda"
    t0 = time.perf_counter()
    tr.train_epoch(0)  # warm-up: allocator, cuDNN plans, compilation
    warm_s = time.perf_counter() - t0
    res: dict[str, Any] = {"path": kind, "static_shapes": tr.static_shapes, "warmup_s": round(warm_s, 2)}
    if not train.compile:  # a dispatch mode around compiled code would only measure its fallback
        tr.sampler.max_days = sync_steps * cfg.data.days_per_batch
        steps = [s["step"] for s in tr.opt.state.values() if "step" in s and s["step"].device.type == "cpu"]
        with SyncCounter(ignore=steps) as sc:
            tr.train_epoch(1)
        n = len(tr.sampler)
        res.update({"host_syncs_counted": sc.total, "sync_steps": n, "host_reads_per_epoch_end": 1,
                    "host_syncs_per_step_between_reads": (sc.total - 1) / n, "sync_ops": dict(sc.counts)})
    tr.sampler.max_days = timed_days
    tr.monitor = monitor_for_device(tr.device).start()
    if cuda:
        torch.cuda.synchronize(tr.device)
        torch.cuda.reset_peak_memory_stats(tr.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:  # every CUDA sync outside the trainer's allowed read warns
            torch.cuda.set_sync_debug_mode("warn")
        t0 = time.perf_counter()
        try:
            stats = tr.train_epoch(2)
            if cuda:
                torch.cuda.synchronize(tr.device)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
        dt = time.perf_counter() - t0
    tr.monitor.stop()
    gpu = tr.monitor.summary()
    days_per_s = stats["train_days"] / dt
    res.update({
        "timed_days": stats["train_days"], "timed_steps": len(tr.sampler), "seconds": round(dt, 3),
        "step_ms": round(1000 * dt / max(1, len(tr.sampler)), 2), "days_per_s": round(days_per_s, 2),
        "epoch_s_train_split": round(len(tr.split.train) / days_per_s, 1),
        "epoch_s_4000x1150": round(1150 / days_per_s, 1) if cache.x.shape[1] >= 4000 else None,
        "cuda_syncs_in_timed_epoch": (sum("synchroniz" in str(w.message) for w in caught) if cuda else None),
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated(tr.device) / 2**20, 1) if cuda else None,
        "rss_mb": round(rss_mb(), 1), "gpu_util_mean": gpu["util_mean"], "gpu_scope": gpu["scope_note"] or None,
        "gpu_reason": gpu["reason"], "train_loss": stats["train_loss"],
    })
    del tr
    if cuda:
        torch.cuda.empty_cache()
    return res


def estimate_memory(features: int, window: int, stocks: tuple[int, int] = (96, 192), target: int = 4000):
    """Training memory of `ModelConfig.reference_20m()` for one day of `target` stocks, in MB (fp32).

    Saved-for-backward activations are linear in the stock count: measured at two small counts on the
    CPU and extrapolated; weights + grads + AdamW's two moments add 16 bytes per parameter.
    """
    import torch

    from atft_core.config import ModelConfig
    from atft_core.model import build_model

    model = build_model(features, (1, 5, 10, 20), ModelConfig.reference_20m(), [f"f{i}" for i in range(features)])
    saved = []
    for s in stocks:
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(torch.randn(s, window, features), torch.zeros(s, 2, dtype=torch.long),
                        torch.zeros(s, dtype=torch.long))
        out.pred.sum().backward()
        saved.append(total[0])
    per_stock = (saved[1] - saved[0]) / (stocks[1] - stocks[0])
    params = sum(p.numel() for p in model.parameters())
    act = saved[0] + per_stock * (target - stocks[0])
    return {"params": params, "stocks": target, "window": window, "features": features,
            "activations_mb": round(act / 2**20), "weights_grads_adam_mb": round(16 * params / 2**20),
            "total_mb_estimate": round((act + 16 * params) / 2**20),
            "method": f"autograd-saved tensors at {stocks} stocks, linear in stocks, fp32 (bf16 autocast saves less)"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (cpu: small sizes, under a minute)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--work-dir", type=Path, default=None, help="synthetic cache and dry-run folder")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels (make gpu-wheels)")
    p.add_argument("--site", type=Path, default=Path("/tmp/atft-gpu-site"), help="where missing wheels go")
    for size in ("--stocks", "--days", "--features"):
        p.add_argument(size, type=int, default=None)
    p.add_argument("--model", choices=["reference_20m", "reference"], default="reference_20m")
    p.add_argument("--timed-days", type=int, default=None, help="days in each timed epoch (default 200; CPU 12)")
    p.add_argument("--tests-timeout", type=float, default=200.0)
    p.add_argument("--no-tests", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="leave out the static+compile path on CUDA")
    return p


def _write(report: dict[str, Any], out: Path) -> None:
    """Rewrite the JSON: called after every stage, so a stage cut short leaves the earlier ones."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))


def _bench_path(report: dict[str, Any], out: Path, kind: str, cache, cfg, timed_days: int) -> None:
    """Measure one training path into ``report["bench"]`` (an error entry if it fails) and rewrite the JSON."""
    try:
        report["bench"].append(measure(kind, cache, cfg, warm_days=4 * cfg.data.days_per_batch,
                                       timed_days=timed_days, sync_steps=6))
    except Exception as exc:  # noqa: BLE001 - one path failing (e.g. compile) must not hide the others
        report["bench"].append({"path": kind, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    ok = [r for r in report["bench"] if "days_per_s" in r]
    report["fastest_path"] = max(ok, key=lambda r: r["days_per_s"])["path"] if ok else None
    _write(report, out)


def _dryrun(cache_path: Path, cfg, work: Path, model: str) -> dict[str, Any]:
    """`run_dryrun` on the cache: its timing and the gate's GPU criterion."""
    from atft_core.dryrun import run_dryrun

    t1 = time.perf_counter()
    res = run_dryrun(cache_path, cfg, work / "dryrun")
    crit = {c.name: c for c in res.gate.criteria}["gpu_util_mean"]
    return {
        "seconds": round(time.perf_counter() - t1, 1), "gate_passed": res.gate.passed,
        "gate_gpu_util": crit.value, "gate_gpu_criterion": crit.passed, "gate_gpu_note": crit.note,
        "epoch_seconds": res.metrics.get("epoch_seconds"),
        "train_days_per_epoch": res.metrics.get("train_days_per_epoch"),
        "val_rankic": res.metrics.get("val_rankic"), "gpu_mem_peak_mb": res.gpu.get("mem_peak_mb"),
        "torch_max_allocated_mb": res.gpu.get("torch_max_allocated_mb"),
        "static_shapes": cfg.train.static_shapes, "model": model,
    }


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["wheels"] = install_missing(a.wheels, a.site)
    import torch

    from atft_core.data.cache.store import open_cache
    from atft_core.train.trainer import resolve_device
    from bench.synthetic_cache import synthetic_grid_cache

    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    small = not cuda
    stocks, days, features = a.stocks or (4000 if cuda else 60), a.days or (1000 if cuda else 120), \
        a.features or (300 if cuda else 16)
    report.update({"device": str(device), "gpu": torch.cuda.get_device_name(device) if cuda else None,
                   "torch": torch.__version__, "python": sys.version.split()[0],
                   "forbidden_imports": sorted(m for m in FORBIDDEN if m in sys.modules),
                   "size": {"stocks": stocks, "days": days, "features": features,
                            "model": "tiny" if small else a.model}})
    _write(report, a.out)
    t0 = time.perf_counter()
    if cuda and not a.no_tests:
        report["tests"] = run_tests(a.tests_timeout)
        _write(report, a.out)
    work = a.work_dir or Path("/tmp/atft-gpu-check")
    t_cache = time.perf_counter()
    cache_path = synthetic_grid_cache(stocks, days, features, root=work / "caches")
    cache = open_cache(cache_path)
    report["cache_s"] = round(time.perf_counter() - t_cache, 1)
    cfg = _configs(str(device), small, a.model)
    timed = a.timed_days or (200 if cuda else 12)
    report["bench"] = []
    _bench_path(report, a.out, "eager", cache, cfg, timed)
    _bench_path(report, a.out, "static", cache, cfg, timed)
    report["reference_memory_estimate"] = None if cuda else estimate_memory(features=300, window=cfg.data.window)
    report["dryrun"] = _dryrun(cache_path, cfg, work, "tiny" if small else a.model)
    _write(report, a.out)
    if cuda and not a.no_compile:  # last: compiling can take minutes, the rest is written by then
        _bench_path(report, a.out, "static+compile", cache, cfg, timed)
    report["forbidden_imports"] = sorted(m for m in FORBIDDEN if m in sys.modules)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    _write(report, a.out)
    print(json.dumps({k: v for k, v in report.items() if k != "tests"}, indent=1, default=str))
    if "tests" in report:
        print("tests:", report["tests"]["summary"])
    return 0 if (report.get("tests", {}).get("passed", True) and not report["forbidden_imports"]) else 1

if __name__ == "__main__":
    sys.exit(main())
