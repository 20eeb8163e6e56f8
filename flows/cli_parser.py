"""The `atft` command line's arguments: every command, flag, type and help text, nothing that runs.

A bad value is a usage error here (argparse, exit 2) before any command starts; ranges that
depend on the config file are checked by the commands (`AtftConfig.validated`).
"""

from __future__ import annotations

import argparse
from typing import Any

from atft_core.config import TRAIN_RECIPE

DESCRIPTION = "`atft` command line. Exit codes: 0 ok / gate passed, 1 gate failed or run failed, 2 bad input."

def _at_least(low: int):
    """argparse type: an integer >= low (a bad value is a usage error, exit 2, before anything runs)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value}")
    return value


def _add_gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-path", default=None, help="parquet file, directory or s3:// URI (default: the demo data)")
    p.add_argument("--cache-dir", default=None, help="default: $ATFT_HOME/cache")
    p.add_argument("--output-dir", default=None, help="each run gets its own folder below this (default: "
                   "$ATFT_HOME/runs)")
    p.add_argument("--max-epochs", type=_at_least(1), default=None, help="epochs of the gate's dry run")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--min-gpu-util", type=_fraction, default=None)
    p.add_argument("--min-rankic", type=float, default=None)
    p.add_argument("--require-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="fail the gate when no GPU is visible (GPU pool); default: not applicable on CPU")
    p.add_argument("--config", default=None, help="YAML with sections data/cache/model/loss/train/gate")
    p.add_argument("--ensemble", type=_at_least(1), default=None, metavar="K",
                   help="train K models from seeds seed..seed+K-1 and predict their mean (train.ensemble)")
    p.add_argument("--resume", dest="resume_from", default=None, metavar="CHECKPOINT",
                   help="continue training from an earlier run's checkpoint.pt (same panel layout)")
    _add_profile_arg(p)


def _add_profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, choices=["auto", "atft", "gogooku3"],
                   help="column layout of the panel (cache.columns.profile): gogooku3 reads feat_ret_{h}d labels "
                        "and sector33_code/sector33 as they are; auto (default) detects it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atft", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the built-in demo market (parquet + oracle)")
    p.add_argument("--out", required=True)
    p.add_argument("--stocks", type=int, default=None)
    p.add_argument("--days", type=int, default=None)
    p.add_argument("--features", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--start", default=None, help="first trading day (e.g. 2016-01-04 for 2,500 days)")
    p.add_argument("--market", choices=("prices", "planted"), default=None,
                   help="prices (default): simulated from prices, real-market effects and a feature pipeline; "
                        "planted: a signal of known form, for tests of the model's mechanisms")

    p = sub.add_parser("build-cache", help="validate a panel and build its Arrow cache")
    p.add_argument("--data-path", required=True)
    p.add_argument("--cache-dir", default=None, help="default: $ATFT_HOME/cache")
    p.add_argument("--config", default=None)
    _add_profile_arg(p)

    p = sub.add_parser("dryrun", help="build cache, train briefly, apply the gate (the nightly go/no-go)")
    _add_gate_args(p)

    p = sub.add_parser("train", help="train one configuration for real: by default the measured recipe, a seed "
                                     f"ensemble of {TRAIN_RECIPE['ensemble']} runs of "
                                     f"{TRAIN_RECIPE['max_epochs']} epochs each (validation picks each run's "
                                     "epoch), unless the config, --ensemble or --max-epochs say otherwise; "
                                     "same run folder as dryrun")
    _add_gate_args(p)

    p = sub.add_parser("pipeline", help="the full flow: cache -> gate -> (mode hpo) HPO study")
    _add_gate_args(p)
    p.add_argument("--mode", choices=["dryrun", "hpo"], default="dryrun")
    p.add_argument("--n-trials", type=_at_least(1), default=5)
    p.add_argument("--hpo-max-epochs", type=_at_least(1), default=None,
                   help="epochs of each HPO trial (default: --max-epochs)")
    p.add_argument("--study-name", default="atft")
    p.add_argument("--storage", default=None)
    p.add_argument("--challenger-ensemble", type=_at_least(1), default=None, metavar="K",
                   help="mode hpo: models in the night's challenger (default: nightly.challenger_ensemble, 3)")
    p.add_argument("--challenger-epochs", type=_at_least(1), default=None, metavar="N",
                   help="mode hpo: epochs of each challenger model (default: nightly.challenger_epochs, 3)")

    p = sub.add_parser("report", help="signal report of a predictions file (IC series, deciles, equity curve)")
    p.add_argument("--predictions", required=True, help="test_predictions.parquet (or val_) written by a dry run")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--min-stocks", type=int, default=20)

    p = sub.add_parser("predict", help="score and rank every stock of a panel on one day with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoint.pt written by atft dryrun or atft train")
    p.add_argument("--data-path", default=None, help="parquet file, directory or s3:// URI (default: the demo data)")
    p.add_argument("--date", default=None, help="YYYY-MM-DD, a trading day of the panel (default: its last day, "
                                                "where no target exists yet)")
    p.add_argument("--out", default=None, help="parquet to write (default: predictions-DATE.parquet next to the "
                                               "checkpoint)")
    p.add_argument("--cache-dir", default=None, help="default: $ATFT_HOME/cache")

    _add_hpo_parser(sub)

    p = sub.add_parser("champion", help="the model the team trades: show it, promote a run by hand, roll back")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="the champion, its evidence, the last decisions, the live record and health")
    promote = actions.add_parser("promote", help="seat a run's model as champion by hand (undo: rollback)")
    promote.add_argument("run", metavar="RUN", help="a run folder with checkpoint.pt and stage.json (a path, or a "
                                                    "folder name under $ATFT_HOME/runs)")
    actions.add_parser("rollback", help="put the previous champion back, byte for byte")

    # strings: cmd_gc checks them, so a bad value is one line (exit 2), not argparse's usage block
    p = sub.add_parser("gc", help="remove old run folders, unused caches and temp leftovers under ATFT_HOME "
                                  "(never what a running job uses)")
    p.add_argument("--keep-runs", default=None, metavar="N", help="run folders to keep, newest first (default 30)")
    p.add_argument("--cache-days", default=None, metavar="K", help="keep caches used in the last K days (default 14)")
    p.add_argument("--tmp-hours", default=None, metavar="H", help="remove temp leftovers older than H hours "
                                                                 "(default 24)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    return parser


def _add_hpo_parser(sub: Any) -> None:
    p = sub.add_parser("hpo", help="short Optuna study: N trials on K workers sharing one storage")
    p.add_argument("--data-path", default=None, help="parquet file, directory or s3:// URI (default: the demo data)")
    p.add_argument("--n-trials", type=_at_least(1), default=5,
                   help="trials this run adds to the study (all workers together)")
    p.add_argument("--max-epochs", type=_at_least(1), default=2)
    p.add_argument("--study-name", default="atft")
    p.add_argument("--output-dir", default=None, help="hpo.json, trials.csv, plots/ (default: $ATFT_HOME/runs/hpo)")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal:PATH (default: OUTPUT_DIR/optuna.db); "
                   "${VAR} is filled from the environment")
    p.add_argument("--parallel", type=_at_least(1), default=1, help="worker processes pulling trials from the study")
    p.add_argument("--cache-dir", default=None, help="default: $ATFT_HOME/cache")
    p.add_argument("--config", default=None, help="base config YAML (sections data/cache/model/loss/train)")
    p.add_argument("--search-space", default=None, help="search space YAML (default: the packaged one)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, help="seconds after which workers take no new trial")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--gpu-stage", default="auto", choices=["auto", "deployment", "local"],
                   help="deployment: workers are runs of atft-hpo-worker/gpu on the gpu pool (needs PostgreSQL "
                        "for K > 1); local: K processes here; auto: the pool only under a deployment")


