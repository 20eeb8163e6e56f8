"""`atft train` reads its config like dryrun; the HPO's best trial comes back as a config it accepts."""

from __future__ import annotations

from atft_core.config import DryRunConfig
from flows.cli import TRAIN_MAX_EPOCHS, main, write_best_config


def test_best_trial_yaml_round_trips_into_a_train_config(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data: {split: {val_days: 60}}\nmodel: {gat_heads: [2]}\n")
    params = {"train.lr": 0.0031, "model.hidden": 64, "model.dropout": 0.15, "data.window": 20}
    path = write_best_config(str(base), params, tmp_path / "best_config.yaml")
    cfg = DryRunConfig.from_yaml(path)
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
    assert not (tmp_path / "runs").exists() and TRAIN_MAX_EPOCHS >= 10
