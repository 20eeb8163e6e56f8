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

from atft_core.config import TRAIN_RECIPE, AtftConfig
from atft_core.errors import ConfigError, DatasetError, TrainingError
from atft_core.workroot import WorkRoot, absolute
from flows.cli_champion import cmd_champion
from flows.cli_parser import build_parser
from flows.params import PipelineParams

log = logging.getLogger("atft")

# Arguments that name a file or folder on this machine (an s3:// URI is left as it is).
_PATH_ARGS = ("data_path", "cache_dir", "output_dir", "config", "resume_from", "predictions", "out", "search_space",
              "checkpoint")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "botocore", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


def _config(path: str | None) -> AtftConfig:
    return AtftConfig.load(path)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo
    overrides = {k: getattr(args, k) for k in ("stocks", "days", "features", "seed", "start", "market")
                 if getattr(args, k) is not None}
    oracle = generate_demo(args.out, DemoConfig(**overrides))
    print(f"wrote {args.out}, {args.out}.oracle.json and {args.out}.oracle.parquet")
    print(json.dumps(oracle.get("oracle", oracle), indent=1, default=str)[:2000])
    return 0


def cmd_build_cache(args: argparse.Namespace) -> int:
    from atft_core.data.cache.build import build_cache
    from atft_core.s3.client import S3Options
    cfg = _config(args.config).with_overrides(profile=args.profile)
    # the training settings decide how much history is enough: a too-short file stops here, nothing written
    build = build_cache(args.data_path, args.cache_dir, cfg.cache, s3=S3Options.from_env(), require=cfg.data)
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


def pipeline_params(args: argparse.Namespace, mode: str) -> PipelineParams:
    """The flow's parameters from the flags given (a flag left out keeps the flow's default)."""
    from pydantic import ValidationError

    given = {"mode": mode, "data_path": args.data_path, "cache_dir": args.cache_dir,
             "output_dir": args.output_dir, "config_path": args.config}
    for name in ("max_epochs", "device", "min_gpu_util", "min_rankic", "require_gpu", "profile", "resume_from",
                 "ensemble", "n_trials", "hpo_max_epochs", "study_name", "storage", "challenger_ensemble",
                 "challenger_epochs"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    try:
        return PipelineParams(**given)
    except ValidationError as exc:
        raise ConfigError([f"--{'-'.join(map(str, e['loc'])).replace('_', '-')} = {e.get('input')!r}: {e['msg']}"
                           for e in exc.errors()], hint="correct the flag named") from None


def check_inputs(cfg: AtftConfig, *, data_path: str | None, storage: str | None) -> None:
    """What can be checked before a flow starts beyond the config's ranges: the storage URL, the data
    path, the device. Raises ConfigError / DatasetError (exit 2) so that a bad flag fails in a second,
    not after a server start and a cache build."""
    if storage:
        from atft_core.hpo.storage import refuse_literal_password

        refuse_literal_password(storage)  # before a server starts or a cache is built
    if data_path and not str(data_path).startswith("s3://"):
        from atft_core.data.source import resolve_input

        with resolve_input(data_path):  # a local path: exists, and a directory holds parquet files
            pass
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(["train.device = 'cuda' but no CUDA GPU is visible on this machine"],
                              hint="use --device auto (a GPU when there is one) or --device cpu")


def cmd_pipeline(args: argparse.Namespace, mode: str | None = None) -> int:
    params = pipeline_params(args, mode or args.mode)
    cfg = params.config()  # the same configs the flow builds; checked here without importing Prefect
    params.hpo_config()
    check_inputs(cfg, data_path=params.data_path, storage=params.storage)
    from flows.pipeline import run_pipeline
    result = run_pipeline(**params.flow_kwargs())
    print(f"run folder: {result['run_dir']}")
    gate = result.get("gate") or {}
    for c in gate.get("criteria", []):
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c.get("passed")]
        threshold = "" if c.get("threshold") is None else f" (needs {c.get('op', '>')} {_num(c['threshold'])})"
        print(f"  {verdict:4s} {c['name']}: {_num(c.get('value'))}{threshold} {c.get('note', '')}".rstrip())
    _print_comparison(result.get("run_dir"))
    print(f"gate: {'PASSED' if gate.get('passed') else 'FAILED'}  (state: {result.get('state')})")
    _print_night(result.get("run_dir"))
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


def _print_night(run_dir: str | None) -> None:
    """The nightly product of a mode "hpo" run: the champion decision, tomorrow's ranks and the live health."""
    folder = Path(run_dir or "")
    if not run_dir or not (folder / "decision.json").is_file():
        return
    d = json.loads((folder / "decision.json").read_text())
    diff = d.get("difference")
    margin = (f" (challenger - champion {diff['mean']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}] over "
              f"{diff['n_days']} days)") if diff else ""
    print(f"champion: {'PROMOTED' if d['promoted'] else 'kept'} for the night of {d['night']}{margin}: {d['reason']}")
    for ranks in sorted(folder.glob("ranks-*.parquet")):
        print(f"tomorrow's ranks: {ranks}")
    if (folder / "health.json").is_file():
        h = json.loads((folder / "health.json").read_text())
        why = f": {h['reasons'][0]}" if h["reasons"] else ""
        print(f"live health: {h['state']} ({h['nights']} night(s) scored){why}")


def cmd_report(args: argparse.Namespace) -> int:
    from atft_core.evaluate.report import build_report, report_markdown
    report = build_report(args.predictions, args.output_dir, horizon=args.horizon, min_stocks=args.min_stocks)
    print(report_markdown(report))
    _print_comparison(str(Path(args.predictions).parent))  # a run folder's gate.json holds the baselines
    print(f"wrote {', '.join(report['files'])} to {args.output_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from atft_core.data.cache.build import build_cache
    from atft_core.data.cache.store import open_cache
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
    cfg = _config(args.config).with_overrides(max_epochs=args.max_epochs, device=args.device).validated()
    check_inputs(cfg, data_path=args.data_path, storage=args.storage)
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
            "gc": cmd_gc, "predict": cmd_predict, "champion": cmd_champion}


def main(argv: list[str] | None = None) -> int:
    # Before Prefect is imported: no usage telemetry from a local run (its heartbeat also races the
    # throwaway server's SQLite migrations and logs "database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from tasks.expected_errors import install_log_filter  # here: it loads torch, which `--help` never needs

    install_log_filter()
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
