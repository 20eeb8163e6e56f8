"""Signal benchmark: does ATFT-GAT-FAN beat the model a quant would pick instead, on held-out days?

    python -m bench.signal --goals      # seeds 1,2,3: model vs LightGBM peer vs ridge vs oracle (test days)
    python -m bench.signal --recipes    # seeds 0,4: ensembles of raw / coded members (validation and test)
    python -m bench.signal --ablation --round round3 --seeds 0,4   # each change on its own, mean and spread

Every number is a mean daily 1-day RankIC (`atft_core.evaluate.metrics`). Validation days pick the
epoch (early stopping) and were the only days used to choose defaults (seed 0); the tables report
the held-out test days of seeds that were not used for tuning. Writes `bench/signal_*.json|md`.
One torch thread (TrainConfig.cpu_threads), LightGBM on two: the box is shared.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from atft_core.config import TRAIN_RECIPE, AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo
from atft_core.data.split import make_split
from atft_core.evaluate.baselines import oracle_on_days, ridge_baseline
from atft_core.evaluate.controls import control_result, shuffled_target_cache
from atft_core.evaluate.metrics import summarize
from atft_core.evaluate.peer import PeerModel
from atft_core.train.ensemble import fit_ensemble
from atft_core.train.trainer import Trainer
from bench.common import bench_dir

OUT = Path(__file__).resolve().parent

# Each round's rows change one thing against that round's base, except the last row, which is the
# defaults the round shipped. Earlier rows (rank-gauss targets, cross-section context, no FAN,
# dropout 0.4, weight decay 0.1, lr 1e-3: all worse) are in signal_ablation-screen.md.
ROUND2: dict[str, dict[str, Any]] = {  # base: the defaults before round 2 (see round2_base)
    "base (previous defaults)": {},
    "sector-relative inputs": {"model.sector_relative_inputs": True},
    "sigmoid VSN gates": {"model.vsn_gate": "sigmoid"},
    "VSN variable width 16": {"model.vsn_var_dim": 16},
    "hidden 64": {"model.hidden": 64},
    "1 day per batch": {"data.days_per_batch": 1},
    "Huber loss only": {"loss.rankic_weight": 0.0, "loss.cs_ic_weight": 0.0, "loss.sharpe_weight": 0.0},
    "new defaults": {"model.sector_relative_inputs": True, "model.vsn_gate": "sigmoid", "model.vsn_var_dim": 16},
}
_HUBER_ONLY = {"loss.rankic_weight": 0.0, "loss.cs_ic_weight": 0.0, "loss.sharpe_weight": 0.0}
ROUND3: dict[str, dict[str, Any] | None] = {  # base: round 2's shipped defaults (see round3_base)
    "base (round 2 defaults)": {},
    "current-day path 64": {"model.current_day_width": 64},
    "Huber loss only": _HUBER_ONLY,
    "current-day path 64 + Huber only": {"model.current_day_width": 64, **_HUBER_ONLY},
    "plateau rewind x0.3": {"train.plateau_lr_factor": 0.3},
    "current-day path 64 + Huber only + plateau rewind x0.3": {"model.current_day_width": 64, **_HUBER_ONLY,
                                                               "train.plateau_lr_factor": 0.3},
    "new defaults": None,  # AtftConfig() as shipped: Huber only + plateau rewind x0.3
}


def round2_base() -> AtftConfig:
    """The configuration before round 2 changed the defaults."""
    cfg = round3_base()
    cfg.model.sector_relative_inputs = False
    cfg.model.vsn_gate = "softmax"
    cfg.model.vsn_var_dim = 4
    return cfg


def round3_base() -> AtftConfig:
    """Round 2's shipped defaults (sector-relative inputs, sigmoid gates, VSN width 16), before round 3."""
    cfg = AtftConfig()
    cfg.model.current_day_width = 0
    cfg.model.vsn_gate, cfg.model.piecewise_edges = "sigmoid", ()  # both came later (code: recipes; signed: round 4)
    cfg.loss.rankic_weight, cfg.loss.cs_ic_weight, cfg.loss.sharpe_weight = 0.5, 0.3, 0.1
    cfg.train.plateau_lr_factor = 0.0
    return cfg


