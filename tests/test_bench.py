"""Smoke test of the benchmark suite at CI sizes: every row present, every ratio finite.

No timing assertions: the machine is shared, so only the shape of the results is checked here; the
numbers themselves are what `make bench` prints.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import run_all
from bench.common import Row, fmt_num
from bench.data import index_rows, loop_day_index, unique_day_index


@pytest.fixture()
def bench_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ATFT_BENCH_DIR", str(tmp_path / "work"))  # fresh datasets, children inherit it
    return tmp_path


@pytest.mark.slow
def test_run_all_quick_has_every_row_with_finite_ratios(bench_env):
    out = bench_env / "out"
    rc = run_all.main(["--quick", "--out-dir", str(out)])
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    errors = [f"{r['key']}: {r['note']}" for r in rows if r["verdict"] == "ERROR"]
    assert not errors, errors
    assert rc == 0
    assert [r["key"] for r in rows] == list(run_all.EXPECTED_KEYS)
    for r in rows:
        if r["verdict"] == "SKIP":  # allowed only with its reason (torch.compile in quick mode)
            assert r["note"], r
            continue
        assert r["ratio"] is not None and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert r["measured"] is not None and math.isfinite(r["measured"]), r
        assert r["verdict"] in ("PASS", "FAIL", "INFO"), r
        assert r["target"] and r["ratio_meaning"] and r["note"], r
    assert {r["key"] for r in rows if r["verdict"] == "SKIP"} <= {"compile"}
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["cpu"] and machine["date"]
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
    assert machine["torch"] in md


@pytest.mark.slow
def test_gpu_script_runs_on_cpu_quick(bench_env):
    from bench import gpu

    out = bench_env / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--work-dir", str(bench_env / "gpu")]) == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == list(gpu.VARIANTS)
    for r in report["results"]:
        assert r["epochs"] == 1 and r["train_days_per_epoch"] > 0
        assert r["samples_per_s"] > 0 and math.isfinite(r["samples_per_s"])
        assert r["gpu_available"] is False and r["gpu_util_mean"] is None  # no GPU: reported, not invented
        assert r["val_rankic"] is None or math.isfinite(r["val_rankic"])
    by = {r["variant"]: r for r in report["results"]}
    # the prefetch thread feeds exactly the batches the resident path slices: same training, same result
    assert by["prefetch"]["val_rankic"] == pytest.approx(by["resident"]["val_rankic"], abs=1e-9)
    assert "resident" in report["table"] and "dataloader" in report["table"]


def test_synthetic_grid_cache_opens_and_trains(tmp_path):
    from atft_core.data.cache.store import open_cache
    from atft_core.data.split import eligible_days
    from atft_core.train.batches import GridTensors
    from bench.synthetic_cache import synthetic_grid_cache

    path = synthetic_grid_cache(30, 80, 6, root=tmp_path)
    assert synthetic_grid_cache(30, 80, 6, root=tmp_path) == path  # reused
    cache = open_cache(path)
    assert cache.shape == (80, 30, 6) and cache.horizons == (1, 5, 10, 20)
    assert np.isnan(cache.y[-1, :, 0]).all() and np.isfinite(cache.y[:-20][cache.valid[:-20]]).all()
    days = eligible_days(cache, 10, 5)
    batch = GridTensors(cache, 10).gather(days[:2])
    assert batch.x.shape[1:] == (10, 6) and int(batch.y_mask.sum()) > 0


def test_day_index_equals_np_unique_and_the_loop():
    from atft_core.data.cache.indexing import day_index

    dates, codes = index_rows(20_000, stocks=300)
    perm = np.random.default_rng(0).permutation(len(dates))
    dates, codes = dates[perm], codes[perm]
    got, ref, loop = day_index(dates, codes), unique_day_index(dates, codes), loop_day_index(dates, codes)
    for a, b in zip(got, ref):
        assert np.array_equal(a, b)
    assert got[0].tolist() == loop[0] and got[1].tolist() == loop[1]
    # codes of different lengths sort as strings ("13010" < "7203" < "9984"); non-ASCII takes the fallback
    for odd in (np.array(["9984", "13010", "7203", "13010", "1"]), np.array(["9984", "13010", "株式"])):
        days = np.arange(len(odd)) * 1000
        assert all(np.array_equal(a, b) for a, b in zip(day_index(days, odd), unique_day_index(days, odd)))


def test_row_and_formatting():
    r = Row("k", "name", 0.0123, "s", 0.5, "s", 40.6, "baseline / measured", "< 1 s", "PASS", note="n")
    assert r.to_dict()["ratio"] == 40.6
    assert Row("k", "n", float("nan"), "s", None, "s", float("nan"), "", "", "SKIP").to_dict()["ratio"] is None
    with pytest.raises(ValueError):
        Row("k", "n", 1.0, "s", 1.0, "s", 1.0, "", "", "MAYBE")
    assert fmt_num(0.0123, "s") == "12.3 ms" and fmt_num(2.5e6, "rows/s") == "2.50e6 rows/s"
    table = run_all.format_table([r])
    assert "name" in table.splitlines()[0] and "40.6x" in table


def test_a_merged_table_says_which_rows_were_measured_again_and_where():
    rows = [Row("a", "first", 1.0, "s", 2.0, "s", 2.0, "baseline / measured", "> 1x", "PASS", note="n"),
            Row("b", "second", 1.0, "s", 3.0, "s", 3.0, "baseline / measured", "> 1x", "PASS", note="n")]
    whole = {"date": "2026-11-25T10:00:00", "cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu",
             "loadavg_at_start": [0.7]}
    again = {**whole, "date": "2026-12-01T12:00:00", "cpu": "Intel Xeon", "loadavg_at_start": [0.2]}
    md = run_all.format_markdown(rows, whole, False, [{"machine": again, "keys": ["b"], "only": ["training"]}])
    first, second = md.splitlines()[:2]
    assert first.startswith("Measured 2026-11-25 on AMD EPYC")
    assert second.startswith("Rows [2] measured again 2026-12-01 on Intel Xeon") and "--only training --merge" in second
    assert run_all.format_markdown(rows, whole, False).splitlines()[1] == ""  # no merge: no such line
