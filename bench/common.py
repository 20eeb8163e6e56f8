"""Shared pieces of the benchmark suite: the result row, timers, machine facts, bench datasets.

Every benchmark reports a ratio against a baseline measured in the same process, right next to it,
because this machine is shared: absolute times move with the load, ratios much less. Timers take
the best of a few repeats (the run least disturbed by other processes) unless a row says otherwise.

Datasets and caches live under ``.atft/bench/`` (git-ignored; override with ``ATFT_BENCH_DIR``) and
are reused across runs: a synthetic panel is keyed by its sizes and seed, a cache by its content.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VERDICTS = ("PASS", "FAIL", "INFO", "SKIP", "ERROR")


def bench_dir() -> Path:
    d = Path(os.environ.get("ATFT_BENCH_DIR", REPO / ".atft" / "bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Row:
    """One line of the table.

    ratio is always "how many times better than the baseline" for speed rows (baseline time /
    measured time, or measured rate / baseline rate); rows without a natural baseline say what
    their ratio is in `ratio_meaning` (e.g. measured / target budget, 10x-size / 1x-size).
    verdict: PASS / FAIL against `target`, INFO where there is no target (or, in quick mode, where the
    target is an absolute time for the full size), SKIP with the reason in `note`, ERROR when the
    benchmark itself raised.
    """

    key: str  # stable identifier (the row's name carries sizes, which change with --quick)
    name: str
    measured: float
    unit: str
    baseline: float | None
    baseline_unit: str
    ratio: float
    ratio_meaning: str
    target: str
    verdict: str
    note: str = ""
    measured_text: str | None = None  # overrides the formatted number (e.g. "> 300 s")

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} not in {VERDICTS}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("measured", "baseline", "ratio"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fmt_num(v: float | None, unit: str = "") -> str:
    """3 significant digits; seconds below 0.1 as milliseconds; large numbers as 1.23e6."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if unit == "s" and 0 < abs(v) < 0.1:
        v, unit = v * 1e3, "ms"
    a = abs(v)
    if a >= 1e5:
        m, e = f"{v:.2e}".split("e")
        s = f"{m}e{int(e)}"
    elif a >= 100 or a == 0:
        s = f"{v:,.0f}"
    else:
        s = f"{v:.3g}"
    return f"{s} {unit}".strip()


def fmt_ratio(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}x"
    if v >= 10:
        return f"{v:.1f}x"
    return f"{v:.2f}x"


# -- timing ---------------------------------------------------------------------------------------
def best_of(fn: Callable[[], Any], repeat: int = 3, warmup: int = 0) -> float:
    """Smallest wall time of `repeat` calls (seconds); `warmup` untimed calls first."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_of(fn: Callable[[], Any], repeat: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- machine --------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": usable, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_at_start": load,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def rss_now_mb() -> float:
    """Current resident set size of this process in MiB (not the peak: growth shows here)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- datasets -------------------------------------------------------------------------------------
