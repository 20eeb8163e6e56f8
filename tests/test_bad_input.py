"""Bad input a nightly run meets: one clear message (file, column, what to do), exit 2, nothing lost.

Every case runs through the real CLI. Before each, a valid cache and an earlier run folder exist;
afterwards they are byte-for-byte unchanged and the cache dir holds nothing new.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atft_core.data.cache.build import build_cache
from flows.cli import main
from tests.panels import make_panel, write


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _truncated(tmp: Path) -> Path:
    good = write(make_panel(), tmp / "good.parquet").read_bytes()
    path = tmp / "truncated.parquet"
    path.write_bytes(good[: len(good) // 2])
    return path


def _mixed_dates(tmp: Path) -> Path:
    df = make_panel().with_columns(pl.col("Date").cast(pl.String))
    df = df.with_columns(pl.when(pl.int_range(pl.len()) % 7 == 0)
                         .then(pl.col("Date").str.replace(r"^(\d{4})-(\d{2})-(\d{2})$", "$3/$2/$1"))
                         .otherwise(pl.col("Date")).alias("Date"))
    return write(df, tmp / "mixed_dates.parquet")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case id, builder(tmp) -> data path, words that must be in the message, column it must name)
CASES = [
    ("missing file", lambda t: t / "no_such.parquet", ["does not exist", "--data-path"], ""),
    ("not parquet", lambda t: _text_file(t), ["not a readable parquet", "re-export"], ""),
    ("truncated parquet", _truncated, ["not a readable parquet"], ""),
    ("zero rows", lambda t: write(make_panel().head(0), t / "empty.parquet"), ["zero rows"], ""),
    ("missing Date", lambda t: write(make_panel().drop("Date"), t / "p.parquet"), ["missing"], "Date"),
    ("missing Code", lambda t: write(make_panel().drop("Code"), t / "p.parquet"), ["missing"], "Code"),
    ("duplicate keys", lambda t: write(pl.concat([make_panel(), make_panel().head(2)]), t / "p.parquet"),
     ["duplicate", "once per day"], "Date, Code"),
    ("non-numeric feature", lambda t: write(make_panel().with_columns(pl.lit("A").alias("rating")), t / "p.parquet"),
     ["non-numeric", "encode it"], "rating"),
    ("no target", lambda t: write(make_panel().drop("target_1d", "target_5d"), t / "p.parquet"),
     ["no target column", "target_1d"], "target_*"),
    ("all-NaN target", lambda t: write(make_panel().with_columns(pl.lit(float("nan")).alias("target_5d")),
                                       t / "p.parquet"), ["entirely missing"], "target_5d"),
    ("single stock", lambda t: write(make_panel().filter(pl.col("Code") == "13000"), t / "p.parquet"),
     ["only 1 stock", "cross-section"], "Code"),
    ("dates as mixed-format strings", _mixed_dates, ["not ISO dates", "mixed date formats"], "Date"),
    ("directory without parquet", lambda t: _empty_dir(t), ["no *.parquet"], ""),
    ("directory with mixed schemas", lambda t: _mixed_schema_dir(t), ["schema differs"], ""),
    ("s3 endpoint not answering", lambda t: "s3://nightly/panel.parquet",
     ["cannot read from S3 endpoint", "AWS_ENDPOINT_URL"], ""),
]


def _text_file(t: Path) -> Path:
    p = t / "panel.parquet"
    p.write_text("Date,Code,feat\n2024-01-04,13010,1.0\n")
    return p


def _empty_dir(t: Path) -> Path:
    (t / "panel").mkdir()
    (t / "panel" / "README.txt").write_text("nothing here")
    return t / "panel"


def _mixed_schema_dir(t: Path) -> Path:
    df = make_panel()
    write(df, t / "panel" / "a.parquet")
    write(df.rename({"feat_0": "feat_zero"}), t / "panel" / "b.parquet")
    return t / "panel"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """An existing cache and an earlier run folder that bad input must leave untouched."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # one retry is enough to show the answer; 10 would take seconds
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEBADINPUT0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-bad-input")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cache_dir = tmp_path / "cache"
    build_cache(write(make_panel(seed=9), tmp_path / "good" / "p.parquet"), cache_dir, progress=False)
    runs = tmp_path / "runs" / "20260101T000000Z-dryrun-earlier"
    runs.mkdir(parents=True)
    (runs / "gate.json").write_text('{"passed": true}')
    return tmp_path, cache_dir, _snapshot(cache_dir), _snapshot(tmp_path / "runs")


