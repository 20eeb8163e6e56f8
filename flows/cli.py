"""`atft` command line. Exit codes: 0 ok / gate passed, 1 gate failed or run failed, 2 bad input.

The commands that train (`dryrun`, `pipeline`, `hpo`) run the Prefect flows, so with
PREFECT_API_URL set they show up in the UI like any deployment run; without it they run in-process.

Paths: one the user types is relative to where they typed it; one left out is the work root's
(ATFT_HOME, default ~/.local/share/atft: runs/, cache/, demo/, studies/). Both are made absolute
here, before any flow sees them (`_absolute_paths`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from atft_core.config import TRAIN_RECIPE
from atft_core.errors import ConfigError, DatasetError, TrainingError
from atft_core.workroot import WorkRoot, absolute

log = logging.getLogger("atft")

# Arguments that name a file or folder on this machine (an s3:// URI is left as it is).
_PATH_ARGS = ("data_path", "cache_dir", "output_dir", "config", "resume_from", "predictions", "out", "search_space",
              "checkpoint")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "botocore", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    parser = argparse.ArgumentParser(prog="atft", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="generate the built-in demo market (parquet + oracle)")
    p.add_argument("--out", required=True)
    p.add_argument("--stocks", type=int, default=None)
    p.add_argument("--days", type=int, default=None)
    p.add_argument("--features", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--start", default=None, help="first trading day (e.g. 2016-01-04 for 2,500 days)")

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


def cmd_train(args: argparse.Namespace) -> int:
    from atft_core.config import read_yaml_mapping
    if args.config:
        _config(args.config)  # a bad file fails here, before any server or run folder exists
    raw = read_yaml_mapping(args.config, "config file", "sections (data, model, ...)") if args.config else {}
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    for key, value in TRAIN_RECIPE.items():
        if getattr(args, key) is None and key not in train:
            setattr(args, key, value)
    if args.resume_from and "ensemble" not in train and args.ensemble == TRAIN_RECIPE["ensemble"]:
        args.ensemble = 1  # resuming continues the one model of that checkpoint
    return cmd_pipeline(args, "dryrun")


def write_best_config(base_config: str | None, best_params: dict[str, Any], path: Path) -> Path:
    """The study's best trial as a full config YAML that `atft train --config` accepts."""
    import yaml

    from atft_core.hpo.space import apply_params
    cfg = apply_params(_config(base_config), best_params)
    path.write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))
    return path


def _plain(o: Any) -> Any:
    """Tuples as lists: YAML's safe dumper writes no Python-specific tags."""
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o


def _config(path: str | None):
    from atft_core.config import AtftConfig
    return AtftConfig.from_yaml(path) if path else AtftConfig()


def cmd_demo_data(args: argparse.Namespace) -> int:
    from atft_core.data.demo import DemoConfig, generate_demo
    overrides = {k: getattr(args, k) for k in ("stocks", "days", "features", "seed", "start")
                 if getattr(args, k) is not None}
    oracle = generate_demo(args.out, DemoConfig(**overrides))
    print(f"wrote {args.out}, {args.out}.oracle.json and {args.out}.oracle.parquet")
    print(json.dumps(oracle.get("oracle", oracle), indent=1, default=str)[:2000])
    return 0


def cmd_build_cache(args: argparse.Namespace) -> int:
    import dataclasses

    from atft_core.data.cache import build_cache
    from atft_core.data.roles import with_profile
    from atft_core.s3.client import S3Options
    cfg = _config(args.config)
    cache_cfg = dataclasses.replace(cfg.cache, columns=with_profile(cfg.cache.columns, args.profile))
    # the training settings decide how much history is enough: a too-short file stops here, nothing written
    build = build_cache(args.data_path, args.cache_dir, cache_cfg, s3=S3Options.from_env(), require=cfg.data)
    _print_cache_summary(build)
    return 0


def _print_cache_summary(build: Any) -> None:
    s = build.summary
    print(f"cache {'HIT' if build.hit else 'built'}: {build.path}")
    print(f"  {s['stocks']} stocks x {s['days']} days x {s['features']} features, horizons {s['horizons']}, "
          f"{s['first_date']} .. {s['last_date']}, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.2f}s")
    for w in build.warnings:
        print(f"  warning: {w}")
    if s.get("leak_suspects"):
        print(f"  look-ahead suspects (the dry-run gate fails on no_lookahead): {', '.join(s['leak_suspects'])}")


def demo_data_path() -> Path:
    """The demo panel (generated on first use, then reused: its content fingerprint keys the cache)."""
    from flows.common import resolve_data_path
    return Path(resolve_data_path(None, WorkRoot.from_env()))


