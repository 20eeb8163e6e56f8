"""Look-ahead fails the dry-run gate through the CLI: a target copy among the inputs fails `no_lookahead`
(naming the column); a model that sees the future fails `plausible_rankic` even when the column is
allow-listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.cli import main
from tests.cli_output import has_traceback


@pytest.fixture(scope="module")
def leaky_panel(tiny_demo, tmp_path_factory) -> Path:
    """The tiny demo with `peek`: tomorrow's return plus a little noise, under an innocent name."""
    df = pl.read_parquet(tiny_demo)
    noise = 0.002 * np.random.default_rng(0).standard_normal(df.height)
    df = df.with_columns((pl.col("target_1d") + pl.Series(noise)).cast(pl.Float32).alias("peek"))
    path = tmp_path_factory.mktemp("leaky") / "leaky.parquet"
    df.write_parquet(path)
    return path


def _dryrun(tmp_path: Path, data: Path, config: Path, capsys, epochs: int = 1) -> tuple[int, str, dict]:
    runs = tmp_path / "runs"
    code = main(["dryrun", "--data-path", str(data), "--config", str(config), "--cache-dir", str(tmp_path / "cache"),
                 "--output-dir", str(runs), "--max-epochs", str(epochs), "--device", "cpu"])
    out = capsys.readouterr()
    assert not has_traceback(out.out, out.err)
    gate = json.loads(next(runs.glob("*/gate.json")).read_text())
    return code, out.out, {c["name"]: c for c in gate["criteria"]}


@pytest.mark.usefixtures("prefect_harness")
def test_target_copy_fails_no_lookahead_naming_it(tmp_path, leaky_panel, tiny_config, capsys):
    code, out, crit = _dryrun(tmp_path, leaky_panel, tiny_config, capsys)
    assert code == 1
    assert crit["no_lookahead"]["passed"] is False and "'peek'" in crit["no_lookahead"]["note"]
    assert "FAIL no_lookahead" in out and "'peek'" in out and "gate: FAILED" in out
    manifest = json.loads(next((tmp_path / "cache").glob("*/manifest.json")).read_text())
    assert {s["feature"] for s in manifest["leak_suspects"]} == {"peek"}  # and no real signal
    assert manifest["leak_screen"]["floor"] == 0.2


@pytest.mark.usefixtures("prefect_harness")
def test_model_that_sees_the_future_fails_plausible_rankic(tmp_path, leaky_panel, tiny_config, capsys):
    cfg = tmp_path / "allow.yaml"
    cfg.write_text(Path(tiny_config).read_text() + "gate: {lookahead_allow: {peek: 'test: allowed on purpose'}}\n")
    code, out, crit = _dryrun(tmp_path, leaky_panel, cfg, capsys, epochs=3)
    assert code == 1
    assert crit["no_lookahead"]["passed"] is True and "allowed on purpose" in crit["no_lookahead"]["note"]
    assert crit["plausible_rankic"]["passed"] is False and crit["plausible_rankic"]["value"] > 0.30
    assert "FAIL plausible_rankic" in out and "implausibly high: check for look-ahead" in out
