"""A demo "week": seven successive nights of the nightly product, through `atft pipeline --mode hpo`.

    python -m bench.demo_week --out /tmp/demo-week            # about 5 minutes a night on 2 cores

A fresh work root; the built-in demo market (the price market, seed 11: neither a tuning seed nor a
goal seed, so its days were never looked at) is cut at successive trading days
(`atft_core.nightly.replay.panel_as_of`: no row after the night, no target whose returns had not
happened yet). Before the first night a person seats a champion by hand (`atft train` on the panel
of the night before, then `atft champion promote RUN`); then each night runs the nightly as the
deployment does, with a smaller study so the week fits an afternoon (the sizes are in the summary).

Writes to --out: night-N.log (each night's command line output), ranks-DATE.parquet (the last
night's), live.png (the live record), decisions.jsonl, champion-show.txt and summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
CONFIG = """\
# the demo week: the nightly's recipe with a single-model challenger (the week fits an afternoon on 2 cores)
nightly: {challenger_ensemble: 1, challenger_epochs: 3}
train: {progress: false}
"""


def atft(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flows.cli", *args]
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if log is not None:
        log.write_text(f"$ atft {' '.join(args)}\n{run.stdout}\n{run.stderr[-4000:] if run.returncode else ''}")
    if run.returncode != 0:
        raise SystemExit(f"atft {' '.join(args)} exited {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--nights", type=int, default=7)
    parser.add_argument("--stocks", type=int, default=200)
    parser.add_argument("--days", type=int, default=600)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--n-trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="the gate's and each trial's epochs")
    args = parser.parse_args(argv)

    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo
    from atft_core.nightly.replay import panel_as_of, trading_days

    out = Path(args.out).resolve()
    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "ATFT_"))}
    env.update(ATFT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO))
    (out / "config.yaml").write_text(CONFIG)
    full = out / "demo-full.parquet"
    if not full.exists():
        generate_demo(full, DemoConfig(stocks=args.stocks, days=args.days, seed=args.seed))
    days = trading_days(full)
    nights = days[-args.nights - 1:-1]  # the full panel's last day has no return to score it with
    before = days[days.index(nights[0]) - 1]

    t0 = time.monotonic()
    panel = panel_as_of(full, before, out / "panels" / f"{before}.parquet")
    run = atft("train", "--data-path", str(panel), "--config", str(out / "config.yaml"), "--ensemble", "1",
               env=env, log=out / "night-0-train.log")
    run_dir = next(line.split(": ", 1)[1] for line in run.stdout.splitlines() if line.startswith("run folder: "))
    atft("champion", "promote", run_dir, env=env, log=out / "night-0-promote.log")
    print(f"night 0 ({before}): champion seated by hand from {run_dir} ({time.monotonic() - t0:.0f}s)", flush=True)

    for i, night in enumerate(nights, start=1):
        t = time.monotonic()
        panel = panel_as_of(full, night, out / "panels" / f"{night}.parquet")
        run = atft("pipeline", "--mode", "hpo", "--data-path", str(panel), "--config", str(out / "config.yaml"),
                   "--n-trials", str(args.n_trials), "--max-epochs", str(args.epochs),
                   "--hpo-max-epochs", str(args.epochs), env=env, log=out / f"night-{i}.log")
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith(("champion:", "live health:", "gate:"))]
        print(f"night {i} ({night}, {time.monotonic() - t:.0f}s): " + " | ".join(lines), flush=True)

    write_summary(out, env, header=f"Demo: price market, seed {args.seed}, {args.stocks} stocks x {args.days} days; "
                                     f"nights {nights[0]} .. {nights[-1]}; each night `atft pipeline --mode hpo "
                                     f"--n-trials {args.n_trials} --max-epochs {args.epochs} --hpo-max-epochs "
                                     f"{args.epochs}` with the config below; {time.monotonic() - t0:.0f} s in all.")
    return 0


def _markdown(df: pl.DataFrame) -> list[str]:
    cells = [[("" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v)) for v in row]
             for row in df.iter_rows()]
    return ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns),
            *("| " + " | ".join(r) + " |" for r in cells)]


def write_summary(out: Path, env: dict[str, str], header: str) -> Path:
    """summary.md of a finished week (its registry under OUT/home), and copies of what a person looks at."""
    registry = out / "home" / "registry"
    show = atft("champion", "show", env=env, log=out / "champion-show.txt")
    shutil.copy2(registry / "live" / "live.png", out / "live.png")
    shutil.copy2(registry / "decisions.jsonl", out / "decisions.jsonl")
    last_ranks = sorted((registry / "ranks").glob("ranks-*.parquet"))[-1]
    shutil.copy2(last_ranks, out / last_ranks.name)
    history = pl.read_csv(registry / "live" / "history.csv").select(
        "date", "model", "horizon", "rankic", "spread", "turnover", "n_stocks", "scored_on")
    decisions = [json.loads(line) for line in (registry / "decisions.jsonl").read_text().splitlines()]
    def interval(d: dict) -> str:
        diff = d.get("difference")
        return f"{diff['mean']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}]" if diff else ""

    rows = pl.DataFrame([{"night": d.get("night") or "(by hand)", "how": d["how"],
                          "verdict": "PROMOTED" if d["promoted"] else "kept",
                          "challenger - champion [95 %]": interval(d),
                          "challenger": d.get("challenger_rankic"), "champion": d.get("champion_rankic"),
                          "peer": d.get("peer_rankic"), "days": d.get("n_days")} for d in decisions])
    ranks = pl.read_parquet(last_ranks)
    h0 = min(int(c.split("_")[1].rstrip("d")) for c in ranks.columns if c.startswith("score_"))
    keep = ["Code", "sector", f"score_{h0}d", f"rank_{h0}d", f"decile_{h0}d",
            *(c for c in ranks.columns if c.startswith(("peer_score_", "x_")))]
    ranked = ranks.sort(f"rank_{h0}d").select(keep)
    summary = ["# Demo week", "", header, "", "```yaml", CONFIG.strip(), "```", "",
               "## Champion decisions (registry/decisions.jsonl; mean daily RankIC on the compared test days)", "",
               *_markdown(rows), "", "## atft champion show", "", "```", show.stdout.strip(), "```", "",
               "## Live record (registry/live/history.csv; plot: live.png)", "", *_markdown(history), "",
               f"## Tomorrow's ranks of the last night ({last_ranks.name}): top and bottom 5 by the {h0}d score", "",
               *_markdown(pl.concat([ranked.head(5), ranked.tail(5)])), ""]
    (out / "summary.md").write_text("\n".join(summary))
    print(f"wrote {out / 'summary.md'}")
    return out / "summary.md"


if __name__ == "__main__":
    sys.exit(main())
