"""HPO study: search space, planted optimum, pruning, shared storage across processes, a killed worker,
a diverging trial, a study continued across runs, and the `atft hpo` command through Prefect.

Most tests use cheap synthetic score functions through the real `run_study` machinery (queue,
workers, storage, pruner, reports); they are module-level so worker processes can import them.
Two tests train the real model on a tiny panel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from atft_core.config import AtftConfig
from atft_core.errors import ConfigError
from atft_core.hpo.config import FAIL_REASON_ATTR, HpoConfig
from atft_core.hpo.objective import Objective, report_epoch
from atft_core.hpo.report import trial_rows
from atft_core.hpo.space import SearchSpace, apply_params
from atft_core.hpo.storage import build_storage, dashboard_command, default_storage_url, display_url
from atft_core.hpo.study import prepare_study, run_study
from atft_core.hpo.worker import run_worker, worker_seed

PLANTED_LR, PLANTED_W = 3e-3, 0.7
SPACE = ("params:\n"
         "  train.lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}\n"
         "  loss.rankic_weight: {type: float, low: 0.0, high: 1.0}\n"
         "  model.dropout: {type: float, low: 0.0, high: 0.5}\n")


# -- score functions (module level: worker processes import them by name) ----------------------------
def planted_value(cfg: AtftConfig) -> float:
    """1 at lr = 3e-3 and rankic_weight = 0.7, falling away from there; dropout does not matter."""
    lr_miss = (math.log10(cfg.train.lr) - math.log10(PLANTED_LR)) / 4
    return 1.0 - lr_miss ** 2 - (cfg.loss.rankic_weight - PLANTED_W) ** 2


def planted(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    value = planted_value(cfg)
    for epoch in range(cfg.train.max_epochs):
        report_epoch(trial, epoch, value, cfg.train.max_epochs)
    return value


def slow_planted(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """Long enough per epoch for a second worker to start, or for a test to kill the worker mid-trial."""
    value = planted_value(cfg)
    for epoch in range(cfg.train.max_epochs):
        time.sleep(float(os.environ.get("ATFT_TEST_EPOCH_S", "0.3")))
        report_epoch(trial, epoch, value, cfg.train.max_epochs)
    return value


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def space(tmp_path) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return str(path)


@pytest.fixture(scope="module")
def tiny_cache(tiny_demo, tmp_path_factory) -> Path:
    from atft_core.data.cache.build import build_cache

    return build_cache(tiny_demo, tmp_path_factory.mktemp("cache"), progress=False).path


@pytest.fixture(scope="module")
def tiny_train_cfg(tiny_config) -> AtftConfig:
    """Tiny model, 6 training days per epoch, 20 validation days: a few seconds per epoch on a CPU."""
    cfg = AtftConfig.from_yaml(tiny_config)
    cfg.data.split.val_days = 20
    cfg.data.split.test_days = 0
    cfg.train.max_train_days = 6
    cfg.train.device = "cpu"
    return cfg


def hpo(space: str, **kw) -> HpoConfig:
    base = {"search_space": space, "n_startup_trials": 6, "max_epochs": 3, "heartbeat_interval_s": 1,
            "grace_period_s": 3}
    return HpoConfig(**{**base, **kw})


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def load(url: str, name: str = "atft") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=build_storage(url, HpoConfig()))


# -- search space -----------------------------------------------------------------------------------
def test_packaged_search_space_names_real_config_fields_and_applies():
    sp = SearchSpace.load()
    expected = {"train.lr", "train.weight_decay", "model.hidden", "model.attn_heads", "model.dropout", "data.window",
                "model.graph_topk", "data.days_per_batch", "model.fan_k", "loss.rankic_weight", "loss.cs_ic_weight",
                "loss.sharpe_weight", "model.vsn_var_dim", "model.vsn_gate", "model.current_day_width"}
    assert set(sp.params) == expected
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    base = AtftConfig()
    for _ in range(5):
        params = sp.suggest(study.ask())
        cfg = apply_params(base, params)
        assert cfg.model.hidden % cfg.model.attn_heads == 0
        assert cfg.train.lr == params["train.lr"] and cfg.loss.sharpe_weight == params["loss.sharpe_weight"]
        assert cfg.data.window == params["data.window"] and isinstance(cfg.data.window, int)
    assert base.train.lr == AtftConfig().train.lr  # the base config is never modified


def test_search_space_rejects_typos_wrong_types_and_incompatible_sizes():
    with pytest.raises(ValueError, match=r"'lrr' is not a field of train.*known"):
        SearchSpace.from_dict({"params": {"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    with pytest.raises(ValueError, match="float range for a field of type int"):
        SearchSpace.from_dict({"params": {"model.hidden": {"type": "float", "low": 8, "high": 64}}})
    with pytest.raises(ValueError, match=r"YAML reads 1.0e6 as text"):
        SearchSpace.from_dict(yaml.safe_load("params:\n  train.lr: {type: categorical, choices: [1.0e6]}"))
    with pytest.raises(ValueError, match="hidden 48 is not divisible by model.attn_heads 5"):
        SearchSpace.from_dict({"params": {"model.hidden": {"type": "categorical", "choices": [32, 48]},
                                          "model.attn_heads": {"type": "categorical", "choices": [1, 5]}}})


def test_storage_urls_sqlite_default_journal_and_env_placeholders(tmp_path, monkeypatch):
    assert default_storage_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert display_url(default_storage_url(tmp_path)) == default_storage_url(tmp_path)  # no slash lost
    assert display_url("postgresql://optuna:s3cret@db:5432/optuna") == "postgresql://optuna:***@db:5432/optuna"
    journal = build_storage(f"journal:{tmp_path}/j/optuna.log", HpoConfig())
    assert type(journal).__name__ == "JournalStorage"
    monkeypatch.delenv("ATFT_TEST_DB_DIR", raising=False)
    with pytest.raises(ValueError, match=r"\$\{ATFT_TEST_DB_DIR\}, which is not set"):
        build_storage("sqlite:///${ATFT_TEST_DB_DIR}/x.db", HpoConfig())
    monkeypatch.setenv("ATFT_TEST_DB_DIR", str(tmp_path))
    assert build_storage("sqlite:///${ATFT_TEST_DB_DIR}/x.db", HpoConfig()).url == f"sqlite:///{tmp_path}/x.db"


def test_dashboard_command_keeps_placeholders_and_never_shows_a_password(tmp_path):
    pg = "postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db:5432/optuna"
    assert dashboard_command(pg) == f'optuna-dashboard "{pg}"'  # the shell fills ${...} inside double quotes
    literal = dashboard_command("postgresql+psycopg2://optuna:s3cret@db:5432/optuna")
    assert "s3cret" not in literal and "***" not in literal and "${OPTUNA_DB_PASSWORD}@db" in literal
    assert dashboard_command(f"journal:{tmp_path}/a b/optuna.log") == f"optuna-dashboard '{tmp_path}/a b/optuna.log'"
    assert dashboard_command("sqlite:////x/$HOME/o.db") == 'optuna-dashboard "sqlite:////x/\\$HOME/o.db"'


def test_objective_maps_a_trial_to_a_float_so_optimize_works_from_a_notebook(space):
    objective = Objective("unused", AtftConfig(), SearchSpace.load(space), max_epochs=2, score=planted)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=5)
    assert states(study) == {"COMPLETE": 5}
    assert all(len(t.intermediate_values) == 2 and 0 < t.value <= 1 for t in study.trials)
    assert set(study.best_params) == {"train.lr", "loss.rankic_weight", "model.dropout"}


# -- search ----------------------------------------------------------------------------------------
def test_study_finds_the_planted_good_region(tmp_path, space):
    s = run_study("unused", AtftConfig(), hpo(space, n_trials=24, pruner="none", max_epochs=1), tmp_path,
                  score=planted)
    assert s.counts["complete"] == 24 and s.study_counts["total"] == 24
    assert s.best_value > 0.97, s.best_params
    assert 1e-3 < s.best_params["train.lr"] < 1e-2 and abs(s.best_params["loss.rankic_weight"] - PLANTED_W) < 0.15
    values = [t.value for t in load(default_storage_url(tmp_path)).trials]
    # TPE's modelled trials beat its random start-up trials on average: it learned where the region is.
    assert sum(values[12:]) / 12 > sum(values[:6]) / 6
    report = json.loads((tmp_path / "hpo.json").read_text())
    assert report["best_params"] == s.best_params and report["counts"]["complete"] == 24
    assert report["dashboard"] == f'optuna-dashboard "{default_storage_url(tmp_path)}"'
    assert set(report["importances"]) == {"train.lr", "loss.rankic_weight", "model.dropout"}
    assert (tmp_path / "trials.csv").read_text().count("\n") == 25
    for png in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruner_stops_bad_trials_early(tmp_path, space, pruner):
    s = run_study("unused", AtftConfig(), hpo(space, n_trials=10, pruner=pruner, max_epochs=4, n_startup_trials=10,
                                                pruner_startup_trials=3), tmp_path, score=planted)
    study = load(default_storage_url(tmp_path))
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert s.counts["pruned"] == len(pruned) >= 2, states(study)
    assert all(len(t.intermediate_values) < 4 for t in pruned)  # stopped before the last epoch
    assert all(len(t.intermediate_values) == 4 for t in complete)
    best_complete = max(t.value for t in complete)
    assert all(t.value < best_complete for t in pruned)  # the best configuration is never the one pruned


# -- shared storage, workers ---------------------------------------------------------------------------
def logged_planted(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """planted, plus one line per call in $ATFT_TEST_RAN_LOG: proof of how often each trial really ran."""
    with open(os.environ["ATFT_TEST_RAN_LOG"], "a") as log:
        log.write(f"{trial.number} {os.getpid()}\n")
    time.sleep(0.05)
    return planted(trial, cfg, cache_path)


def test_k_processes_drain_one_journal_study_exactly_once(tmp_path, space, monkeypatch):
    ran_log = tmp_path / "ran.txt"
    monkeypatch.setenv("ATFT_TEST_RAN_LOG", str(ran_log))
    cfg = hpo(space, n_trials=12, parallel=3, max_epochs=2, pruner="none")  # no --storage: the journal file
    s = run_study("unused", AtftConfig(), cfg, tmp_path, score=logged_planted)
    url = default_storage_url(tmp_path, processes=3)
    assert url == f"journal:{tmp_path.resolve()}/optuna.log" and s.storage == url
    study = load(url)
    assert sorted(t.number for t in study.trials) == list(range(12))  # exactly N trials, unique numbers
    assert states(study) == {"COMPLETE": 12}
    calls = [line.split() for line in ran_log.read_text().splitlines()]
    assert sorted(int(n) for n, _ in calls) == list(range(12))  # each trial's objective ran exactly once
    assert len({pid for _, pid in calls}) == 3  # on three processes
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "workers").glob("worker-*.json"))]
    assert [len(r["trials"]) for r in reports] == [4, 4, 4]  # each worker ran its share
    assert sorted(t["number"] for r in reports for t in r["trials"]) == list(range(12))
    assert s.counts["complete"] == 12 and s.overhead["trials"] == 12
    # The next run continues the same journal study.
    again = run_study("unused", AtftConfig(), dataclasses.replace(cfg, n_trials=4, parallel=2), tmp_path,
                      score=logged_planted)
    assert again.study_counts == {"complete": 16, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "total": 16}


def test_sqlite_is_refused_for_several_processes_before_anything_is_queued(tmp_path, space):
    url = f"sqlite:///{tmp_path}/shared.db"
    with pytest.raises(ValueError, match=r"2 worker processes cannot share the SQLite storage.*journal:PATH"):
        run_study("unused", AtftConfig(), hpo(space, n_trials=4, parallel=2, storage=url), tmp_path, score=planted)
    assert not (tmp_path / "shared.db").exists()


def _one_worker(url: str, cfg: HpoConfig) -> None:  # a spawned process: the worker the test kills
    run_worker("unused", AtftConfig(), cfg, storage_url=url, score=slow_planted)


def test_killed_worker_keeps_finished_trials_and_its_stale_trial_is_failed_and_retried(tmp_path, space, monkeypatch):
    import multiprocessing

    monkeypatch.setenv("ATFT_TEST_EPOCH_S", "0.5")
    cfg = hpo(space, n_trials=4, max_epochs=3, pruner="none")
    url = default_storage_url(tmp_path)
    batch = prepare_study(cfg, url)
    proc = multiprocessing.get_context("spawn").Process(target=_one_worker, args=(url, cfg))
    proc.start()
    try:
        victim = _wait_for_mid_trial(url, proc, min_complete=2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    before = {t.number: (t.state, t.value, t.params, t.datetime_complete) for t in load(url).trials
              if t.state == TrialState.COMPLETE}
    assert len(before) >= 2 and load(url).trials[victim].state == TrialState.RUNNING
    time.sleep(cfg.grace_period_s + 1)  # the dead worker's heartbeat is now older than the grace period

    # A restarted worker (same study) fails the stale trial, retries it and drains the rest of the queue.
    report = run_worker("unused", AtftConfig(), cfg, storage_url=url, worker_index=1,
                        sampler_seed=worker_seed(0, batch.first_number, 1), score=slow_planted)
    study = load(url)
    after = {t.number: (t.state, t.value, t.params, t.datetime_complete) for t in study.trials if t.number in before}
    assert after == before  # every finished trial intact
    stale = study.trials[victim]
    assert stale.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == stale.params
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}  # 4 queued trials done, plus the killed attempt
    assert report.trials  # the restarted worker did the remaining work
    row = next(r for r in trial_rows(study) if r["number"] == victim)
    assert "no heartbeat" in row["fail_reason"] and f"trial {retries[0].number}" in row["fail_reason"]


def _wait_for_mid_trial(url: str, proc, min_complete: int, timeout: float = 90) -> int:
    """Number of a RUNNING trial that has reported an epoch, once `min_complete` trials are COMPLETE."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.is_alive(), "the worker exited before it could be killed"
        trials = load(url).trials
        running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
        if sum(t.state == TrialState.COMPLETE for t in trials) >= min_complete and running:
            return running[0].number
        time.sleep(0.1)
    raise AssertionError("the worker never got mid-trial")