ROUNDS: dict[str, tuple[Any, dict]] = {"round2": (round2_base, ROUND2), "round3": (round3_base, ROUND3)}


def apply(cfg: AtftConfig, overrides: dict[str, Any]) -> AtftConfig:
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def demo_cache(seed: int, days: int = 750, stocks: int = 300) -> Path:
    """The demo panel of `seed` and its cache under the bench folder (generated once)."""
    root = bench_dir() / "signal" / f"demo-s{seed}-d{days}-n{stocks}"
    data = root / "demo.parquet"
    if not data.exists() or not Path(str(data) + ".oracle.parquet").exists():
        generate_demo(data, DemoConfig(seed=seed, days=days, stocks=stocks))
    return build_cache(data, root / "cache", progress=False).path


def train_eval(cache_path: Path, cfg: AtftConfig, *, control_seed: int | None = None) -> dict[str, Any]:
    """Train `cfg` on the cache; validation picks the epoch; returns val and test 1-day RankIC."""
    cache = open_cache(cache_path)
    cfg = copy.deepcopy(cfg)
    cfg.train.progress = False
    split = make_split(cache, cfg.data)
    train_cache = cache if control_seed is None else shuffled_target_cache(cache, control_seed, days=split.train)
    t0 = time.perf_counter()
    res = fit_ensemble(train_cache, cfg, split=split)
    out = {"val_rankic": res.val_metrics[cache.horizons[0]]["rankic"],
           "test_rankic": res.test_metrics[cache.horizons[0]]["rankic"] if res.test_metrics else None,
           "best_epoch": res.best_epoch, "epochs": len(res.history), "seconds": round(time.perf_counter() - t0, 1),
           "val_curve": [round(r["val_rankic"], 4) for r in res.history], "members": res.members}
    if control_seed is not None:
        c = control_result(cache, split, res.val_pred, res.val_days, control_seed, min_stocks=cfg.data.min_stocks)
        out["control"] = {k: c[k] for k in ("rankic", "band", "inside")}
    return out


def baselines(cache_path: Path, cfg: AtftConfig) -> dict[str, Any]:
    cache = open_cache(cache_path)
    split = make_split(cache, cfg.data)
    ms = cfg.data.min_stocks
    out: dict[str, Any] = {}
    peer = PeerModel().fit(cache, split)  # the 1st horizon only
    fitted = peer.fits[0]
    out["peer_rounds"], out["peer_seconds"] = fitted.best_iteration, round(fitted.fit_seconds, 1)
    for name, days in (("val", split.val), ("test", split.test)):
        out[f"ridge_{name}"] = ridge_baseline(cache, split, days=days, min_stocks=ms)["rankic"]
        target = np.where(cache.valid[days], cache.y[days, :, 0], np.nan)
        out[f"peer_{name}"] = summarize(peer.predict(cache, days)[:, :, 0], target, min_stocks=ms).rankic
        oracle = oracle_on_days(cache, days, min_stocks=ms)
        out[f"oracle_{name}"] = oracle["rankic"] if oracle else None
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_ablation(seeds: list[int], epochs: int, days: int, stocks: int, rows: list[str], tag: str,
                 round_name: str = "round3") -> dict:
    path = OUT / f"signal_ablation{tag}.json"
    base, table = ROUNDS[round_name]
    protocol = {"seeds": seeds, "max_epochs": epochs, "demo_days": days, "stocks": stocks}
    if round_name != "round2":  # round 2's files predate rounds
        protocol["round"] = round_name
    results: dict[str, Any] = {"protocol": protocol, "rows": {}}
    if path.exists():  # rows of an earlier run of the same protocol are kept (resume / add rows)
        old = json.loads(path.read_text())
        if old.get("protocol") == protocol:
            results["rows"] = {k: {int(s): r for s, r in v.items()} for k, v in old["rows"].items()}
    for name in rows:
        per_seed = results["rows"].get(name, {})
        if all(seed in per_seed for seed in seeds):
            continue
        for seed in seeds:
            overrides = table[name]
            cfg = AtftConfig() if overrides is None else apply(base(), overrides)
            cfg.train.max_epochs = epochs
            cfg.train.seed = seed
            if seed not in per_seed:
                per_seed[seed] = train_eval(demo_cache(seed, days, stocks), cfg)
            logging.info("%s seed %d: %s", name, seed, per_seed[seed])
        results["rows"][name] = per_seed
        path.write_text(json.dumps(results, indent=1))  # partial results survive an interrupted run
    (OUT / f"signal_ablation{tag}.md").write_text(ablation_markdown(results))
    return results


