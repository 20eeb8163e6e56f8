"""HPO overheads: Optuna storage calls per trial against training; two ways to fan out local workers.

    python -m bench.bench_hpo [--storage URL] [--trials 3] [--epochs 2] [--train-days 40] [--device cpu]
    python -m bench.bench_hpo --fanout [--workers 2] [--fanout-trials 8] [--trial-s 0.5]

Storage: runs a real study (queue + one in-process worker of `atft_core.hpo`, real training on a
small demo panel) and prints, per trial, the time in storage calls (everything `study.optimize` does
outside the objective: stale check, claim of a queued trial, tell; plus report + should_prune every
epoch), in the sampler (TPE: suggest, which also writes the parameters), and in training; then the
ratio storage / training. Then the same machinery with a no-op objective, which isolates the fixed
storage cost of one trial from the load of the machine.

Fan-out (`--fanout`): K workers drain N queued trials of a fixed length (sleep) on one journal
study, once as K spawned processes (`run_worker_processes`, what `atft hpo --parallel K` uses) and
once as K tasks of a Prefect flow with `ProcessPoolTaskRunner`. Prints each one's wall time from
start to the last report against the ideal N x trial / K, and the two against each other.

The default storage is a SQLite file in a temporary folder; pass a PostgreSQL URL to measure a server.
`run(quick)` gives the same measurement as one row for `python -m bench.run_all`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from atft_core.config import AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo
from atft_core.hpo.config import HpoConfig
from atft_core.hpo.objective import report_epoch
from atft_core.hpo.storage import default_storage_url, display_url
from atft_core.hpo.study import prepare_study
from atft_core.hpo.worker import WorkerReport, run_worker, run_worker_processes, share, worker_seed

SPACE = ("params:\n"
         "  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
         "  train.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}\n"
         "  model.dropout: {type: float, low: 0.0, high: 0.3}\n"
         "  loss.rankic_weight: {type: float, low: 0.0, high: 1.0}\n"
         "  loss.cs_ic_weight: {type: float, low: 0.0, high: 1.0}\n"
         "  loss.sharpe_weight: {type: float, low: 0.0, high: 0.3}\n")


def noop(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """Reports every epoch like training does, trains nothing: what is left is storage and sampling."""
    for epoch in range(cfg.train.max_epochs):
        report_epoch(trial, epoch, 0.01 * epoch, cfg.train.max_epochs)
    return 0.01


def fixed_length(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """A trial of a known length ($ATFT_BENCH_TRIAL_S, default 0.5 s): the fan-out bench's unit of work."""
    import os

    time.sleep(float(os.environ.get("ATFT_BENCH_TRIAL_S", "0.5")))
    return cfg.train.lr


def _study(work: Path, base: AtftConfig, hpo: HpoConfig, cache: Path | str, score=None) -> WorkerReport:
    batch = prepare_study(hpo, hpo.storage or default_storage_url(work))
    return run_worker(cache, base, hpo, storage_url=batch.storage_url, n_trials=batch.queued, score=score)


def _print(title: str, report: WorkerReport) -> None:
    print(f"\n{title}")
    print(f"{'trial':>5} {'state':>9} {'train s':>9} {'storage s':>10} {'sample s':>9} {'storage/train':>14}  "
          "outside objective / report (s)")
    for t in report.trials:
        c = t["calls_s"]
        ratio = t["storage_s"] / t["train_s"] if t["train_s"] > 0 else float("nan")
        print(f"{t['number']:>5} {t['state']:>9} {t['train_s']:>9.3f} {t['storage_s']:>10.3f} {t['sample_s']:>9.3f} "
              f"{ratio:>14.4f}  {c.get('outside_objective', 0):.3f} / {c.get('report', 0):.3f}")


