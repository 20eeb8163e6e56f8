"""Acceptance on held-out test days. The planted demo market (`market="planted"`): a 2-epoch dry run with the
parts built for its forms beats ridge clearly and comes near the LightGBM peer, with ridge, the peer and the oracle
scored on the same test days.

Seed 1: the defaults were chosen on the validation days of seeds 0 and 4 only, so these test days are unseen
by every choice made. The full comparison (model trained to convergence vs the peer, seeds 1-3)
is `python -m bench.signal --goals` (docs/signal.md): a benchmark, not a test.
"""

from __future__ import annotations

import dataclasses

from atft_core.config import AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo
from atft_core.dryrun import run_dryrun

# The parts built for forms like the planted ones: signed variable gates (a gate that follows another
# variable's sign forms x * sign(gate)) and a piecewise-linear code of each value (thresholds, extremes).
# The defaults no longer use them (the price market's walk-forward ablation, bench/ablation_prices.md); this
# test keeps them working where their forms are known to be present.
PLANTED_MECHANISMS = {"vsn_gate": "signed", "vsn_var_dim": 16,
                      "piecewise_edges": (-5.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0)}


def _dry_run(tmp_path, demo: DemoConfig, **model):
    """The default 2-epoch dry run (with `model` settings on top) on a generated demo; the result and the
    test-day RankIC of the model, ridge, the peer and the oracle, printed for the log."""
    data = tmp_path / "demo.parquet"
    generate_demo(data, demo)
    cfg = AtftConfig()
    cfg.model = dataclasses.replace(cfg.model, **model)
    cfg.train.progress = False
    result = run_dryrun(build_cache(data, tmp_path / "cache", progress=False, require=cfg.data).path, cfg,
                        tmp_path / "run")
    m, b = result.metrics, result.baselines
    model_ic, ridge, peer, oracle = m["test_rankic"], b["ridge"]["rankic"], b["peer"]["rankic"], b["oracle"]["rankic"]
    print(f"{demo.market} market, test RankIC: model {model_ic:.4f}, LightGBM peer {peer:.4f}, ridge {ridge:.4f}, "
          f"oracle {oracle:.4f} ({model_ic / oracle:.0%}); validation {m['val_rankic']:.4f}")
    return result, (model_ic, ridge, peer, oracle)


def test_planted_mechanisms_learn_the_planted_signal_on_held_out_test_days(tmp_path):
    result, (model, ridge, peer, oracle) = _dry_run(tmp_path, DemoConfig(seed=1, market="planted"),
                                                    **PLANTED_MECHANISMS)
    m, b = result.metrics, result.baselines
    assert result.gate.passed
    assert b["days"] == "test" and m["test_days"] == 120
    assert b["ridge"]["eval_days"] == b["peer"]["eval_days"] == b["oracle"]["n_days"] == 120  # the same days
    assert (tmp_path / "run" / "test_predictions.parquet").exists()
    assert ridge <= 0.6 * oracle  # the planted signal is mostly beyond a linear last-day model
    assert peer > ridge + 0.02  # the peer finds the non-linear, temporal and sector parts
    # The model finds them too: on these unseen days it is well above ridge and level with the peer.
    # Measured on CPU with these mechanisms (signed VSN gates, the piecewise code): model 0.1101, ridge
    # 0.0658, peer 0.1108. One training run moves by about +-0.01 on this seed, so the margins below leave
    # room for that, and for a GPU's numerics.
    assert model > ridge + 0.03
    assert model > 0.85 * peer
    assert oracle > max(peer, model)
    assert "LightGBM peer" in b["markdown"] and "oracle (demo, same days)" in b["markdown"]


def test_dry_run_on_the_price_market_learns_against_ridge_peer_and_oracle_on_the_same_test_days(tmp_path):
    """The product's default demo (prices simulated first, effects of many horizons): at a size the suite can
    afford, seed 7 (neither a tuning seed, 0 / 4 / 5, nor a goal seed, 1-3), the 2-epoch dry run finds a real part
    of what the oracle knows, with every baseline scored on the same held-out days. How it compares with the
    fair peer is the walk-forward benchmark's question (bench/walk_forward.py), not a single window's."""
    result, (model, ridge, peer, oracle) = _dry_run(tmp_path, DemoConfig(seed=7, stocks=200, days=600))
    b = result.baselines
    assert result.gate.passed
    assert b["days"] == "test" and b["ridge"]["eval_days"] == b["peer"]["eval_days"] == b["oracle"]["n_days"]
    assert 0.05 <= oracle <= 0.13  # a realistic strength, not the planted demo's
    assert oracle > max(model, peer, ridge)
    assert model > 0.02  # well above the noise of ~0.005 for 120 days of 200 stocks