def _absolute_paths(args: argparse.Namespace, root: WorkRoot) -> None:
    """Every path argument absolute: typed ones against the current folder, left-out ones under `root`.

    A flow (in-process, or a deployment's run in a throwaway folder) then never resolves a path itself.
    """
    for name in _PATH_ARGS:
        if getattr(args, name, None) is not None:
            setattr(args, name, absolute(getattr(args, name)))
    if getattr(args, "storage", None):  # sqlite:///optuna.db: relative to where it was typed, too
        args.storage = WorkRoot(Path.cwd()).resolve_storage(args.storage)
    if hasattr(args, "cache_dir") and args.cache_dir is None:
        args.cache_dir = str(root.cache)
    if hasattr(args, "output_dir") and args.output_dir is None:
        args.output_dir = str(root.runs / "hpo" if args.command == "hpo" else root.runs)


def _flow_params(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "mode": mode,
        "data_path": args.data_path,  # None: the flow uses (and if needed generates) the demo panel
        "cache_dir": args.cache_dir,
        "output_dir": args.output_dir,
        "config_path": args.config,
    }
    for name in ("max_epochs", "device", "min_gpu_util", "min_rankic", "require_gpu", "profile", "resume_from",
                 "ensemble"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    for name in ("n_trials", "hpo_max_epochs", "study_name", "storage"):
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params


def check_inputs(args: argparse.Namespace, **overrides: Any) -> None:
    """Everything that can be checked before a flow starts: config ranges, the data path, the device.

    Raises ConfigError / DatasetError (exit 2) so a bad flag fails in a second, not after a server
    start and a cache build.
    """
    import dataclasses

    from atft_core.config import validate_config

    # The flow applies the same overrides (build_config); done here without importing Prefect so a
    # bad flag answers in a second.
    base = _config(args.config)
    for epochs in {args.max_epochs, getattr(args, "hpo_max_epochs", None)}:
        train = {k: v for k, v in (("max_epochs", epochs), ("device", args.device),
                                   ("resume_from", getattr(args, "resume_from", None)),
                                   ("ensemble", getattr(args, "ensemble", None))) if v is not None}
        gate = {k: v for k, v in overrides.items() if v is not None}
        cfg = validate_config(dataclasses.replace(base, train=dataclasses.replace(base.train, **train),
                                                  gate=dataclasses.replace(base.gate, **gate)))
    if getattr(args, "storage", None):
        from atft_core.hpo.storage import refuse_literal_password

        refuse_literal_password(args.storage)  # before a server starts or a cache is built
    data = getattr(args, "data_path", None)
    if data and not str(data).startswith("s3://"):
        from atft_core.data.source import resolve_input

        with resolve_input(data):  # a local path: exists, and a directory holds parquet files
            pass
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(["train.device = 'cuda' but no CUDA GPU is visible on this machine"],
                              hint="use --device auto (a GPU when there is one) or --device cpu")


def cmd_pipeline(args: argparse.Namespace, mode: str | None = None) -> int:
    check_inputs(args, min_gpu_util=args.min_gpu_util, min_rankic=args.min_rankic, require_gpu=args.require_gpu)
    from flows.pipeline import run_pipeline
    result = run_pipeline(**_flow_params(args, mode or args.mode))
    print(f"run folder: {result['run_dir']}")
    gate = result.get("gate") or {}
    for c in gate.get("criteria", []):
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c.get("passed")]
        threshold = "" if c.get("threshold") is None else f" (needs {c.get('op', '>')} {_num(c['threshold'])})"
        print(f"  {verdict:4s} {c['name']}: {_num(c.get('value'))}{threshold} {c.get('note', '')}".rstrip())
    _print_comparison(result.get("run_dir"))
    print(f"gate: {'PASSED' if gate.get('passed') else 'FAILED'}  (state: {result.get('state')})")
    return 0 if result.get("ok") else 1


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "n/a"}[v]
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_comparison(run_dir: str | None) -> None:
    """RankIC of the model next to the LightGBM peer, ridge and (demo data) the oracle, on the days
    the run's comparison was scored on (the held-out test days; validation when it has none)."""
    path = Path(run_dir or "") / "gate.json"
    if not run_dir or not path.exists():
        return
    report = json.loads(path.read_text())
    base = report.get("baselines", {})
    which = base.get("days", "validation")
    metrics = report.get("metrics", {})
    model = metrics.get("test_rankic") if which == "test" else metrics.get("val_rankic")
    ridge = (base.get("ridge") or {}).get("rankic")
    peer = (base.get("peer") or {}).get("rankic")
    oracle = (base.get("oracle") or {}).get("rankic")
    line = f"  {which} RankIC (1d): model {_num(model)} | LightGBM peer {_num(peer)} | ridge {_num(ridge)}"
    if oracle:
        line += f" | oracle {_num(oracle)}"
        if model is not None:
            line += f" (model reaches {model / oracle:.0%} of the oracle)"
    print(line)