def ablation_markdown(results: dict) -> str:
    p = results["protocol"]
    lines = [f"Ablation: demo {p['demo_days']} days x {p['stocks']} stocks, up to {p['max_epochs']} epochs "
             f"(validation picks the epoch), seeds {p['seeds']}; 1-day RankIC"
             + (", mean +- std over seeds." if len(p["seeds"]) > 1 else " (one seed: no spread).")
             + " Each row changes one thing against the base.", "",
             "| change | val RankIC | test RankIC | best epoch | seconds/run |", "|---|---|---|---|---|"]
    for name, per_seed in results["rows"].items():
        runs = list(per_seed.values())
        v, vs = _stats([r["val_rankic"] for r in runs])
        t, ts = _stats([r["test_rankic"] for r in runs])
        e = statistics.fmean(r["best_epoch"] for r in runs)
        s = statistics.fmean(r["seconds"] for r in runs)
        pm = (lambda sd: f" +- {sd:.4f}") if len(runs) > 1 else (lambda sd: "")
        lines.append(f"| {name} | {v:.4f}{pm(vs)} | {t:.4f}{pm(ts)} | {e:.1f} | {s:.0f} |")
    return "\n".join(lines) + "\n"


def run_goals(seeds: list[int], members: int, control_seeds: list[int], tag: str = "") -> dict:
    """The shipped recipe on each seed (`TRAIN_RECIPE`: a seed ensemble, validation picks each member's
    epoch) and the default dry run on its own (when the recipe's members train as long as the dry run,
    its member 0 is that dry run and the column costs nothing extra). Writes `signal_goals{tag}.json`
    after each seed."""
    member_epochs = TRAIN_RECIPE["max_epochs"]
    results: dict[str, Any] = {"seeds": {}, "members": members, "member_epochs": member_epochs,
                               "alternate_encoding": AtftConfig().train.ensemble_alternate_encoding}
    for seed in seeds:
        path = demo_cache(seed)
        cfg = AtftConfig()
        cfg.train.seed = seed
        row = baselines(path, cfg)
        recipe = copy.deepcopy(cfg)
        recipe.train.ensemble, recipe.train.max_epochs = members, member_epochs
        model = train_eval(path, recipe)
        if member_epochs == cfg.train.max_epochs:
            dry = model["members"][0]  # the default dry run: ensemble 1, train.seed = the demo seed
        else:
            dry = train_eval(path, cfg)
        row["dryrun_test"], row["dryrun_val"] = dry["test_rankic"], dry["val_rankic"]
        row["model_test"], row["model_val"] = model["test_rankic"], model["val_rankic"]
        row["model_members"], row["model_seconds"] = model["members"], model["seconds"]
        if seed in control_seeds:
            row["control"] = train_eval(path, cfg, control_seed=seed)["control"]
        results["seeds"][seed] = row
        logging.info("seed %d: %s", seed, row)
        (OUT / f"signal_goals{tag}.json").write_text(json.dumps(results, indent=1))
    return results


