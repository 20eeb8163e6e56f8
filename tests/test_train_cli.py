"""`atft train` reads its config like dryrun; the HPO's best trial comes back as a config it accepts."""

from __future__ import annotations

import pytest

import flows.pipeline
from atft_core.config import TRAIN_RECIPE, AtftConfig
from flows.cli import main, write_best_config


def test_best_trial_yaml_round_trips_into_a_train_config(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data: {split: {val_days: 60}}\nmodel: {gat_heads: [2]}\n")
    params = {"train.lr": 0.0031, "model.hidden": 64, "model.dropout": 0.15, "data.window": 20}
    path = write_best_config(str(base), params, tmp_path / "best_config.yaml")
    cfg = AtftConfig.from_yaml(path)
    assert (cfg.train.lr, cfg.model.hidden, cfg.model.dropout, cfg.data.window) == (0.0031, 64, 0.15, 20)
    assert cfg.data.split.val_days == 60 and cfg.model.gat_heads == (2,)  # the base config's own values kept
    assert "!!python" not in path.read_text()


def test_train_with_a_bad_config_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train: {max_epoch: 5}\n")
    assert main(["train", "--config", str(bad), "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "max_epoch" in err and "max_epochs" in err and "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("yaml,flags,expected", [
    ("", [], TRAIN_RECIPE),  # the measured recipe: a 3-member ensemble of 3-epoch runs
    ("train: {max_epochs: 7}\n", [], {"ensemble": TRAIN_RECIPE["ensemble"], "max_epochs": 7}),
    ("train: {ensemble: 1}\n", ["--max-epochs", "12"], {"ensemble": 1, "max_epochs": 12}),
    ("", ["--ensemble", "4"], {"ensemble": 4, "max_epochs": TRAIN_RECIPE["max_epochs"]}),
])
def test_train_runs_the_measured_recipe_unless_told_otherwise(tmp_path, monkeypatch, yaml, flags, expected):
    seen = {}

    def run_pipeline(**params):  # stands in for the flow: what the CLI asks it to run is under test here
        seen.update(params)
        return {"ok": True, "run_dir": str(tmp_path), "gate": {"passed": True, "criteria": []}}

    monkeypatch.setattr(flows.pipeline, "run_pipeline", run_pipeline)
    args = ["train", "--output-dir", str(tmp_path / "runs"), *flags]
    if yaml:
        (tmp_path / "c.yaml").write_text(yaml)
        args += ["--config", str(tmp_path / "c.yaml")]
    assert main(args) == 0
    got = {k: seen.get(k) for k in expected}
    from_file = {k for k in expected if f"{k}:" in yaml and f"--{k.replace('_', '-')}" not in flags}
    assert {k: v for k, v in got.items() if k not in from_file} == \
        {k: v for k, v in expected.items() if k not in from_file}
    assert all(seen.get(k) is None for k in from_file)  # the file's own value is left to the flow's config
