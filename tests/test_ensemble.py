"""Seed ensembles: member k is the plain one-model run with seed + k (odd members on raw values when
alternating), the ensemble predicts their mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atft_core.config_rules import config_problems
from atft_core.data.cache.store import open_cache
from atft_core.dryrun import run_dryrun
from atft_core.train.checkpoint import load_checkpoint
from atft_core.train.ensemble import member_configs
from atft_core.train.trainer import Trainer, score_days
from flows.cli import main

# demo: the module's cache fixture; _one_thread: autouse, one torch thread as in test_trainer
from tests.test_trainer import _one_thread, demo, small_config  # noqa: F401

CODE_EDGES = (-2.0, -1.0, 0.0, 1.0, 2.0)


def _config(**train):
    cfg = small_config(**train)
    cfg.model.piecewise_edges = CODE_EDGES  # a coded encoding, so that alternating members differ
    cfg.data.split.val_days, cfg.data.split.test_days = 30, 30
    return cfg


def test_dry_run_ensemble_predicts_the_members_mean_and_keeps_every_checkpoint(demo, tmp_path):  # noqa: F811
    cache = open_cache(demo[1])
    out = tmp_path / "run"
    # alternating encodings (off by default) so that the members' configs differ and each checkpoint must
    # carry its own
    res = run_dryrun(demo[1], _config(seed=5, ensemble=2, ensemble_alternate_encoding=True), out)
    # each member is the plain run of its own seed; the odd one reads the raw values only
    raw = _config(seed=6)
    raw.model.piecewise_edges = ()
    assert _config().model.piecewise_edges  # this config has the code: member 1 differs from it
    members = [Trainer(cache, _config(seed=5)).fit(), Trainer(cache, raw).fit()]
    expected = np.mean([m.test_pred for m in members], axis=0)
    gate = json.loads((out / "gate.json").read_text())
    assert gate["metrics"]["ensemble"] == 2
    assert [m["seed"] for m in gate["metrics"]["members"]] == [5, 6]
    assert [m["inputs"] for m in gate["metrics"]["members"]] == ["raw values + piecewise code", "raw values"]
    h0 = cache.horizons[0]
    for got, m in zip(gate["metrics"]["members"], members, strict=True):  # member 0 is the one-model run, exactly
        assert got["test_rankic"] == m.test_metrics[h0]["rankic"] and got["val_rankic"] == m.val_metrics[h0]["rankic"]
    # the gate's scores are those of the mean prediction, on the same days
    scored = score_days(cache, members[0].test_days, expected.astype(np.float32), _config().data.min_stocks)
    assert gate["metrics"]["test_rankic"] == pytest.approx(scored[h0]["rankic"], abs=1e-6)
    assert gate["metrics"]["test_rankic"] not in [m.test_metrics[h0]["rankic"] for m in members]
    assert "model (seed ensemble of 2)" in res.baselines["markdown"]
    assert (out / "checkpoint.pt").exists() and (out / "checkpoint.member1.pt").exists()
    # each checkpoint carries its member's own model config, so it loads as the model it is
    assert load_checkpoint(out / "checkpoint.pt")["config"]["model"]["piecewise_edges"]
    assert not load_checkpoint(out / "checkpoint.member1.pt")["config"]["model"]["piecewise_edges"]
    assert {"checkpoint.pt", "checkpoint.member1.pt"} <= set(res.files)
    history = (out / "metrics.csv").read_text().splitlines()
    assert history[0].split(",").count("member") == 1 and len(history) == 1 + 2  # one epoch per member


def test_an_ensemble_cannot_resume_one_checkpoint(tmp_path, capsys):
    cfg = _config(ensemble=3, resume_from="some/checkpoint.pt")
    assert any("train.ensemble = 1" in p for p in config_problems(cfg))
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train: {ensemble: 3}\n")
    assert main(["train", "--config", str(yaml), "--resume", str(tmp_path / "checkpoint.pt"),
                 "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train.ensemble" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_members_share_the_encoding_unless_told_to_alternate():
    cfg = _config(seed=3, ensemble=4)
    assert [c.train.seed for c in member_configs(cfg)] == [3, 4, 5, 6]
    assert all(c.model.piecewise_edges == cfg.model.piecewise_edges for c in member_configs(cfg))
    cfg.train.ensemble_alternate_encoding = True
    assert [bool(c.model.piecewise_edges) for c in member_configs(cfg)] == [True, False, True, False]
    assert cfg.model.piecewise_edges  # the caller's config is left as it was
    cfg.train.ensemble_alternate_encoding, cfg.model.piecewise_edges = True, ()
    assert not any(c.model.piecewise_edges for c in member_configs(cfg))  # raw values everywhere