def merged_goals() -> dict:
    """Every `signal_goals*.json` of the same protocol (ensemble size) as one result (seeds in order)."""
    merged: dict[str, Any] = {}
    for path in sorted(OUT.glob("signal_goals*.json")):
        part = json.loads(path.read_text())
        if "members" not in part:  # an older protocol (one long run): kept for the record, not merged
            continue
        if not merged:
            merged = {k: v for k, v in part.items() if k != "seeds"} | {"seeds": {}}
        if (part["members"], part["member_epochs"]) == (merged["members"], merged["member_epochs"]):
            merged["seeds"].update(part["seeds"])
    merged["seeds"] = dict(sorted(merged.get("seeds", {}).items(), key=lambda kv: int(kv[0])))
    return merged


# Member variants of the recipe comparison: (piecewise code on, epochs, VSN gate). Each member is the
# default dry run with that encoding, epoch budget and gate, and train.seed = its index (`fit_ensemble`'s
# member k). "s" variants use the signed gates of round 4 (`VariableSelectionNetwork`).
MEMBER_VARIANTS: dict[str, tuple[bool, int, str]] = {
    "raw2": (False, 2, "sigmoid"), "code2": (True, 2, "sigmoid"), "raw3": (False, 3, "sigmoid"),
    "code3": (True, 3, "sigmoid"), "scode2": (True, 2, "signed"), "scode3": (True, 3, "signed"),
    "sraw3": (False, 3, "signed")}
# Recipe -> its members as (variant, training seed); member 0 first, as `fit_ensemble` orders them.
RECIPES: dict[str, list[tuple[str, int]]] = {
    "1 raw 2-epoch run": [("raw2", 0)],
    "1 coded 2-epoch run (the dry run)": [("code2", 0)],
    "2 raw 2-epoch runs": [("raw2", k) for k in range(2)],
    "5 raw 2-epoch runs (previous recipe)": [("raw2", k) for k in range(5)],
    "5 coded 2-epoch runs": [("code2", k) for k in range(5)],
    "5 2-epoch runs, alternating": [("code2" if k % 2 == 0 else "raw2", k) for k in range(5)],
    "2 coded 3-epoch runs": [("code3", k) for k in range(2)],
    "3 coded 3-epoch runs": [("code3", k) for k in range(3)],
    "2 3-epoch runs, alternating": [("code3", 0), ("raw3", 1)],
    "3 3-epoch runs, alternating": [("code3", 0), ("raw3", 1), ("code3", 2)],
    "signed: 1 coded 2-epoch run": [("scode2", 0)],
    "signed: 1 coded 3-epoch run": [("scode3", 0)],
    "signed: 3 coded 3-epoch runs": [("scode3", k) for k in range(3)],
    "signed: 3 3-epoch runs, alternating": [("scode3", 0), ("sraw3", 1), ("scode3", 2)],
}


