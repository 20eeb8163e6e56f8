"""atft_core.evaluate.gate: every way to pass and fail the dry-run gate."""

from __future__ import annotations

import json

import pytest

from atft_core.config import GateConfig
from atft_core.evaluate.gate import GateResult, evaluate_gate

GPU_OK = {"available": True, "reason": "", "util_mean": 0.75, "n_samples": 40, "device": "H100"}
NO_GPU = {"available": False, "reason": "NVML unavailable: NVML Shared Library Not Found", "util_mean": None}
GOOD = {"val_rankic": 0.02, "n_days": 120}
RUN_OK = {"completed": True, "loss_finite": True, "train_days": 250, "leak_suspects": []}
PEEK = {"feature": "peek", "horizon": 1, "rankic": 0.97, "threshold": 0.2}


def _by_name(res: GateResult) -> dict:
    return {c.name: c for c in res.criteria}


def test_passes_when_everything_is_fine():
    res = evaluate_gate(GOOD, GPU_OK, GateConfig(require_gpu=True), **RUN_OK)
    assert res.passed
    assert all(c.passed is True for c in res.criteria)
    assert [c.name for c in res.criteria] == ["gpu_util_mean", "val_rankic", "plausible_rankic", "no_lookahead",
                                              "loss_finite", "completed", "train_days"]


@pytest.mark.parametrize(
    ("metrics", "gpu", "run", "failing"),
    [
        (GOOD, {**GPU_OK, "util_mean": 0.25}, RUN_OK, "gpu_util_mean"),
        (GOOD, {**GPU_OK, "util_mean": 0.40}, RUN_OK, "gpu_util_mean"),  # strictly greater
        (GOOD, {**GPU_OK, "util_mean": None, "n_samples": 0}, RUN_OK, "gpu_util_mean"),
        ({"val_rankic": -0.02}, GPU_OK, RUN_OK, "val_rankic"),
        ({"val_rankic": -0.01}, GPU_OK, RUN_OK, "val_rankic"),
        ({"val_rankic": float("nan")}, GPU_OK, RUN_OK, "val_rankic"),
        ({"val_rankic": None}, GPU_OK, RUN_OK, "val_rankic"),
        ({"ic": 0.1}, GPU_OK, RUN_OK, "val_rankic"),  # missing
        (GOOD, GPU_OK, {**RUN_OK, "loss_finite": False}, "loss_finite"),
        (GOOD, GPU_OK, {**RUN_OK, "completed": False}, "completed"),
        (GOOD, GPU_OK, {**RUN_OK, "train_days": 0}, "train_days"),
        ({"val_rankic": 0.45}, GPU_OK, RUN_OK, "plausible_rankic"),
        ({"val_rankic": 0.30}, GPU_OK, RUN_OK, "plausible_rankic"),  # strictly below
        (GOOD, GPU_OK, {**RUN_OK, "leak_suspects": [PEEK]}, "no_lookahead"),
    ],
)
def test_each_way_of_failing(metrics, gpu, run, failing):
    res = evaluate_gate(metrics, gpu, GateConfig(), **run)
    assert not res.passed
    crit = _by_name(res)
    assert crit[failing].passed is False
    assert all(c.passed is not False for n, c in crit.items() if n != failing)


def test_nan_rankic_fails_and_serialises():
    res = evaluate_gate({"rankic": float("nan"), "n_days": 0}, GPU_OK, GateConfig(min_rankic=-1.0), **RUN_OK)
    crit = _by_name(res)["val_rankic"]
    assert crit.passed is False and crit.value is None and "undefined" in crit.note
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["passed"] is False
    assert GateResult.from_dict(d) == res


def test_summary_metrics_dict_is_accepted():
    # a SignalMetrics.to_dict() (key "rankic") works as the metrics argument
    res = evaluate_gate({"rankic": 0.03, "ic": 0.02, "n_days": 80}, GPU_OK, GateConfig(), **RUN_OK)
    assert res.passed and _by_name(res)["val_rankic"].value == pytest.approx(0.03)


def test_no_gpu_is_not_applicable_on_a_local_run():
    res = evaluate_gate(GOOD, NO_GPU, GateConfig(require_gpu=False), **RUN_OK)
    gpu = _by_name(res)["gpu_util_mean"]
    assert res.passed
    assert gpu.passed is None and gpu.note.startswith("not applicable: NVML unavailable")


