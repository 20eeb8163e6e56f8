"""Acceptance on the default demo market, held-out test days: the default 2-epoch dry run learns the
signal (clearly positive test RankIC), and ridge, the LightGBM peer and the oracle are scored on the
same test days, in the order oracle > peer > model.

Seed 1: the defaults were chosen on seed 0's validation days only, so these test days are unseen
by every choice made. The full comparison (model trained to convergence vs the peer, seeds 1-3)
is `python -m bench.signal --goals` (README, Performance): a benchmark, not a test.
"""

from __future__ import annotations

from atft_core.config import DryRunConfig
from atft_core.data.cache import build_cache
from atft_core.data.demo import DemoConfig, generate_demo
from atft_core.dryrun import run_dryrun


def test_default_dry_run_learns_the_signal_on_held_out_test_days(tmp_path):
    data = tmp_path / "demo.parquet"
    generate_demo(data, DemoConfig(seed=1))
    cfg = DryRunConfig()
    cfg.train.progress = False
    result = run_dryrun(build_cache(data, tmp_path / "cache", progress=False, require=cfg.data).path, cfg,
                        tmp_path / "run")
    m, b = result.metrics, result.baselines
    model, ridge, peer, oracle = m["test_rankic"], b["ridge"]["rankic"], b["peer"]["rankic"], b["oracle"]["rankic"]
    print(f"test RankIC: model {model:.4f}, LightGBM peer {peer:.4f}, ridge {ridge:.4f}, oracle {oracle:.4f} "
          f"({model / oracle:.0%}); validation {m['val_rankic']:.4f}")
    assert result.gate.passed
    assert b["days"] == "test" and m["test_days"] == 120
    assert b["ridge"]["eval_days"] == b["peer"]["eval_days"] == b["oracle"]["n_days"] == 120  # the same days
    assert (tmp_path / "run" / "test_predictions.parquet").exists()
    assert ridge <= 0.6 * oracle  # the planted signal is mostly beyond a linear last-day model
    assert peer > ridge + 0.02  # the peer finds the non-linear, temporal and sector parts
    # The model learns the signal on days it never saw (the 120-day noise band of a mean RankIC is
    # about +-0.01), but it does not yet beat the peer, nor reliably ridge (issue 13 is open: see the
    # README's "Signal: model vs the peer"); this test pins what holds, and fails if learning breaks.
    assert model > 0.03
    assert oracle > peer > model
    assert "LightGBM peer" in b["markdown"] and "oracle (demo, same days)" in b["markdown"]