def synthetic_panel(days: int, stocks: int, features: int, seed: int = 0, horizons: tuple[int, ...] = (1, 5),
                    drop: float = 0.02) -> Path:
    """A contract-valid random panel (parquet), written once per (sizes, seed) and reused.

    Rows are in file order date-major then code, like the vendor files; `drop` removes a random
    fraction of rows (halts). Features carry a weak planted signal on `feat_0` so metrics are
    not all noise.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = bench_dir() / "panels" / f"panel-d{days}-s{stocks}-f{features}-seed{seed}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dates = np.busday_offset("2015-01-05", np.arange(days), roll="forward").astype("datetime64[D]")
    codes = np.array([f"{1300 + i}0" for i in range(stocks)])
    n = days * stocks
    keep = rng.random(n) >= drop
    cols: dict[str, Any] = {
        "Date": pa.array(np.repeat(dates, stocks)[keep]),
        "Code": pa.array(np.tile(codes, days)[keep]),
        "Section": pa.array(np.tile(np.array(["Prime", "Standard", "Growth"])[np.arange(stocks) % 3], days)[keep]),
        "sector33_code": pa.array(np.tile(np.array(["0050", "1050", "3050", "3650", "5250", "9050"])
                                          [np.arange(stocks) % 6], days)[keep]),
    }
    x = rng.standard_normal((int(keep.sum()), features), dtype=np.float32)
    for j in range(features):
        cols[f"feat_{j:03d}"] = pa.array(x[:, j])
    for h in horizons:
        noise = rng.standard_normal(len(x), dtype=np.float32)
        cols[f"target_{h}d"] = pa.array((0.01 * (0.05 * x[:, 0] + noise)).astype(np.float32))
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    pq.write_table(pa.table(cols), tmp, row_group_size=max(1, min(n, 1_000_000)))
    os.replace(tmp, path)
    return path


def built_cache(data_path: Path, name: str) -> Path:
    """Cache of `data_path` under the bench folder (a hit after the first run)."""
    from atft_core.data.cache.build import build_cache

    return build_cache(data_path, bench_dir() / "caches" / name, progress=False).path


def demo_panel(stocks: int | None = None, days: int | None = None, features: int | None = None,
               seed: int = 0, market: str | None = None) -> Path:
    """The built-in demo market (defaults = `DemoConfig()`), generated once under the bench folder."""
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo

    d = DemoConfig()
    cfg = DemoConfig(stocks=stocks or d.stocks, days=days or d.days, features=features or d.features, seed=seed,
                     market=market or d.market)
    name = f"demo-{cfg.market}-s{cfg.stocks}-d{cfg.days}-f{cfg.features}-seed{seed}"
    path = bench_dir() / "demo" / name / "demo.parquet"
    if not path.exists():
        tmp = path.with_name(f"tmp-{os.getpid()}.parquet")
        generate_demo(tmp, cfg)
        Path(f"{tmp}.oracle.json").replace(f"{path}.oracle.json")
        tmp.replace(path)
    return path


def tiny_config(device: str = "cpu", *, hidden: int = 8, max_epochs: int = 1, max_train_days: int | None = None,
                val_days: int = 10, window: int = 10, min_stocks: int = 10):
    """A AtftConfig small enough for CPU benchmarks of the loop itself (not of the model)."""
    from atft_core.config import AtftConfig

    cfg = AtftConfig()
    cfg.data.window = window
    cfg.data.min_stocks = min_stocks
    cfg.data.split.val_days = val_days
    cfg.data.split.test_days = 0  # benchmarks time training; the held-out window only lengthens the panel
    cfg.model.hidden = hidden
    cfg.model.attn_heads = 2
    cfg.model.gat_heads = (2,)
    cfg.model.graph_topk = 4
    cfg.model.graph_sector_edges = 4
    cfg.model.static_dim = 4
    cfg.model.vsn_var_dim = 2
    cfg.train.device = device
    cfg.train.max_epochs = max_epochs
    cfg.train.max_train_days = max_train_days
    cfg.train.progress = False
    cfg.train.patience = 10**6
    return cfg


# -- child processes ------------------------------------------------------------------------------
@dataclass
class ChildResult:
    ok: bool  # exited 0 and wrote its JSON
    timed_out: bool
    seconds: float
    result: dict[str, Any] | None
    log_tail: str


def run_child(module: str, args: list[str], timeout_s: float) -> ChildResult:
    """Run ``python -m module --child-out FILE *args`` with a wall-clock limit (killed past it).

    Slow benchmarks (the dry run, torch.compile) run in their own process: a time limit can stop
    them cleanly, and their memory does not stay in the suite's process.
    """
    import json
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="atft-bench-child-") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env = {**os.environ, "PYTHONPATH": pythonpath}
        t0 = time.perf_counter()
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", module, "--child-out", str(out), *args], cwd=REPO,
                                    stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started (compiler workers)
                proc.wait()
                rc, timed_out = -9, True
        seconds = time.perf_counter() - t0
        text = log.read_text(errors="replace")
        result = json.loads(out.read_text()) if out.exists() else None
    return ChildResult(ok=rc == 0 and result is not None, timed_out=timed_out, seconds=seconds, result=result,
                       log_tail=text[-3000:])