def run_recipes(seeds: list[int], names: list[str] | None = None) -> dict:
    """Validation and test RankIC of each recipe in `RECIPES` (tuning seeds only), with the mean of its
    members' single scores. Member predictions are kept under the bench folder by variant and seed, so
    a rerun trains only what is missing. ``names``: only these recipes, merged into the existing
    `signal_recipes.json` (the other rows keep their earlier results).
    """
    store = bench_dir() / "signal" / "members"
    store.mkdir(parents=True, exist_ok=True)
    names = names or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    saved = OUT / "signal_recipes.json"
    out: dict[str, Any] = json.loads(saved.read_text()) if names != list(RECIPES) and saved.exists() else {}
    out.setdefault("seeds", {})
    out["recipes"] = {name: [list(m) for m in ms] for name, ms in RECIPES.items()
                      if name in names or all(name in row for row in out["seeds"].values())}
    for seed in seeds:
        cache = open_cache(demo_cache(seed))
        split = make_split(cache, AtftConfig().data)
        preds: dict[tuple[str, int], Any] = {}
        for variant, k in sorted({m for n in names for m in RECIPES[n]}):
            f = store / f"{variant}-s{seed}-t{k}.npz"
            if not f.exists():
                code, epochs, gate = MEMBER_VARIANTS[variant]
                cfg = AtftConfig()
                cfg.train.progress, cfg.train.seed, cfg.train.max_epochs = False, k, epochs
                cfg.model.vsn_gate = gate
                if not code:
                    cfg.model.piecewise_edges = ()
                res = Trainer(cache, cfg, split=split).fit()
                np.savez(f, val=res.val_pred[..., 0], test=res.test_pred[..., 0], val_days=res.val_days,
                         test_days=res.test_days)
                logging.info("seed %d %s t%d: val %.4f", seed, variant, k, res.best_rankic)
            with np.load(f) as z:  # read once: an npz reads its zip member again on every access
                preds[variant, k] = {key: z[key] for key in z.files}
        ms = AtftConfig().data.min_stocks
        targets = {}
        for part in ("val", "test"):
            days = next(iter(preds.values()))[f"{part}_days"]
            targets[part] = np.where(cache.valid[days], cache.y[days, :, 0], np.nan)
        single = {(m, part): summarize(p[part], targets[part], min_stocks=ms).rankic
                  for m, p in preds.items() for part in targets}
        row: dict[str, Any] = out["seeds"].setdefault(str(seed), {})
        for name in names:
            members = RECIPES[name]
            for part, target in targets.items():
                mean = np.mean([preds[m][part] for m in members], axis=0)
                row.setdefault(name, {})[part] = summarize(mean, target, min_stocks=ms).rankic
                row[name][f"{part}_members"] = statistics.fmean(single[m, part] for m in members)
        logging.info("seed %d: %s", seed, {n: row[n] for n in names})
    saved.write_text(json.dumps(out, indent=1))
    (OUT / "signal_recipes.md").write_text(recipes_markdown(out))
    return out


