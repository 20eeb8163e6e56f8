"""The walk-forward ablation table: one row per model variant, from `bench.walk_forward --tuning --tag _abl_<name>`.

    python -m bench.ablation_table base long normalise ...   # the first name is the reference

Reads ``bench/walk_forward_tuning_prices_abl_<name>.json`` for each name and writes
``bench/ablation_prices.md`` and ``.json``: per variant, the mean and spread (standard deviation)
over the seeds of each seed's mean daily RankIC of the model, peer, ridge and oracle; the pooled
paired difference model - peer and variant - reference (each with its 95 % moving-block bootstrap
interval over the same validation days, `atft_core.evaluate.compare`); and the CPU seconds of the
model and the peer summed over every window and seed. Only validation days of tuning seeds are in
these files (``--tuning``), so the table may steer design.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from atft_core.evaluate.compare import compare_daily

OUT = Path(__file__).resolve().parent
PREDICTORS = ("model", "peer", "ridge", "oracle")
# Variants run after the defaults changed to the cheaper encoding: their --set is on top of these.
RUN_ON_NEW_DEFAULTS = {"cheap_sigmoid": ["model.piecewise_edges=[]", "model.vsn_var_dim=8"],
                       "cheap_sigmoid_day": ["model.piecewise_edges=[]", "model.vsn_var_dim=8"]}


def load(name: str) -> dict[str, Any]:
    path = OUT / f"walk_forward_tuning_prices_abl_{name}.json"
    if not path.exists():
        raise SystemExit(f"no results for variant {name!r}: {path} is missing "
                         f"(run bench.walk_forward --tuning --tag _abl_{name})")
    return json.loads(path.read_text())


def model_series(res: dict[str, Any]) -> list[np.ndarray]:
    """Daily model RankIC of every (seed, window), in seed then window order."""
    return [np.array(w["daily"]["model"], dtype=float) for s in res["seeds"].values() for w in s["windows"]]


def row(name: str, res: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """One variant's numbers (see the module docstring)."""
    out: dict[str, Any] = {"variant": name,
                           "settings": RUN_ON_NEW_DEFAULTS.get(name, []) + res["protocol"].get("settings", []),
                           "seeds": list(res["seeds"])}
    for p in PREDICTORS:
        per_seed = [s["summary"][p] for s in res["seeds"].values()]
        out[p] = {"mean": float(np.mean(per_seed)), "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1
                  else 0.0, "per_seed": per_seed}
    out["model_minus_peer"] = res["pooled"]["model_minus_peer"]
    out["minus_reference"] = compare_daily(model_series(res), model_series(ref)).to_dict()
    out["model_cpu_seconds"] = res["pooled"]["model_cpu_seconds"]
    out["peer_cpu_seconds"] = res["pooled"]["peer_cpu_seconds"]
    return out


def markdown(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> str:
    p = protocol
    lines = [
        f"Walk-forward ablation, price market ({p['stocks']} stocks x {p['days']} days), tuning seeds "
        f"{', '.join(str(s) for s in p['seeds'])}, {p['windows']} windows x {p['window_days']} days, validation "
        f"days only ({p['val_days']} per window); model: {p['members']} x {p['epochs']}-epoch; peer: LightGBM bag "
        f"of {p['peer_bag']}. Mean daily 1-day RankIC, mean +- sd over the seeds; the differences are pooled "
        "over every seed and window with a 95 % moving-block bootstrap interval; CPU seconds summed over all "
        f"windows and seeds. Reference: `{rows[0]['variant']}`.",
        "",
        "| variant | settings | model | peer | ridge | oracle | model - peer [95 % CI] | variant - reference "
        "[95 % CI] | CPU s model / peer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[q]['mean']:.4f} +- {r[q]['sd']:.4f}" for q in PREDICTORS]
        d, v = r["model_minus_peer"], r["minus_reference"]
        lines.append(f"| {r['variant']} | {' '.join(r['settings']) or 'defaults'} | {' | '.join(cells)} "
                     f"| {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] "
                     f"| {v['mean']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}] "
                     f"| {r['model_cpu_seconds']:.0f} / {r['peer_cpu_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if not names:
        print("usage: python -m bench.ablation_table REFERENCE [VARIANT ...]", file=sys.stderr)
        return 2
    results = {n: load(n) for n in names}
    ref = results[names[0]]
    rows = [row(n, results[n], ref) for n in names]
    (OUT / "ablation_prices.json").write_text(json.dumps({"protocol": ref["protocol"], "rows": rows}, indent=1))
    text = markdown(rows, ref["protocol"])
    (OUT / "ablation_prices.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