def cmd_report(args: argparse.Namespace) -> int:
    from atft_core.evaluate.report import build_report, report_markdown
    report = build_report(args.predictions, args.output_dir, horizon=args.horizon, min_stocks=args.min_stocks)
    print(report_markdown(report))
    _print_comparison(str(Path(args.predictions).parent))  # a run folder's gate.json holds the baselines
    print(f"wrote {', '.join(report['files'])} to {args.output_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from atft_core.data.cache import build_cache, open_cache
    from atft_core.s3.client import S3Options
    from atft_core.train.predictor import find_day, load_model, predict_on_day, prediction_table

    predictor = load_model(args.checkpoint)  # missing or not an atft checkpoint: one error line, exit 2
    data = args.data_path or str(demo_data_path())
    # the checkpoint's own cache settings: the same panel finds the cache its training built
    build = build_cache(data, args.cache_dir, predictor.cfg.cache, s3=S3Options.from_env())
    cache = open_cache(build.path)
    day = find_day(cache, args.date)
    ranked = predict_on_day(predictor, cache, day)  # another panel layout: CheckpointMismatch, exit 2
    date = cache.dates[day]
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"predictions-{date}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    ranked.write_parquet(out)
    known = "targets known" if np.isfinite(cache.y[day, :, 0]).any() else "no target known yet"
    print(f"{date} ({known}): {len(ranked)} stocks ranked by {args.checkpoint} (epoch {predictor.epoch}, "
          f"validation RankIC {_num(predictor.val_rankic)}); rank 1 = highest score")
    print(prediction_table(ranked, cache.horizons))
    print(f"wrote {out}")
    return 0


def cmd_hpo(args: argparse.Namespace) -> int:
    check_inputs(args)
    from atft_core.hpo.storage import storage_for_workers
    from flows.hpo_stage import run_hpo

    # A storage the workers cannot share is bad input: refused here, before any flow run starts.
    storage_for_workers(args.storage, Path(args.output_dir), args.parallel, args.n_trials,
                        on_pool=args.gpu_stage == "deployment")
    summary = run_hpo(data_path=args.data_path or str(demo_data_path()), output_dir=args.output_dir,
                      n_trials=args.n_trials, max_epochs=args.max_epochs, study_name=args.study_name,
                      storage=args.storage, parallel=args.parallel, cache_dir=args.cache_dir, config_path=args.config,
                      search_space=args.search_space, pruner=args.pruner, seed=args.seed, timeout_s=args.timeout,
                      device=args.device, gpu_stage=args.gpu_stage)
    c, best = summary["counts"], summary["best_value"]
    print(f"study {summary['study_name']} on {summary['storage']}: this run {c['complete']} complete, "
          f"{c['pruned']} pruned, {c['failed']} failed; study total {summary['study_counts']['total']}")
    print(f"best validation RankIC: {'n/a' if best is None else f'{best:+.4f}'} (trial {summary['best_trial']})")
    for name, value in summary["best_params"].items():
        print(f"  {name} = {value}")
    if summary["best_params"]:
        best = write_best_config(args.config, summary["best_params"], Path(args.output_dir) / "best_config.yaml")
        print(f"best trial as a config: {best} (train it: atft train --config {best})")
    print(f"wrote {args.output_dir}/hpo.json, trials.csv, plots/")
    return 0 if c["complete"] > 0 else 1


def cmd_gc(args: argparse.Namespace) -> int:
    from atft_core.retention import RetentionConfig, collect
    cfg = RetentionConfig.parse(keep_runs=args.keep_runs, cache_days=args.cache_days, tmp_hours=args.tmp_hours)
    report = collect(WorkRoot.from_env(), cfg, dry_run=args.dry_run)
    print("\n".join(report.lines()))
    return 0


COMMANDS = {"hpo": cmd_hpo, "demo-data": cmd_demo_data, "build-cache": cmd_build_cache, "train": cmd_train,
            "dryrun": lambda a: cmd_pipeline(a, "dryrun"), "pipeline": cmd_pipeline, "report": cmd_report,
            "gc": cmd_gc, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    # Before Prefect is imported: no usage telemetry from a local run (its heartbeat also races the
    # throwaway server's SQLite migrations and logs "database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        _absolute_paths(args, WorkRoot.from_env())
        return COMMANDS[args.command](args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, TrainingError) else 1


if __name__ == "__main__":
    sys.exit(main())