def test_no_gpu_fails_when_required():
    res = evaluate_gate(GOOD, NO_GPU, GateConfig(require_gpu=True), **RUN_OK)
    gpu = _by_name(res)["gpu_util_mean"]
    assert not res.passed
    assert gpu.passed is False and "GPU required" in gpu.note and "Shared Library" in gpu.note


def test_thresholds_are_parameters():
    cfg = GateConfig(min_gpu_util=0.8, min_rankic=0.05)
    crit = _by_name(evaluate_gate(GOOD, GPU_OK, cfg, **RUN_OK))
    assert crit["gpu_util_mean"].passed is False and crit["gpu_util_mean"].threshold == 0.8
    assert crit["val_rankic"].passed is False and crit["val_rankic"].threshold == 0.05


def test_markdown_lists_every_criterion():
    res = evaluate_gate({"val_rankic": float("nan")}, NO_GPU, GateConfig(), completed=True, loss_finite=False,
                        train_days=0)
    md = res.to_markdown()
    assert "FAILED" in md
    for c in res.criteria:
        assert f"| {c.name} |" in md
    assert "n.a." in md and "**FAIL**" in md and "> 0.4000" in md and "> -0.0100" in md
    assert md.count("\n| ") == 1 + len(res.criteria)  # header + one row each


def test_lookahead_suspect_fails_naming_the_column_unless_allow_listed_with_a_reason():
    res = evaluate_gate(GOOD, GPU_OK, GateConfig(), **{**RUN_OK, "leak_suspects": [PEEK]})
    crit = _by_name(res)["no_lookahead"]
    assert not res.passed and crit.value == 1 and "'peek'" in crit.note and "lookahead_allow" in crit.note
    allowed = GateConfig(lookahead_allow={"peek": "vendor's overnight estimate, published before the open"})
    res = evaluate_gate(GOOD, GPU_OK, allowed, **{**RUN_OK, "leak_suspects": [PEEK]})
    crit = _by_name(res)["no_lookahead"]
    assert res.passed and crit.value == 0 and "published before the open" in crit.note
    with pytest.raises(ValueError, match="needs a reason"):
        GateConfig(lookahead_allow={"peek": " "})


def test_implausibly_high_rankic_fails_with_the_look_ahead_hint():
    res = evaluate_gate({"val_rankic": 0.6, "n_days": 50}, GPU_OK, GateConfig(), **RUN_OK)
    crit = _by_name(res)["plausible_rankic"]
    assert not res.passed and crit.passed is False and "implausibly high: check for look-ahead" in crit.note
    assert "< 0.3000" in res.to_markdown()
    assert _by_name(evaluate_gate(GOOD, GPU_OK, GateConfig(max_rankic=0.01), **RUN_OK))["plausible_rankic"].passed \
        is False


def test_unscreened_cache_makes_no_lookahead_not_applicable():
    res = evaluate_gate(GOOD, GPU_OK, GateConfig(), completed=True, loss_finite=True, train_days=5)
    assert _by_name(res)["no_lookahead"].passed is None and res.passed


def test_gpu_is_required_whenever_the_trainer_ran_on_cuda():
    on_cuda = {**NO_GPU, "reason": "cannot measure: device 0 is a MIG slice", "trainer_device": "cuda:0"}
    res = evaluate_gate(GOOD, on_cuda, GateConfig(require_gpu=False), **RUN_OK)
    gpu = _by_name(res)["gpu_util_mean"]
    assert not res.passed and gpu.passed is False
    assert "the trainer ran on cuda:0" in gpu.note and "cannot measure" in gpu.note
    measured = {**GPU_OK, "trainer_device": "cuda:1", "scope_note": "device-wide utilisation (...)"}
    gpu = _by_name(evaluate_gate(GOOD, measured, GateConfig(), **RUN_OK))["gpu_util_mean"]
    assert gpu.passed is True and "device-wide" in gpu.note
    on_cpu = {**NO_GPU, "reason": "the trainer ran on cpu: no GPU to measure", "trainer_device": "cpu"}
    gpu = _by_name(evaluate_gate(GOOD, on_cpu, GateConfig(), **RUN_OK))["gpu_util_mean"]
    assert gpu.passed is None and "not applicable" in gpu.note
