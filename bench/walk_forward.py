"""Walk-forward evidence: the model against the fair LightGBM peer, ridge and the oracle over consecutive windows.

    python -m bench.walk_forward --tuning --market prices --seeds 0,4     # validation days only
    python -m bench.walk_forward --goals --market prices --seeds 1,2,3    # test days; one ledger line

For each seed the panel's last ``--windows x --window-days`` trading days are cut into consecutive
test windows (`atft_core.data.split.walk_forward_windows`); each window has its own split (train on
everything before it, its own validation days, embargoes >= the longest horizon), and every
predictor is fit afresh on it. Per window, seed and pooled over both: the mean daily 1-day RankIC
of the model (`fit_ensemble`, ``--members`` x ``--epochs``), the peer (`PeerModel`, a bag of the
same size as the model's ensemble, early-stopped on the same validation days), ridge and the demo
oracle; the paired daily difference model - peer with its 95 % moving-block bootstrap interval
(`atft_core.evaluate.compare`); and the CPU time (`time.process_time`, all threads) of each fit +
predict.

Test days are looked at once. ``--tuning`` (what design choices use) scores the validation days:
its splits carry no test days at all, so nothing is fit or scored on them, and it refuses goal
seeds. ``--goals`` scores the test days, refuses tuning seeds, and appends one line to
``bench/goal_ledger.jsonl`` (`bench.goal_ledger`). Writes ``bench/walk_forward_<mode>_<market>.json|md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from atft_core.config import AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import Cache, open_cache
from atft_core.data.split import Split, make_walk_forward
from atft_core.evaluate.baselines import DemoOracle, RidgeModel
from atft_core.evaluate.compare import compare_daily, daily_rankic
from atft_core.evaluate.controls import control_verdict, null_band, shuffled_target_cache
from atft_core.evaluate.peer import PeerConfig, PeerModel
from atft_core.train.ensemble import fit_ensemble
from bench import goal_ledger
from bench.common import bench_dir

OUT = Path(__file__).resolve().parent
TUNING_SEEDS = (0, 4, 5)  # design choices are made on these seeds' validation days
GOAL_SEEDS = (1, 2, 3)  # scored on test days by the goals run only
PREDICTORS = ("model", "peer", "ridge", "oracle")
CONTROL = "control"  # the model trained on targets shuffled within each training day: it must find nothing
# "model@E": the model stopped after E epochs (how soon it reaches the peer, against the peer's CPU time)
EARLY = re.compile(r"model@([1-9][0-9]*)")


def market_available(market: str) -> bool:
    """Whether this checkout's demo generator simulates `market` (the planted one always)."""
    from atft_core.data.demo.config import DemoConfig

    return market == "planted" or "market" in {f.name for f in dataclasses.fields(DemoConfig)}


def demo_panel(market: str, seed: int, days: int, stocks: int) -> Path:
    """The demo cache of `market` ("prices" or "planted") and `seed` under the bench folder (built once)."""
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo

    kwargs: dict[str, Any] = {"seed": seed, "days": days, "stocks": stocks}
    if "market" in {f.name for f in dataclasses.fields(DemoConfig)}:
        kwargs["market"] = market
    elif market != "planted":
        raise ValueError(f"market {market!r}: this checkout's demo simulates the planted market only")
    root = bench_dir() / "walk_forward" / f"{market}-s{seed}-d{days}-n{stocks}"
    data = root / "demo.parquet"
    if not data.exists() or not Path(str(data) + ".oracle.parquet").exists():
        generate_demo(data, DemoConfig(**kwargs))
    return build_cache(data, root / "cache", progress=False).path


def _timed(fn) -> tuple[Any, float]:
    c0 = time.process_time()
    out = fn()
    return out, time.process_time() - c0


