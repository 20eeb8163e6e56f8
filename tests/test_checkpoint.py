"""Self-describing checkpoints: what they carry, resuming, and a clear refusal on another panel layout."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from atft_core.config import AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.train.checkpoint import CheckpointMismatch, load_checkpoint, restore
from atft_core.train.trainer import Trainer
from flows.cli import main
from tests.cli_output import has_traceback
from tests.panels import make_panel, write

CONFIG_YAML = """\
data: {window: 5, min_stocks: 5, min_train_days: 5, split: {val_days: 10, test_days: 0}}
model: {hidden: 8, attn_heads: 2, gat_heads: [2], static_dim: 4}
train: {max_epochs: 1, progress: false, device: cpu, max_train_days: 6}
"""


def _cfg(**train) -> AtftConfig:
    raw = AtftConfig.from_dict({"data": {"window": 5, "min_stocks": 5, "min_train_days": 5,
                                           "split": {"val_days": 10, "test_days": 0}},
                                  "model": {"hidden": 8, "attn_heads": 2, "gat_heads": [2], "static_dim": 4},
                                  "train": {"max_epochs": 1, "progress": False, "device": "cpu",
                                            "max_train_days": 6, **train}})
    return raw


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(panel, its cache, checkpoint after one epoch)."""
    root = tmp_path_factory.mktemp("ckpt")
    panel = write(make_panel(days=60, stocks=30, seed=1), root / "a.parquet")
    cache = build_cache(panel, root / "cache", progress=False).path
    ckpt = root / "run" / "checkpoint.pt"
    Trainer(open_cache(cache), _cfg()).fit(checkpoint_path=ckpt)
    return panel, cache, ckpt


def test_checkpoint_describes_its_data_and_optimiser(trained):
    _, cache_path, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    cache = open_cache(cache_path)
    data = ckpt["data"]
    assert data["features"] == cache.feature_names and data["horizons"] == [1, 5]
    assert set(data["feature_kinds"]) == set(cache.feature_names)
    assert data["section_vocab"] == ["Growth", "Prime", "Standard"] and len(data["sector_vocab"]) == 4
    assert data["normalisation"]["clip"] == 5.0 and data["dataset_fingerprint"] == cache.fingerprint
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] > 0 and ckpt["epoch"] == 0


def test_training_resumes_from_the_checkpoint(trained):
    _, cache_path, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    trainer = Trainer(open_cache(cache_path), _cfg(max_epochs=2, resume_from=str(ckpt_path)))
    assert trainer.resume(ckpt_path) == 1
    assert trainer.sched.last_epoch == ckpt["scheduler"]["last_epoch"]
    steps = [float(s["step"]) for s in trainer.opt.state_dict()["state"].values()]
    assert steps == [float(s["step"]) for s in ckpt["optimizer"]["state"].values()]
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["model"][name])
    result = Trainer(open_cache(cache_path), _cfg(max_epochs=2, resume_from=str(ckpt_path))).fit()
    assert [r["epoch"] for r in result.history] == [1]  # epoch 0 was done before


def test_other_panel_layout_is_refused_naming_each_difference(trained, tmp_path):
    _, _, ckpt_path = trained
    df = make_panel(days=60, stocks=30, seed=1).rename({"feat_3": "feat_new"})
    df = df.with_columns(pl.col("sector33_code").replace("3650", "9050"))
    other = open_cache(build_cache(write(df, tmp_path / "b.parquet"), tmp_path / "cache", progress=False).path)
    trainer = Trainer(other, _cfg())
    with pytest.raises(CheckpointMismatch) as err:
        restore(ckpt_path, other, trainer.model)
    msg = str(err.value)
    assert "'feat_3'" in msg and "'feat_new'" in msg and "features" in msg
    assert "sector vocabulary" in msg and "'3650'" in msg and "'9050'" in msg
    assert "section vocabulary" not in msg


@pytest.mark.usefixtures("prefect_harness")
def test_dryrun_resume_against_a_different_panel_exits_2_with_the_difference(trained, tmp_path, capsys):
    _, _, ckpt_path = trained
    other = write(make_panel(days=60, stocks=30, seed=2, features=5), tmp_path / "other.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG_YAML)
    code = main(["dryrun", "--data-path", str(other), "--config", str(cfg), "--resume", str(ckpt_path),
                 "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert code == 2 and not has_traceback(out.out, out.err)
    assert out.err.count("error:") == 1 and "different panel layout" in out.err and "'feat_4'" in out.err
    assert "Train from scratch" in out.err
