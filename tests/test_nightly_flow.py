"""The nightly product with real models and the real flow: promotion, tomorrow's ranks, the live record, re-runs.

One planted demo (a signal the model learns in seconds) and a copy whose targets are shuffled within
each day (the same layout, no signal): a model trained on the copy is the "worse" model. Nights are
the panel cut at successive trading days (`panel_as_of`), run as `atft pipeline --mode hpo` runs
(`run_pipeline`) under a work root of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from atft_core.config import AtftConfig
from atft_core.data.cache.store import open_cache
from atft_core.data.split import make_split
from atft_core.nightly.night import Peer, champion_decision, model_meta, tomorrows_ranks
from atft_core.nightly.registry import Registry
from atft_core.nightly.replay import panel_as_of, trading_days
from atft_core.stage_result import StageResult

CONFIG = """\
data: {window: 10, min_stocks: 10, split: {val_days: 20, test_days: 100}}
model: {hidden: 16, attn_heads: 2, gat_heads: [2]}
train: {progress: false, max_epochs: 3}
gate: {min_rankic: -1}
nightly: {challenger_ensemble: 1, challenger_epochs: 2}
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    from atft_core.data.demo.config import DemoConfig
    from atft_core.data.demo.generate import generate_demo

    folder = tmp_path_factory.mktemp("nightly")
    generate_demo(folder / "full.parquet", DemoConfig(stocks=100, days=400, features=16, market="planted"))
    shuffled = folder / "shuffled.parquet"
    df = pl.read_parquet(folder / "full.parquet")
    targets = [c for c in df.columns if c.startswith("target_")]
    df.with_columns(pl.col(t).shuffle(seed=7).over("Date") for t in targets).write_parquet(shuffled)
    cfg = folder / "nightly.yaml"
    cfg.write_text(CONFIG)
    return {"full": folder / "full.parquet", "shuffled": shuffled, "config": cfg, "folder": folder}


