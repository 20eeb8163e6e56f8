"""HPO storage overhead: seconds spent in Optuna storage calls per trial, against the trial's training.

    python -m bench.bench_hpo [--storage URL] [--trials 3] [--epochs 2] [--train-days 40] [--device cpu]

Runs a real study (`run_study`, in-process worker, real training on a small demo panel) and prints,
per trial, the time in storage calls (claim a queued trial + stale check, user attributes, report +
should_prune every epoch, tell), in the sampler (TPE: suggest, which also writes the parameters), and
in training; then the ratio storage / training. Then the same machinery with a no-op objective, which
isolates the fixed storage cost of one trial from the load of the machine.

The default storage is a SQLite file in a temporary folder; pass a PostgreSQL URL to measure a server.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from atft_core.cache import build_cache
from atft_core.config import DryRunConfig
from atft_core.demo import DemoConfig, generate_demo
from atft_core.hpo import (
    HpoConfig,
    TrialContext,
    WorkerReport,
    default_storage_url,
    display_url,
    prepare_study,
    run_worker,
)

SPACE = ("params:\n"
         "  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
         "  train.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}\n"
         "  model.dropout: {type: float, low: 0.0, high: 0.3}\n"
         "  loss.rankic_weight: {type: float, low: 0.0, high: 1.0}\n"
         "  loss.cs_ic_weight: {type: float, low: 0.0, high: 1.0}\n"
         "  loss.sharpe_weight: {type: float, low: 0.0, high: 0.3}\n")


def noop(ctx: TrialContext) -> float:
    """Reports every epoch like training does, trains nothing: what is left is storage and sampling."""
    for epoch in range(ctx.cfg.train.max_epochs):
        ctx.report(epoch, 0.01 * epoch)
    return 0.01


def _study(work: Path, base: DryRunConfig, hpo: HpoConfig, cache: Path | str, objective=None) -> WorkerReport:
    batch = prepare_study(hpo, hpo.storage or default_storage_url(work))
    return run_worker(cache, base, hpo, work, storage_url=batch.storage_url, objective=objective)


def _print(title: str, report: WorkerReport) -> None:
    print(f"\n{title}")
    print(f"{'trial':>5} {'state':>9} {'train s':>9} {'storage s':>10} {'sample s':>9} {'storage/train':>14}  "
          "claim / attrs / report / tell (s)")
    for t in report.trials:
        c = t["calls_s"]
        ratio = t["storage_s"] / t["train_s"] if t["train_s"] > 0 else float("nan")
        print(f"{t['number']:>5} {t['state']:>9} {t['train_s']:>9.3f} {t['storage_s']:>10.3f} {t['sample_s']:>9.3f} "
              f"{ratio:>14.4f}  {c.get('claim', 0):.3f} / {c.get('attrs', 0):.3f} / {c.get('report', 0):.3f} / "
              f"{c.get('tell', 0):.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal:PATH (default: SQLite in a temp dir)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-days", type=int, default=40, help="training days per epoch (0 = all)")
    p.add_argument("--stocks", type=int, default=60)
    p.add_argument("--days", type=int, default=260)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="atft-bench-hpo-") as tmp:
        work = Path(tmp)
        data = work / "demo.parquet"
        generate_demo(data, DemoConfig(stocks=args.stocks, days=args.days, features=16))
        cache = build_cache(data, work / "cache", progress=False).path
        (work / "space.yaml").write_text(SPACE)
        base = DryRunConfig.from_dict({
            "data": {"window": 10, "min_stocks": 10, "split": {"val_days": 40}},
            "model": {"hidden": 16, "attn_heads": 2, "gat_heads": [2]},
            "train": {"device": args.device, "max_train_days": args.train_days or None}})
        hpo = HpoConfig(n_trials=args.trials, max_epochs=args.epochs, pruner="none", storage=args.storage,
                        search_space=str(work / "space.yaml"), study_name=f"bench-{int(time.time())}")
        print(f"storage: {display_url(hpo.storage or default_storage_url(work))}; {args.trials} trial(s) x "
              f"{args.epochs} epoch(s), {args.stocks} stocks x {args.days} days, device {args.device}")

        real = _study(work / "real", base, hpo, cache)
        _print("real training", real)
        fixed = _study(work / "noop", base, HpoConfig(**{**hpo.to_dict(), "study_name": hpo.study_name + "-noop",
                                                          "n_trials": max(5, args.trials)}), cache, noop)
        _print("no-op objective (storage + sampler only)", fixed)

    storage = sum(t["storage_s"] for t in real.trials)
    train = sum(t["train_s"] for t in real.trials)
    per_trial = statistics.median(t["storage_s"] + t["sample_s"] for t in fixed.trials)
    print(f"\nstorage / training, real trials: {storage:.3f}s / {train:.3f}s = {storage / train:.4f}")
    print(f"fixed cost per trial (no-op, median storage + sampler): {per_trial:.3f}s; a trial must train "
          f"{per_trial / 0.01:.0f}s for it to stay under 1 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