def measure(*, trials: int, epochs: int, train_days: int, stocks: int, days: int, val_days: int = 40,
            device: str = "cpu", storage: str | None = None, echo: bool = True) -> dict:
    """Real-training trials, then no-op trials, on one storage; per-trial timings of both."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="atft-bench-hpo-") as tmp:
        work = Path(tmp)
        data = work / "demo.parquet"
        generate_demo(data, DemoConfig(stocks=stocks, days=days, features=16, market="planted"))
        cache = build_cache(data, work / "cache", progress=False).path
        (work / "space.yaml").write_text(SPACE)
        base = AtftConfig.from_dict({
            "data": {"window": 10, "min_stocks": 10, "split": {"val_days": val_days}},
            "model": {"hidden": 16, "attn_heads": 2, "gat_heads": [2]},
            "train": {"device": device, "max_train_days": train_days or None}})
        hpo = HpoConfig(n_trials=trials, max_epochs=epochs, pruner="none", storage=storage,
                        search_space=str(work / "space.yaml"), study_name=f"bench-{int(time.time())}")
        where = display_url(hpo.storage or default_storage_url(work))
        if echo:
            print(f"storage: {where}; {trials} trial(s) x {epochs} epoch(s), {stocks} stocks x {days} days, "
                  f"{train_days or 'all'} training days per epoch, device {device}")
        real = _study(work, base, hpo, cache)
        noop_cfg = HpoConfig(**{**hpo.to_dict(), "study_name": hpo.study_name + "-noop", "n_trials": max(5, trials)})
        fixed = _study(work, base, noop_cfg, cache, noop)
    storage_s = sum(t["storage_s"] for t in real.trials)
    train_s = sum(t["train_s"] for t in real.trials)
    return {"storage": where, "real": real, "noop": fixed, "storage_s": storage_s, "train_s": train_s,
            "fixed_per_trial_s": statistics.median(t["storage_s"] + t["sample_s"] for t in fixed.trials)}


def _fanout_hpo(work: Path, name: str, trials: int, workers: int) -> HpoConfig:
    work.mkdir(parents=True, exist_ok=True)
    (work / "space.yaml").write_text(SPACE)
    return HpoConfig(n_trials=trials, parallel=workers, max_epochs=1, pruner="none", study_name=name,
                     storage=default_storage_url(work, processes=workers), search_space=str(work / "space.yaml"))


def _prefect_worker(storage_url: str, hpo: dict, n_trials: int, worker_index: int) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_worker("unused", AtftConfig(), HpoConfig.from_dict(hpo), storage_url=storage_url, n_trials=n_trials,
                      worker_index=worker_index, sampler_seed=worker_seed(0, 0, worker_index),
                      score=fixed_length).to_dict()


def measure_fanout(*, workers: int = 2, trials: int = 8, trial_s: float = 0.5, echo: bool = True) -> dict:
    """Wall seconds for K workers to drain N fixed-length trials: spawned processes vs ProcessPoolTaskRunner."""
    import os

    from prefect import flow, task
    from prefect.task_runners import ProcessPoolTaskRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["ATFT_BENCH_TRIAL_S"] = str(trial_s)
    worker_task = task(_prefect_worker, name="bench-hpo-worker", persist_result=False)
    out: dict = {"workers": workers, "trials": trials, "trial_s": trial_s, "ideal_s": trials * trial_s / workers}
    with tempfile.TemporaryDirectory(prefix="atft-bench-fanout-") as tmp:
        # Spawned processes, each running study.optimize on its share (atft hpo --parallel K).
        hpo = _fanout_hpo(Path(tmp) / "procs", "procs", trials, workers)
        batch = prepare_study(hpo, hpo.storage)
        t0 = time.perf_counter()
        reports, errors = run_worker_processes("unused", AtftConfig(), hpo, Path(tmp) / "procs",
                                               storage_url=batch.storage_url, first_number=0, queued=batch.queued,
                                               workers=workers, score=fixed_length)
        out["processes_s"] = time.perf_counter() - t0
        assert not errors and sum(len(r.trials) for r in reports) == trials, errors

        # The same shares as tasks of a flow on ProcessPoolTaskRunner (timed inside the flow: no server start-up).
        hpo = _fanout_hpo(Path(tmp) / "prefect", "prefect", trials, workers)
        batch = prepare_study(hpo, hpo.storage)

        @flow(name="bench-hpo-fanout", task_runner=ProcessPoolTaskRunner(max_workers=workers))
        def fan_out() -> float:
            t0 = time.perf_counter()
            futures = [worker_task.submit(batch.storage_url, hpo.to_dict(), share(batch.queued, workers, i), i)
                       for i in range(workers)]
            done = [f.result() for f in futures]
            assert sum(len(r["trials"]) for r in done) == trials
            return time.perf_counter() - t0

        t1 = time.perf_counter()
        out["prefect_s"] = fan_out()
        out["prefect_with_flow_s"] = time.perf_counter() - t1
    if echo:
        print(f"fan-out: {workers} workers drain {trials} trials of {trial_s}s on a journal study "
              f"(ideal {out['ideal_s']:.2f}s)")
        print(f"  spawned processes (run_worker_processes):   {out['processes_s']:6.2f}s "
              f"(overhead {out['processes_s'] - out['ideal_s']:+.2f}s)")
        print(f"  Prefect ProcessPoolTaskRunner, in the flow: {out['prefect_s']:6.2f}s "
              f"(overhead {out['prefect_s'] - out['ideal_s']:+.2f}s; "
              f"with flow start {out['prefect_with_flow_s']:.2f}s)")
        print(f"  ProcessPoolTaskRunner / spawned processes:  {out['prefect_s'] / out['processes_s']:.2f}x")
    return out


def run(quick: bool) -> list:
    """One row for `bench.run_all`: storage seconds per trial against training seconds per trial."""
    from bench.common import Row, verdict

    trials, epochs, train_days, val_days = (2, 1, 4, 10) if quick else (3, 2, 40, 40)
    m = measure(trials=trials, epochs=epochs, train_days=train_days, stocks=60, days=260, val_days=val_days,
                echo=False)
    n = len(m["real"].trials)
    storage, train = m["storage_s"] / n, m["train_s"] / n
    return [Row("hpo_storage", f"HPO storage calls per trial, {trials} trials x {epochs} epoch(s), SQLite",
                storage, "s", train, "s", train / storage, "training time / storage time per trial",
                "storage < 1 % of training (ratio >= 100)", "INFO" if quick else verdict(train / storage >= 100),
                note=f"stale check + claim + tell + report/prune every epoch, per trial, against that trial's "
                     f"training ({train_days} days per epoch, demo panel 60 x 260, CPU). Fixed cost of a trial "
                     f"with no training (storage + TPE sampling): {m['fixed_per_trial_s']:.3f} s.")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal:PATH (default: SQLite in a temp dir)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-days", type=int, default=40, help="training days per epoch (0 = all)")
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=260)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fanout", action="store_true", help="measure the local fan-out instead (no training)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fanout-trials", type=int, default=8)
    p.add_argument("--trial-s", type=float, default=0.5)
    a = p.parse_args(argv)
    if a.fanout:
        measure_fanout(workers=a.workers, trials=a.fanout_trials, trial_s=a.trial_s)
        return 0
    m = measure(trials=a.trials, epochs=a.epochs, train_days=a.train_days, stocks=a.stocks, days=a.days,
                device=a.device, storage=a.storage)
    _print("real training", m["real"])
    _print("no-op objective (storage + sampler only)", m["noop"])
    print(f"\nstorage / training, real trials: {m['storage_s']:.3f}s / {m['train_s']:.3f}s = "
          f"{m['storage_s'] / m['train_s']:.4f}")
    per_trial = m["fixed_per_trial_s"]
    print(f"fixed cost per trial (no-op, median storage + sampler): {per_trial:.3f}s; a trial must train "
          f"{per_trial / 0.01:.0f}s for it to stay under 1 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