def score_window(cache: Cache, split: Split, cfg: AtftConfig, mode: str, peer_cfg: PeerConfig,
                 predictors: tuple[str, ...] = PREDICTORS) -> dict[str, Any]:
    """One window: each of `predictors` fit on `split`, scored on its test days (goals) or validation days (tuning).

    `predictors` may include `CONTROL`: the same model fit on `shuffled_target_cache` (training days'
    targets permuted among each day's stocks), scored on the real targets; the window then also
    carries ``control_null``, the `null_band` of a no-signal linear predictor on these days.

    Returns ``{"daily": {name: [D] daily RankIC, None where there is no oracle}, "cpu_seconds": {name: s},
    "first_day", "last_day", "n_days", "train_days"}``.
    """
    if mode == "tuning":  # by construction: a split without test days cannot fit or score one
        split = Split(train=split.train, val=split.val, test=split.test[:0], embargo=split.embargo)
    days = split.test if mode == "goals" else split.val
    ms = cfg.data.min_stocks
    target = np.where(cache.valid[days], cache.y[days, :, 0], np.nan)
    daily: dict[str, list[float] | None] = {}
    cpu: dict[str, float] = {}

    def model(on: Cache = cache, epochs: int | None = None) -> np.ndarray:
        mcfg = cfg
        if epochs is not None:
            mcfg = copy.deepcopy(cfg)
            mcfg.train.max_epochs = epochs
        res = fit_ensemble(on, mcfg, split=split)
        pred, scored = (res.test_pred, res.test_days) if mode == "goals" else (res.val_pred, res.val_days)
        if not np.array_equal(scored, days):
            raise RuntimeError(f"the trainer scored days {scored[:3]}... where {days[:3]}... were asked for")
        return np.asarray(pred[:, :, 0], dtype=np.float64)

    fits: dict[str, Any] = {
        "model": model,
        "peer": lambda: PeerModel(peer_cfg).fit(cache, split).predict(cache, days)[:, :, 0],
        "ridge": lambda: RidgeModel(horizon_indices=(0,)).fit(cache, split).predict(cache, days)[:, :, 0],
        "oracle": lambda: DemoOracle().predict(cache, days)[:, :, 0],
        CONTROL: lambda: model(shuffled_target_cache(cache, seed=cfg.train.seed, days=split.train)),
    }
    for name in predictors:
        early = EARLY.fullmatch(name)
        fn = (lambda e=int(early.group(1)): model(epochs=e)) if early else fits[name]
        try:
            pred, cpu[name] = _timed(fn)
        except ValueError as exc:  # the oracle off the demo
            if name != "oracle":
                raise
            logging.info("no oracle: %s", exc)
            daily[name] = None
            continue
        daily[name] = [float(v) for v in daily_rankic(np.ascontiguousarray(pred), target, ms)]
    out = {"first_day": cache.dates[int(days[0])], "last_day": cache.dates[int(days[-1])], "n_days": len(days),
           "train_days": len(split.train), "daily": daily, "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()}}
    if CONTROL in predictors:
        out["control_null"] = null_band(cache, split.train, days, min_stocks=ms, seed=cfg.train.seed)
    return out


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean daily RankIC of each predictor over the windows' days, model - peer with its interval, CPU seconds."""
    out: dict[str, Any] = {"windows": len(windows), "days": sum(w["n_days"] for w in windows)}
    for name in PREDICTORS:
        series = [w["daily"].get(name) for w in windows]
        out[name] = None if any(s is None for s in series) else float(np.nanmean(np.concatenate(series)))
        out[f"{name}_cpu_seconds"] = round(sum(w["cpu_seconds"].get(name, 0.0) for w in windows), 1)
    out["model_minus_peer"] = None if out["model"] is None or out["peer"] is None else _paired(windows, "model")
    out["model_over_oracle"] = (out["model"] / out["oracle"]) if out["model"] and out["oracle"] else None
    if all(w["daily"].get(CONTROL) is not None for w in windows):
        out[CONTROL] = control_summary(windows)
    for name in sorted({n for w in windows for n in w["daily"] if EARLY.fullmatch(n)}):
        out[name] = float(np.nanmean(np.concatenate([w["daily"][name] for w in windows])))
        out[f"{name}_cpu_seconds"] = round(sum(w["cpu_seconds"][name] for w in windows), 1)
        if out["peer"] is not None:
            out[f"{name}_minus_peer"] = _paired(windows, name)
    return out


def _paired(windows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """`name` - peer over `windows`: the paired daily difference with its interval (`compare_daily`)."""
    return compare_daily([np.array(w["daily"][name]) for w in windows],
                         [np.array(w["daily"]["peer"]) for w in windows]).to_dict()


def control_summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The control's verdict over `windows`: its mean daily RankIC inside the band around 0 (`control_verdict`).

    Each window's control is a different random function of the features, so its chance loading on
    real signal is independent from window to window: the null spread of the mean over W equal
    windows is sqrt(sum of the windows' null bands squared) / W.
    """
    nulls = np.array([w["control_null"] for w in windows], dtype=np.float64)
    null = float(np.sqrt(np.sum(nulls ** 2)) / len(nulls)) if np.all(np.isfinite(nulls)) else None
    verdict = control_verdict(np.concatenate([np.asarray(w["daily"][CONTROL], dtype=np.float64) for w in windows]),
                              null)
    verdict["cpu_seconds"] = round(sum(w["cpu_seconds"].get(CONTROL, 0.0) for w in windows), 1)
    return verdict


def run(market: str, seeds: list[int], mode: str, *, windows: int, window_days: int, days: int, stocks: int,
        cfg: AtftConfig, peer_cfg: PeerConfig | None = None, cache_for=None,
        predictors: tuple[str, ...] = PREDICTORS) -> dict[str, Any]:
    """The walk-forward of every seed, its per-seed and pooled summaries (`summarize`); no file written.

    `cache_for(seed) -> cache path` replaces `demo_panel` (tests pass a tiny panel).
    """
    cfg = copy.deepcopy(cfg)
    cfg.train.progress = False
    peer_cfg = peer_cfg or PeerConfig(bag=cfg.train.ensemble, min_stocks=cfg.data.min_stocks)
    protocol = {"market": market, "mode": mode, "seeds": seeds, "windows": windows, "window_days": window_days,
                "days": days, "stocks": stocks, "epochs": cfg.train.max_epochs, "members": cfg.train.ensemble,
                "val_days": cfg.data.split.val_days, "peer_bag": peer_cfg.bag,
                "predictors": list(predictors)}
    per_seed: dict[str, Any] = {}
    all_windows: list[dict[str, Any]] = []
    for seed in seeds:
        path = cache_for(seed) if cache_for else demo_panel(market, seed, days, stocks)
        cache = open_cache(path)
        scfg = copy.deepcopy(cfg)
        scfg.train.seed = seed
        rows = []
        for k, split in enumerate(make_walk_forward(cache, scfg.data, windows, window_days)):
            t0 = time.perf_counter()
            rows.append(score_window(cache, split, scfg, mode, peer_cfg, predictors))
            logging.info("seed %d window %d/%d (%.0f s): %s", seed, k + 1, windows, time.perf_counter() - t0,
                         {n: None if v is None else round(float(np.nanmean(v)), 4)
                          for n, v in rows[-1]["daily"].items()})
        per_seed[str(seed)] = {"windows": rows, "summary": summarize(rows)}
        all_windows += rows
    return {"protocol": protocol, "seeds": per_seed, "pooled": summarize(all_windows)}


def markdown(results: dict[str, Any], looks: int | None = None) -> str:
    """The walk-forward table: one row per seed and the pooled row."""
    p = results["protocol"]
    which = "test" if p["mode"] == "goals" else "validation"
    head = (f"Walk-forward, {p['market']} market ({p['stocks']} stocks x {p['days']} days), {p['windows']} windows x "
            f"{p['window_days']} days, each trained on every day before it; {which} days scored. Model: "
            f"{p['members']} x {p['epochs']}-epoch ensemble; peer: LightGBM bag of {p['peer_bag']}, early-stopped on "
            "the same validation days by RankIC. Mean daily 1-day RankIC; model - peer: paired daily difference "
            "with a 95 % moving-block bootstrap interval; CPU seconds of fit + predict over all windows.")
    if p["mode"] == "tuning" and p["val_days"] > p["window_days"]:
        head += (f" Validation days ({p['val_days']}) exceed the window ({p['window_days']}): consecutive windows "
                 "share validation days, so the pooled interval is too narrow.")
    if looks is not None:
        head += f" Goal seeds' test days of this market scored {looks} time(s) (bench/goal_ledger.jsonl)."
    control = CONTROL in p.get("predictors", ())
    if control:
        head += (" Control: the model trained on targets shuffled within each training day, scored on the real "
                 "targets; it passes inside the band around 0 (the wider of 2 standard errors and the null spread of "
                 "a no-signal predictor).")
    lines = [head, "", "| seed | model | peer | ridge | oracle | model / oracle | model - peer [95 % CI] "
             "| CPU s model / peer / ridge |" + (" control [band] |" if control else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if control else "")]

    def fmt(v: float | None, spec: str = ".4f") -> str:
        return "n/a" if v is None else format(v, spec)

    rows = [*((k, v["summary"]) for k, v in results["seeds"].items()), ("pooled", results["pooled"])]
    for name, s in rows:
        d = s["model_minus_peer"]
        ci = "n/a" if d is None else f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        lines.append(f"| {name} | {fmt(s['model'])} | {fmt(s['peer'])} | {fmt(s['ridge'])} | {fmt(s['oracle'])} "
                     f"| {fmt(s['model_over_oracle'], '.0%')} | {ci} "
                     f"| {s['model_cpu_seconds']:.0f} / {s['peer_cpu_seconds']:.0f} / {s['ridge_cpu_seconds']:.0f} |"
                     + (f" {_control_cell(s.get(CONTROL))} |" if control else ""))
    for name in sorted(n for n in results["pooled"] if EARLY.fullmatch(n)):
        lines.append("")
        lines.append(f"{name} (the model stopped after {name.split('@')[1]} epoch(s)):")
        for seed, s in rows:
            d = s.get(f"{name}_minus_peer")
            ci = "" if d is None else f", - peer {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
            ratio = f", {s[name + '_cpu_seconds'] / s['peer_cpu_seconds']:.1f}x the peer's CPU" \
                if s.get("peer_cpu_seconds") else ""
            lines.append(f"- {seed}: {s[name]:.4f}{ci}, CPU {s[name + '_cpu_seconds']:.0f} s{ratio}")
    return "\n".join(lines) + "\n"


def _control_cell(c: dict[str, Any] | None) -> str:
    if c is None or c["rankic"] is None or c["band"] is None:
        return "n/a"
    return f"{c['rankic']:+.4f} [±{c['band']:.4f}] {'inside' if c['inside'] else 'OUTSIDE'}"


def with_settings(cfg: AtftConfig, settings: list[str]) -> AtftConfig:
    """`cfg` with each ``section.key=value`` of `settings` applied (value as YAML), validated.

    Raises ValueError naming the setting that is malformed, unknown or out of range.
    """
    raw = cfg.to_dict()
    for item in settings:
        path, sep, value = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) != 2 or parts[0] not in raw or not isinstance(raw[parts[0]], dict) \
                or parts[1] not in raw[parts[0]]:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE naming an existing config field")
        raw[parts[0]][parts[1]] = yaml.safe_load(value)
    try:
        return AtftConfig.from_dict(raw).validated()
    except Exception as exc:  # ConfigError lists every problem; one line is enough here
        raise ValueError(f"--set {settings}: {exc}") from None


def check_seeds(mode: str, seeds: list[int]) -> str | None:
    """Why `seeds` may not run in `mode`, or None: goals never on tuning seeds, tuning never on goal seeds."""
    bad = sorted(set(seeds) & set(TUNING_SEEDS if mode == "goals" else GOAL_SEEDS))
    if not seeds:
        return "--seeds is empty"
    if bad and mode == "goals":
        return f"--goals scores test days of goal seeds only; {bad} are tuning seeds {list(TUNING_SEEDS)}"
    if bad:
        return (f"--tuning runs on tuning seeds only; {bad} are goal seeds {list(GOAL_SEEDS)}, scored by --goals "
                "alone")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tuning", action="store_true", help="validation days of tuning seeds (design uses these)")
    mode.add_argument("--goals", action="store_true", help="test days of goal seeds; appends to the ledger")
    ap.add_argument("--market", default="prices", choices=("prices", "planted"))
    ap.add_argument("--seeds", default=None, help=f"comma list (default: tuning {TUNING_SEEDS}, goals {GOAL_SEEDS})")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window-days", type=int, default=60)
    ap.add_argument("--val-days", type=int, default=None, help="validation days per window (default: the config's)")
    ap.add_argument("--stocks", type=int, default=500)
    ap.add_argument("--days", type=int, default=1100)
    ap.add_argument("--epochs", type=int, default=None, help="per member (default: the config's)")
    ap.add_argument("--members", type=int, default=1, help="model seed-ensemble size; the peer bag matches it")
    ap.add_argument("--predictors", default=",".join(PREDICTORS),
                    help=f"comma list of {', '.join((*PREDICTORS, CONTROL))}, model@E (the model stopped after E "
                    f"epochs) (default: {','.join(PREDICTORS)})")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, repeatable (VALUE read as YAML), e.g. --set model.fan_mode=normalise")
    args = ap.parse_args(argv)
    mode_name = "goals" if args.goals else "tuning"
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else \
            list(GOAL_SEEDS if args.goals else TUNING_SEEDS)
    except ValueError:
        ap.error(f"--seeds {args.seeds!r} is not a comma list of integers")
    predictors = tuple(dict.fromkeys(x.strip() for x in args.predictors.split(",") if x.strip()))
    unknown = sorted(n for n in set(predictors) - {*PREDICTORS, CONTROL} if not EARLY.fullmatch(n))
    if unknown or not predictors:
        ap.error(f"--predictors {args.predictors!r}: choose from {', '.join((*PREDICTORS, CONTROL))}")
    why = check_seeds(mode_name, seeds)
    if why:
        ap.error(why)
    if min(args.windows, args.window_days, args.members, args.stocks, args.days) < 1:
        ap.error("--windows, --window-days, --members, --stocks and --days must be >= 1")
    if not market_available(args.market):
        ap.error(f"--market {args.market}: this checkout's demo simulates the planted market only; "
                 "use --market planted")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("atft_core", "atft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = with_settings(AtftConfig(), args.overrides)
    except ValueError as exc:
        ap.error(str(exc))
    cfg.train.ensemble = args.members
    if args.epochs is not None:
        cfg.train.max_epochs = args.epochs
    if args.val_days is not None:
        cfg.data.split.val_days = args.val_days
    results = run(args.market, seeds, mode_name, windows=args.windows, window_days=args.window_days,
                  days=args.days, stocks=args.stocks, cfg=cfg, predictors=predictors)
    results["protocol"]["settings"] = list(args.overrides)
    results["protocol"]["model"] = dataclasses.asdict(cfg.model)  # the whole model config, not only the changes
    stem = OUT / f"walk_forward_{mode_name}_{args.market}{args.tag}"
    looks = None
    if args.goals:
        goal_ledger.append_look({"market": args.market, "seeds": seeds, "protocol": results["protocol"],
                                 "pooled": results["pooled"],
                                 "per_seed": {k: v["summary"] for k, v in results["seeds"].items()}})
        looks = max(goal_ledger.looks_at_seed(args.market, s) for s in seeds)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".md").write_text(markdown(results, looks))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
