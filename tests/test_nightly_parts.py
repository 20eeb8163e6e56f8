"""The nightly product's parts on data whose answer is known: promotion rule, registry, live record, health, replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from atft_core.nightly.health import DEGRADED, HEALTHY, WARMING_UP, assess
from atft_core.nightly.live import SCHEMA, score_ranks, update_history
from atft_core.nightly.promotion import decide, unseen_days
from atft_core.nightly.registry import Registry, RegistryError
from atft_core.nightly.replay import panel_as_of, trading_days

REPO = Path(__file__).resolve().parents[1]
DATES = [f"2024-01-{d:02d}" for d in range(1, 31)] + [f"2024-02-{d:02d}" for d in range(1, 29)]


def _decide(challenger: np.ndarray, champion: np.ndarray | None):
    days = np.arange(len(challenger))
    return decide(night="2024-02-28", challenger="new", champion=None if champion is None else "old",
                  dates=DATES, days=days, challenger_daily=challenger, champion_daily=champion, peer_rankic=0.01)


def test_only_a_confidently_better_challenger_is_promoted():
    rng = np.random.default_rng(0)
    market = rng.normal(0, 0.08, 58)  # each day's common part: the pair shares it
    champion = 0.03 + market
    better = champion + 0.03 + rng.normal(0, 0.01, 58)
    assert _decide(better, champion).promoted
    d = _decide(better, champion)
    assert d.difference["lo"] > 0 and d.n_days == 58 and d.days == [DATES[0], DATES[57]]
    assert "PROMOTED" in d.markdown() and "+0.0100" in d.markdown()  # the peer's number is shown too
    tied = champion + rng.normal(0, 0.01, 58)
    assert not _decide(tied, champion).promoted
    worse = champion - 0.03
    assert not _decide(worse, champion).promoted
    assert not _decide(champion, champion).promoted  # identical: the interval is [0, 0], not above zero
    # a margin the team asks for: the same confident gain of 0.03 does not clear a minimum gain of 0.05
    days = np.arange(58)
    margin = decide(night="2024-02-28", challenger="new", champion="old", dates=DATES, days=days,
                    challenger_daily=better, champion_daily=champion, peer_rankic=None, min_gain=0.05)
    assert not margin.promoted and "minimum gain +0.0500" in margin.reason and margin.difference["lo"] > 0


def test_an_empty_seat_is_a_model_that_predicts_nothing():
    rng = np.random.default_rng(1)
    assert _decide(0.05 + rng.normal(0, 0.05, 58), None).promoted
    noise = _decide(rng.normal(0, 0.05, 58), None)
    assert not noise.promoted and "seat stays empty" in noise.reason
    nan_days = np.full(58, np.nan)
    assert not _decide(nan_days, None).promoted  # no comparable day: nothing to promote on


def test_compared_days_are_the_test_days_no_model_has_seen():
    test = np.arange(40, 58)
    assert unseen_days(DATES, test, [DATES[30]], embargo=5).tolist() == list(range(40, 58))
    assert unseen_days(DATES, test, [DATES[30], DATES[45]], embargo=5).tolist() == list(range(51, 58))
    assert unseen_days(DATES, test, ["2024-01-31"], embargo=2).tolist() == list(range(40, 58))  # not a trading day
    assert len(unseen_days(DATES, test, [DATES[57]], embargo=1)) == 0


def _fake_run(tmp: Path, name: str, payload: bytes) -> Path:
    run = tmp / "runs" / name
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(payload)
    return run


def test_promote_and_rollback_restore_the_previous_champion_byte_for_byte(tmp_path):
    reg = Registry(tmp_path / "registry")
    assert reg.champion() is None
    for name, payload in (("a", b"weights-a"), ("b", b"weights-b")):
        reg.add_model(_fake_run(tmp_path, name, payload), {"seen_until": "2024-01-10"})
    reg.promote("a", how="nightly", night="2024-01-11", decision={"reason": "first"})
    before = (tmp_path / "registry" / "champion.json").read_bytes()
    reg.promote("b", how="manual", night=None, decision={"reason": "by hand"})
    assert reg.champion().model_id == "b" and reg.changed_on("2024-01-11") and not reg.changed_on("2024-01-12")
    back = reg.rollback()
    assert back["model_id"] == "a"
    assert (tmp_path / "registry" / "champion.json").read_bytes() == before
    assert reg.champion().checkpoint.read_bytes() == b"weights-a"
    assert [d["how"] for d in reg.decisions()] == ["nightly", "manual", "rollback"]
    with pytest.raises(RegistryError, match="only its first champion"):
        reg.rollback()
    assert (tmp_path / "registry" / "champion.json").read_bytes() == before  # a refused rollback changes nothing
    # a model never changes once registered: registering the same run again returns it as it was
    (tmp_path / "runs" / "a" / "checkpoint.pt").write_bytes(b"retrained")
    assert reg.add_model(tmp_path / "runs" / "a", {"seen_until": "x"}).checkpoint.read_bytes() == b"weights-a"


def test_champion_cli_refuses_bad_requests_with_one_line_and_exit_2(tmp_path):
    env = {"ATFT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}

    def atft(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", "champion", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    shown = atft("show")
    assert shown.returncode == 0 and "no champion yet" in shown.stdout
    for args, says in ((("rollback",), "nothing to roll back to"),
                       (("promote", "no-such-run"), "is not a run folder with a checkpoint.pt")):
        r = atft(*args)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "home" / "registry" / "champion.json").exists()


def _cache_like(dates: list[str], codes: list[str], y: np.ndarray):
    class C:  # the parts of a Cache the live record reads
        pass
    c = C()
    c.dates, c.codes, c.horizons = dates, codes, (1,)
    c.y = y[:, :, None].astype(np.float32)
    c.valid = np.isfinite(y)
    return c


def _ranks(date: str, codes: list[str], score: np.ndarray, peer: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"Date": pl.Series([date] * len(codes)).str.to_date(), "Code": codes,
                         "score_1d": score, "peer_score_1d": peer, "model_id": ["m1"] * len(codes)})


def test_live_record_matches_scipy_and_a_rerun_adds_no_row(tmp_path):
    rng = np.random.default_rng(3)
    codes = [f"{1000 + i}" for i in range(50)]
    dates = DATES[:4]
    y = rng.normal(0, 0.02, (4, 50))
    y[3] = np.nan  # tonight: no return yet
    cache = _cache_like(dates, codes, y)
    folder = tmp_path / "ranks"
    folder.mkdir()
    scores = {}
    for d in range(4):
        s = y[max(d - 1, 0)] + rng.normal(0, 0.02, 50) if d else rng.normal(0, 1, 50)
        scores[d] = np.nan_to_num(s)
        _ranks(dates[d], codes, scores[d], rng.normal(0, 1, 50)).write_parquet(folder / f"ranks-{dates[d]}.parquet")
    path = tmp_path / "live" / "history.csv"
    history = update_history(path, folder, cache, scored_on=dates[3], min_stocks=10)
    assert sorted(set(history["date"].to_list())) == dates[:3]  # tonight's ranks wait for their returns
    champ = history.filter(pl.col("model") == "champion").sort("date")
    for d, row in enumerate(champ.iter_rows(named=True)):
        assert row["rankic"] == pytest.approx(spearmanr(scores[d], y[d]).statistic, abs=1e-9)
        top, bottom = np.argsort(-scores[d])[:5], np.argsort(-scores[d])[-5:]
        assert row["spread"] == pytest.approx(y[d, top].mean() - y[d, bottom].mean(), abs=1e-6)
    assert champ["turnover"][0] is None and 0 <= champ["turnover"][1] <= 1
    again = update_history(path, folder, cache, scored_on=dates[3], min_stocks=10)
    assert again.equals(history) and len(pl.read_csv(path, schema=SCHEMA)) == 6  # 3 dates x (champion, peer)


def test_a_ranks_day_with_too_few_returns_is_not_scored_yet():
    codes = [f"{i}" for i in range(30)]
    y = np.full((1, 30), np.nan)
    y[0, :5] = 0.01
    rows = score_ranks(_ranks(DATES[0], codes, np.arange(30.0), np.arange(30.0)), None,
                       _cache_like(DATES[:1], codes, y), scored_on=DATES[1], min_stocks=10)
    assert rows == []


def _history(champion: list[float], peer: list[float] | None = None) -> pl.DataFrame:
    rows = [{"date": DATES[i % 58] + f"-{i:03d}", "model": "champion", "model_id": "m", "horizon": 1, "rankic": v,
             "spread": 0.0, "turnover": None, "n_stocks": 100, "scored_on": "x"} for i, v in enumerate(champion)]
    rows += [{"date": DATES[i % 58] + f"-{i:03d}", "model": "peer", "model_id": "lightgbm", "horizon": 1,
              "rankic": v, "spread": 0.0, "turnover": None, "n_stocks": 100, "scored_on": "x"}
             for i, v in enumerate(peer or [])]
    return pl.DataFrame(rows, schema=SCHEMA)


def test_health_is_degraded_when_the_last_nights_fall_below_the_own_past_or_the_peer():
    rng = np.random.default_rng(5)
    steady = list(0.05 + rng.normal(0, 0.05, 60))
    assert assess(_history(steady[:12]), 1).state == WARMING_UP
    assert assess(_history(steady), 1).state == HEALTHY
    fell = steady[:40] + list(-0.03 + rng.normal(0, 0.05, 20))
    h = assess(_history(fell), 1)
    assert h.state == DEGRADED and "below its earlier nights" in h.reasons[0] and h.recent_mean < h.floor
    # level with its own past, but the peer is clearly better on the same nights
    peer = [v + 0.06 + rng.normal(0, 0.01) for v in steady]
    h = assess(_history(steady, peer), 1)
    assert h.state == DEGRADED and "trails the peer" in h.reasons[0] and h.vs_peer["hi"] < 0
    assert "DEGRADED" in h.markdown()


def test_a_panel_as_of_a_night_has_no_later_row_and_no_return_that_had_not_happened(tmp_path):
    dates = pl.Series(DATES[:10]).str.to_date()
    df = pl.DataFrame({"Date": dates.gather([i // 3 for i in range(30)]), "Code": ["a", "b", "c"] * 10,
                       "x": np.arange(30.0), "target_1d": np.ones(30), "target_5d": np.ones(30)})
    src = tmp_path / "full.parquet"
    df.write_parquet(src)
    cut = pl.read_parquet(panel_as_of(src, DATES[7], tmp_path / "cut.parquet"))
    assert trading_days(tmp_path / "cut.parquet")[-1] == DATES[7]
    known = cut.group_by("Date").agg(pl.col("target_1d").is_not_null().all(), pl.col("target_5d").is_not_null().all()
                                     ).sort("Date")
    assert known["target_1d"].to_list() == [True] * 7 + [False]
    assert known["target_5d"].to_list() == [True] * 3 + [False] * 5
    assert cut["x"].to_list() == list(np.arange(24.0))
    with pytest.raises(ValueError, match="no day on or before"):
        panel_as_of(src, "2023-12-31", tmp_path / "none.parquet")
    assert json.dumps(cut.columns) == json.dumps(df.columns)


def test_a_rollback_by_hand_reaches_the_s3_copy_of_the_registry(tmp_path, monkeypatch, s3_bucket, s3_endpoint, capsys):
    import boto3

    from flows.cli import main

    monkeypatch.setenv("ATFT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATFT_ARTIFACT_URI", f"s3://{s3_bucket}/atft")
    reg = Registry(tmp_path / "home" / "registry")
    for name in ("a", "b"):
        reg.add_model(_fake_run(tmp_path, name, name.encode()), {"seen_until": "2024-01-10"})
        reg.promote(name, how="manual", night=None, decision={})
    assert main(["champion", "rollback"]) == 0
    assert "registry mirrored to" in capsys.readouterr().out
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    mirrored = s3.get_object(Bucket=s3_bucket, Key="atft/registry/champion.json")["Body"].read()
    assert mirrored == (reg.root / "champion.json").read_bytes() and json.loads(mirrored)["model_id"] == "a"
    assert s3.get_object(Bucket=s3_bucket, Key="atft/registry/models/a/checkpoint.pt")["Body"].read() == b"a"