@pytest.mark.parametrize("name, builder, words, column", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_clear_error_exit_2_nothing_lost(world, capsys, name, builder, words, column):
    tmp, cache_dir, cache_before, runs_before = world
    (tmp / "in").mkdir()
    data = builder(tmp / "in")
    assert main(["build-cache", "--data-path", str(data), "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid dataset") and err.count("error:") == 1
    assert str(data) in err  # names the file
    for w in words:
        assert w in err, f"{name}: {w!r} not in {err!r}"
    if column:
        assert column in err
    assert "fake-secret" not in err and "AKIAFAKE" not in err
    assert _snapshot(cache_dir) == cache_before  # nothing created, the existing cache untouched
    assert _snapshot(tmp / "runs") == runs_before


def test_infinite_feature_values_become_missing_with_a_named_warning(tmp_path, capsys):
    df = make_panel(days=300).with_columns(pl.when(pl.int_range(pl.len()) < 7).then(float("-inf"))
                                   .otherwise(pl.col("feat_2")).alias("feat_2"))
    assert main(["build-cache", "--data-path", str(write(df, tmp_path / "p.parquet")),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "feature 'feat_2': 7 infinite value(s) turned into missing values" in capsys.readouterr().out


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {max_epoch: 3}\n")
    path = write(make_panel(), tmp_path / "p.parquet")
    assert main(["build-cache", "--data-path", str(path), "--cache-dir", str(tmp_path / "cache"),
                 "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "max_epoch" in err and "max_epochs" in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("train,words", [("{static_shapes: maybe}", "auto, on or off"),
                                         ("{log_every: 0}", "integer >= 1")])
def test_bad_train_setting_is_a_clear_error_before_anything_is_written(tmp_path, capsys, train, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: {train}\n")
    path = write(make_panel(), tmp_path / "p.parquet")
    assert main(["build-cache", "--data-path", str(path), "--cache-dir", str(tmp_path / "cache"),
                 "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_dryrun_on_too_short_history_fails_before_writing_a_cache(world, capsys):
    tmp, cache_dir, cache_before, runs_before = world
    short = write(make_panel(days=40, stocks=30), tmp / "short.parquet")
    code = main(["dryrun", "--data-path", str(short), "--cache-dir", str(cache_dir),
                 "--output-dir", str(tmp / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "only 40 trading days" in err and "window" in err and "--config" in err and str(short) in err
    assert _snapshot(cache_dir) == cache_before
    earlier = {k: v for k, v in _snapshot(tmp / "runs").items() if k in runs_before}
    assert earlier == runs_before  # the earlier run folder is untouched


@pytest.mark.usefixtures("prefect_harness")
def test_dryrun_on_bad_file_exits_2_through_the_flow(world, capsys):
    tmp, cache_dir, cache_before, _ = world
    bad = write(make_panel().drop("Code"), tmp / "nocode.parquet")
    code = main(["dryrun", "--data-path", str(bad), "--cache-dir", str(cache_dir), "--output-dir", str(tmp / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "column 'Code'" in err and str(bad) in err
    assert _snapshot(cache_dir) == cache_before


def test_parquet_with_nullable_dictionary_codes_is_accepted(tmp_path):
    """Upstream exports often write Code as a dictionary-encoded string: still a valid key."""
    df = make_panel()
    table = df.to_arrow()
    idx = table.schema.get_field_index("Code")
    table = table.set_column(idx, "Code", table.column("Code").dictionary_encode())
    path = tmp_path / "dict.parquet"
    pq.write_table(table, path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("Code").type)
    build = build_cache(path, tmp_path / "cache", progress=False)
    assert build.summary["stocks"] == 30