@pytest.fixture
def work_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATFT_HOME", str(tmp_path / "home"))
    for var in ("ATFT_ARTIFACT_URI", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def _dryrun(panel: Path, config: Path) -> Path:
    from flows.pipeline import run_pipeline

    result = run_pipeline(mode="dryrun", data_path=str(panel), config_path=str(config))
    assert result["ok"], result
    return Path(result["run_dir"])


def _register(reg: Registry, run: Path) -> None:
    stage = StageResult.read(run)
    cfg = AtftConfig.from_dict(stage.config)
    cache = open_cache(stage.cache_path)
    reg.add_model(run, model_meta(cache, make_split(cache, cfg.data), cfg, {}))


def test_a_better_challenger_is_promoted_a_worse_or_tied_one_is_not(prefect_harness, market, work_root):
    good = _dryrun(market["full"], market["config"])
    null = _dryrun(market["shuffled"], market["config"])  # same layout, targets shuffled within each day
    cfg = AtftConfig.load(market["config"])
    cache = open_cache(StageResult.read(good).cache_path)
    split = make_split(cache, cfg.data)
    reg = Registry(work_root / "registry")
    _register(reg, null)
    reg.promote(null.name, how="manual", night=None, decision={})

    better = champion_decision(reg, cache, split, good, cfg, Peer(None))
    assert better.promoted and better.difference["lo"] > 0, better
    assert reg.champion().model_id == good.name
    # tonight's test days after what either model saw: the good run's own test days, all of them here
    assert better.n_days == cfg.data.split.test_days

    worse = champion_decision(Registry(work_root / "other"), cache, split, null, cfg, Peer(None))
    assert not worse.promoted  # against the empty seat: no signal, no seat
    reg2 = Registry(work_root / "registry2")
    _register(reg2, good)
    reg2.promote(good.name, how="manual", night=None, decision={})
    assert not champion_decision(reg2, cache, split, null, cfg, Peer(None)).promoted  # worse
    tied = champion_decision(reg2, cache, split, good, cfg, Peer(None))  # the champion's own run: a tie
    assert not tied.promoted and tied.difference["mean"] == 0.0
    assert reg2.champion().model_id == good.name

    # Tomorrow's ranks: every stock with a row on the last day gets a finite score; same champion, same file.
    first = tomorrows_ranks(reg2, cache, Peer(None), cfg)
    one = first.path.read_bytes()
    again = tomorrows_ranks(reg2, cache, Peer(None), cfg)
    assert again.path == first.path and again.path.read_bytes() == one
    last = len(cache.dates) - 1
    assert first.table.height == int(cache.valid[last].sum())
    for h in cache.horizons:
        assert first.table[f"score_{h}d"].is_finite().all()
        assert sorted(first.table[f"rank_{h}d"].to_list()) == list(range(1, first.table.height + 1))
        assert first.table[f"decile_{h}d"].min() == 1 and first.table[f"decile_{h}d"].max() == 10
    assert first.features and all(f"x_{f}" in first.table.columns for f in first.features)


def test_nights_fill_the_live_record_and_a_rerun_of_a_night_changes_nothing_it_should_not(
        prefect_harness, market, work_root, capsys):
    from flows.cli import main
    from flows.pipeline import run_pipeline

    days = trading_days(market["full"])
    nights = days[-3:-1]
    seat = _dryrun(panel_as_of(market["full"], days[-4], market["folder"] / "n0.parquet"), market["config"])
    assert main(["champion", "promote", str(seat)]) == 0
    reg = Registry(work_root / "registry")

    def night(date: str) -> dict:
        panel = panel_as_of(market["full"], date, market["folder"] / f"{date}.parquet")
        r = run_pipeline(mode="hpo", data_path=str(panel), config_path=str(market["config"]), n_trials=1,
                         max_epochs=1, hpo_max_epochs=1)
        assert r["ok"], r
        return r

    runs = [night(d) for d in nights]
    for r, d in zip(runs, nights, strict=True):
        decision = json.loads((Path(r["run_dir"]) / "decision.json").read_text())
        assert decision["night"] == d and decision["champion"] is not None
        assert (Path(r["run_dir"]) / f"ranks-{d}.parquet").is_file()
        assert (Path(r["run_dir"]) / "plots" / "live.png").stat().st_size > 1000
    assert [p.name for p in sorted((reg.root / "ranks").iterdir())] == [f"ranks-{d}.parquet" for d in nights]

    # The live record: each earlier night's ranks scored against the returns that arrived since.
    history = pl.read_csv(reg.root / "live" / "history.csv")
    full = pl.read_parquet(market["full"])
    champ = history.filter((pl.col("model") == "champion") & (pl.col("horizon") == 1)).sort("date")
    assert champ["date"].to_list() == nights[:1]  # the last night's ranks wait for tomorrow's returns
    assert history.filter(pl.col("model") == "peer")["date"].to_list() == nights[:1]
    for row in champ.iter_rows(named=True):
        ranks = pl.read_parquet(reg.root / "ranks" / f"ranks-{row['date']}.parquet")
        realised = full.filter(pl.col("Date").cast(pl.Utf8) == row["date"]).select("Code", "target_1d")
        both = ranks.join(realised, on="Code").drop_nulls(["score_1d", "target_1d"])
        assert row["rankic"] == pytest.approx(spearmanr(both["score_1d"], both["target_1d"]).statistic, abs=1e-6)
        assert row["model_id"] == ranks["model_id"][0]

    # The last night again: one ranks file, one row per (date, model, horizon), the champion changed at most once.
    champion_before = (reg.root / "champion.json").read_bytes()
    ranks_before = (reg.root / "ranks" / f"ranks-{nights[-1]}.parquet").read_bytes()
    night(nights[-1])
    assert len(list((reg.root / "ranks").glob(f"ranks-{nights[-1]}*"))) == 1
    again = pl.read_csv(reg.root / "live" / "history.csv")
    assert again.equals(history)
    changes = [d for d in reg.decisions() if d.get("night") == nights[-1] and d.get("promoted")]
    assert len(changes) <= 1
    if (reg.root / "champion.json").read_bytes() == champion_before:
        assert (reg.root / "ranks" / f"ranks-{nights[-1]}.parquet").read_bytes() == ranks_before

    capsys.readouterr()
    assert main(["champion", "show"]) == 0
    shown = capsys.readouterr().out
    assert "champion: " in shown and "live record: 1 night(s) scored" in shown and "last decisions:" in shown
    assert np.isfinite(champ["spread"].to_numpy()).all()