def test_same_study_continued_across_two_runs_accumulates_trials(tmp_path, space):
    storage = f"journal:{tmp_path}/study/optuna.log"  # the journal file works like the SQL storages here
    cfg = hpo(space, n_trials=3, max_epochs=1, pruner="none", storage=storage, study_name="nightly")
    first = run_study("unused", AtftConfig(), cfg, tmp_path / "run1", score=planted)
    second = run_study("unused", AtftConfig(), cfg, tmp_path / "run2", score=planted)
    assert first.counts["total"] == 3 and second.counts["total"] == 3
    assert second.study_counts["total"] == 6 and second.study_counts["complete"] == 6
    study = optuna.load_study(study_name="nightly", storage=build_storage(storage, cfg))
    assert [t.number for t in study.trials] == list(range(6))
    # The second run's sampler is seeded differently: it does not repeat the first run's trials.
    assert {t.params["train.lr"] for t in study.trials[:3]}.isdisjoint(t.params["train.lr"] for t in study.trials[3:])
    assert second.best_value == max(t.value for t in study.trials)


def test_a_study_from_before_a_choices_change_is_refused_up_front_and_kept(tmp_path):
    """A nightly study whose trials sampled model.vsn_gate from [sigmoid, softmax] meets a search space
    that added `signed`: Optuna would fail every new trial, so nothing is queued and the study stays."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    gate = "  model.vsn_gate: {type: categorical, choices: [%s]}\n"
    old, new, wider = (tmp_path / n for n in ("old.yaml", "new.yaml", "wider.yaml"))
    old.write_text(SPACE + gate % "sigmoid, softmax")
    new.write_text(SPACE + gate % "signed, sigmoid, softmax")
    wider.write_text(SPACE.replace("high: 0.5", "high: 0.4") + gate % "sigmoid, softmax")  # a moved range is fine
    cfg = hpo(str(old), n_trials=2, max_epochs=1, pruner="none", storage=storage, study_name="nightly")
    run_study("unused", AtftConfig(), cfg, tmp_path / "run1", score=planted)
    with pytest.raises(ConfigError) as refused:
        run_study("unused", AtftConfig(), dataclasses.replace(cfg, search_space=str(new)), tmp_path / "run2",
                  score=planted)
    msg = str(refused.value)
    assert "model.vsn_gate" in msg and "['sigmoid', 'softmax']" in msg and "['signed', 'sigmoid', 'softmax']" in msg
    assert "--study-name nightly-2" in msg and "'nightly' is unchanged" in msg
    assert "train.lr" not in msg  # only what changed is named
    assert states(load(storage, "nightly")) == {"COMPLETE": 2}  # nothing queued
    again = run_study("unused", AtftConfig(), dataclasses.replace(cfg, search_space=str(wider)), tmp_path / "run3",
                      score=planted)
    assert again.study_counts["complete"] == 4


def oom(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    raise MemoryError("cannot allocate 80 GiB")


def nan(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    return float("nan")


def bug(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    return {}["missing"]


def test_out_of_memory_and_non_finite_values_fail_the_trial_but_a_bug_stops_the_study(tmp_path, space):
    cfg = hpo(space, n_trials=2, max_epochs=1)
    for objective, kind in ((oom, "out_of_memory"), (nan, "failed")):
        s = run_study("unused", AtftConfig(), dataclasses.replace(cfg, study_name=kind), tmp_path,
                      score=objective)
        assert s.counts["failed"] == 2 and s.best_value is None
        reasons = {t.user_attrs["fail_kind"] for t in load(default_storage_url(tmp_path), kind).trials}
        assert reasons == {kind}
    with pytest.raises(KeyError):
        run_study("unused", AtftConfig(), dataclasses.replace(cfg, study_name="bug"), tmp_path, score=bug)
    crashed = load(default_storage_url(tmp_path), "bug").trials
    assert crashed[0].state == TrialState.FAIL and "KeyError" in crashed[0].user_attrs[FAIL_REASON_ATTR]
    assert crashed[1].state == TrialState.WAITING  # left queued for the next run once the bug is fixed


# -- the real training objective ----------------------------------------------------------------------
def test_diverging_trial_fails_with_reason_and_the_study_completes(tmp_path, tiny_cache, tiny_train_cfg):
    space = tmp_path / "space.yaml"  # lr 1e6 diverges within two batches; 1e-3 trains normally
    space.write_text("params:\n  train.lr: {type: categorical, choices: [1.0e+6, 1.0e-3]}\n")
    # seed 5 samples lr 1e6, 1e-3, 1e6: a completed trial after a diverged one, then another divergence
    cfg = HpoConfig(n_trials=3, max_epochs=2, search_space=str(space), pruner="none", seed=5)
    s = run_study(tiny_cache, tiny_train_cfg, cfg, tmp_path / "out")
    study = load(default_storage_url(tmp_path / "out"))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert failed and complete and len(failed) + len(complete) == 3, states(study)
    for t in failed:
        assert t.params["train.lr"] == 1e6 and t.value is None  # a FAIL, never a made-up score
        assert "non-finite loss" in t.user_attrs[FAIL_REASON_ATTR] and t.user_attrs["fail_kind"] == "diverged"
    for t in complete:
        history = t.user_attrs["history"]
        assert [h["epoch"] for h in history] == [0, 1]
        # reported every epoch (the history attribute is rounded to 6 digits)
        assert t.intermediate_values == {h["epoch"]: pytest.approx(h["val_rankic"], abs=1e-6) for h in history}
        assert t.value == max(t.intermediate_values.values())
    assert s.counts["failed"] == len(failed) and s.best_value == max(t.value for t in complete)
    assert "fail_reason" in (tmp_path / "out" / "trials.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_atft_hpo_command_runs_through_prefect_with_two_workers(tmp_path, tiny_demo, prefect_harness, capsys):
    from prefect.artifacts import Artifact

    from flows.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "  model.dropout: {type: float, low: 0.0, high: 0.3}\n")
    config = tmp_path / "cfg.yaml"
    config.write_text("data: {window: 10, min_stocks: 10, split: {val_days: 20, test_days: 0}}\n"
                      "model: {hidden: 16, attn_heads: 2, gat_heads: [2]}\n"
                      "train: {progress: false, max_train_days: 6, device: cpu}\n")
    out = tmp_path / "hpo"
    argv = ["hpo", "--data-path", str(tiny_demo), "--n-trials", "2", "--max-epochs", "1", "--study-name", "cli",
            "--output-dir", str(out), "--parallel", "2", "--cache-dir", str(tmp_path / "cache"),
            "--config", str(config), "--search-space", str(space)]
    assert main(argv) == 0, capsys.readouterr()
    report = json.loads((out / "hpo.json").read_text())
    assert report["counts"]["complete"] == 2 and report["study_counts"]["total"] == 2
    assert report["storage"] == f"journal:{out.resolve()}/optuna.log"  # K > 1 processes: the journal file
    assert set(report["best_params"]) == {"train.lr", "model.dropout"}
    assert len(list((out / "workers").glob("worker-*.json"))) == 2  # two worker processes took part
    assert "best validation RankIC" in capsys.readouterr().out
    summary = Artifact.get("hpo-summary")
    assert summary is not None and "Best validation RankIC" in summary.data
    trials = Artifact.get("hpo-trials")
    assert trials is not None and len(json.loads(trials.data)) == 2


@pytest.mark.slow
def test_two_nightly_pipeline_runs_continue_one_study(tmp_path, tiny_demo, prefect_harness, monkeypatch):
    """Flow `atft` in mode hpo, twice (as the nightly deployment runs it): one study in the work root's
    studies/ grows, whatever the run folders' output_dir."""
    from flows.pipeline import run_pipeline

    monkeypatch.setenv("ATFT_HOME", str(tmp_path / "home"))
    studies = tmp_path / "home" / "studies"

    config = tmp_path / "cfg.yaml"
    config.write_text("data: {window: 10, min_stocks: 10, split: {val_days: 20, test_days: 0}}\n"
                      "model: {hidden: 16, attn_heads: 2, gat_heads: [2]}\n"
                      "train: {progress: false, max_train_days: 4, device: cpu}\n"
                      "nightly: {challenger_ensemble: 1, challenger_epochs: 1}\n")
    out = tmp_path / "runs"
    params = dict(mode="hpo", data_path=str(tiny_demo), output_dir=str(out), cache_dir=str(tmp_path / "cache"),
                  config_path=str(config), max_epochs=1, n_trials=1, study_name="nightly", min_rankic=-1.0,
                  gpu_stage="local")
    first, second = run_pipeline(**params), run_pipeline(**params)
    assert first["state"] == second["state"] == "Completed"
    reports = [json.loads((Path(r["run_dir"]) / "hpo.json").read_text()) for r in (first, second)]
    assert [r["study_counts"]["total"] for r in reports] == [1, 2]
    assert reports[1]["storage"] == f"sqlite:///{studies.resolve()}/optuna.db"
    assert [t.number for t in load(default_storage_url(studies), "nightly").trials] == [0, 1]


def test_pool_fan_out_on_a_file_storage_is_refused_with_exit_2(tmp_path, capsys):
    """Several gpu-pool workers may sit on other hosts: a SQLite or journal file is refused up front."""
    from flows.cli import main

    for storage in (None, f"journal:{tmp_path}/j.log"):
        argv = ["hpo", "--n-trials", "4", "--parallel", "2", "--gpu-stage", "deployment", "--output-dir",
                str(tmp_path / "out")] + (["--storage", storage] if storage else [])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Use PostgreSQL" in err and "gpu pool" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "j.log").exists()  # nothing queued, nothing written