def recipes_markdown(results: dict) -> str:
    seeds = list(results["seeds"])
    lines = [f"Training recipes on demo seeds {', '.join(map(str, seeds))} (the tuning seeds), 300 stocks; 1-day "
             "RankIC of the members' mean prediction, per seed. 'Coded' members read the piecewise-linear code "
             "of each value (model.piecewise_edges), 'raw' ones the raw values only; rows marked 'signed:' use "
             "the signed VSN gates (model.vsn_gate, the default since round 4), the others the sigmoid ones. "
             "Validation picks each member's epoch and chose the recipe; test days are shown, not used.", "",
             "| recipe | epochs | " + " | ".join(f"val s{s}" for s in seeds) + " | val mean | members' val mean "
             "| " + " | ".join(f"test s{s}" for s in seeds) + " |",
             "|---|---|" + "---|" * (2 * len(seeds) + 2)]
    for name, members in results["recipes"].items():
        epochs = sum(MEMBER_VARIANTS[v][1] for v, _ in members)
        rows = [results["seeds"][s].get(name) for s in seeds]
        if None in rows:  # a recipe measured on fewer seeds than the others: not comparable, left out
            continue
        lines.append(f"| {name} | {epochs} | " + " | ".join(f"{r['val']:.4f}" for r in rows)
                     + f" | {statistics.fmean(r['val'] for r in rows):.4f}"
                     + f" | {statistics.fmean(r['val_members'] for r in rows):.4f} | "
                     + " | ".join(f"{r['test']:.4f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def goals_markdown(results: dict) -> str:
    rows = results["seeds"]
    k, e, d = results["members"], results["member_epochs"], AtftConfig().train.max_epochs
    mix = ", encodings alternating" if results.get("alternate_encoding") else ""
    lines = [f"| seed | model ({k} x {e}-epoch seed ensemble{mix}) | {d}-epoch dry run | LightGBM peer | ridge "
             "| oracle | model / oracle | control (band) |", "|---|---|---|---|---|---|---|---|"]
    for seed, r in rows.items():
        c = r.get("control")
        ctl = "not run" if c is None else \
            f"{c['rankic']:+.4f} (+-{c['band']:.4f}, {'inside' if c['inside'] else 'OUTSIDE'})"
        lines.append(f"| {seed} | {r['model_test']:.4f} | {r['dryrun_test']:.4f} | "
                     f"{r['peer_test']:.4f} | {r['ridge_test']:.4f} | {r['oracle_test']:.4f} | "
                     f"{r['model_test'] / r['oracle_test']:.0%} | {ctl} |")
    mean = {k: statistics.fmean(r[k] for r in rows.values())
            for k in ("model_test", "dryrun_test", "peer_test", "ridge_test", "oracle_test")}
    lines.append(f"| mean | {mean['model_test']:.4f} | {mean['dryrun_test']:.4f} | {mean['peer_test']:.4f} | "
                 f"{mean['ridge_test']:.4f} | {mean['oracle_test']:.4f} | "
                 f"{mean['model_test'] / mean['oracle_test']:.0%} | |")
    checks = [
        ("model >= LightGBM peer on every seed", all(r["model_test"] >= r["peer_test"] for r in rows.values())),
        ("model >= 80 % of the oracle on the mean", mean["model_test"] >= 0.8 * mean["oracle_test"]),
        ("2-epoch dry run >= ridge on every seed", all(r["dryrun_test"] >= r["ridge_test"] for r in rows.values())),
        ("shuffled-target control inside its band (seeds run)",
         all(r["control"]["inside"] for r in rows.values() if "control" in r)),
    ]
    lines += ["", *[f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--goals", action="store_true")
    ap.add_argument("--goals-table", action="store_true", help="only rebuild signal_goals.md from signal_goals*.json")
    ap.add_argument("--seeds", default=None, help="comma list (ablation default 1,2,3; goals 1,2,3)")
    ap.add_argument("--epochs", type=int, default=10, help="ablation: epochs per run (validation picks one)")
    ap.add_argument("--members", type=int, default=None,
                    help=f"goals: seed-ensemble members (default: the recipe's {TRAIN_RECIPE['ensemble']})")
    ap.add_argument("--recipes", action="store_true",
                    help="training recipes (ensembles of raw / coded members) on the tuning seeds (default 0,4)")
    ap.add_argument("--recipe-rows", default=None,
                    help="recipes: only these (a |-separated list of names), merged into signal_recipes.json")
    ap.add_argument("--control-seeds", default=None, help="goals: seeds that also get a control run (default all)")
    ap.add_argument("--days", type=int, default=750)
    ap.add_argument("--stocks", type=int, default=300)
    ap.add_argument("--rows", default=None, help="comma list of ablation rows (default: all of the round)")
    ap.add_argument("--round", default="round3", choices=sorted(ROUNDS), help="ablation: which round's rows")
    ap.add_argument("--tag", default="", help="suffix of the output files (e.g. -screen)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("atft_core", "atft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    seeds = [int(s) for s in (args.seeds or "1,2,3").split(",")]
    if args.ablation:
        rows = args.rows.split(",") if args.rows else list(ROUNDS[args.round][1])
        run_ablation(seeds, args.epochs, args.days, args.stocks, rows, args.tag, args.round)
        print((OUT / f"signal_ablation{args.tag}.md").read_text())
    if args.goals:
        control = [int(s) for s in args.control_seeds.split(",")] if args.control_seeds else seeds
        run_goals(seeds, args.members or TRAIN_RECIPE["ensemble"], control, args.tag)
    if args.recipes:
        run_recipes([int(x) for x in (args.seeds or "0,4").split(",")],
                    args.recipe_rows.split("|") if args.recipe_rows else None)
        print((OUT / "signal_recipes.md").read_text())
    if args.goals or args.goals_table:
        (OUT / "signal_goals.md").write_text(goals_markdown(merged_goals()))
        print((OUT / "signal_goals.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
