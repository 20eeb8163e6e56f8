"""Dry-run gate: the rules that decide whether the nightly HPO study may run.

Criteria (thresholds from `GateConfig`):

- ``gpu_util_mean > min_gpu_util``: NVML utilisation sampled while training steps ran, on the
  trainer's own device (this process's share where NVML offers it; the note says when it is
  device-wide). Required whenever the trainer ran on CUDA (``gpu["trainer_device"]``) or
  ``require_gpu`` is set (the GPU pool): then a GPU that cannot be measured (no NVML, a MIG slice,
  a failed read) fails. *Not applicable* otherwise (a CPU run), with the monitor's reason in the note;
- ``val_rankic > min_rankic``: mean daily validation RankIC. An undefined (NaN / missing) RankIC
  fails: NaN compares False with everything and must never slip through as a pass;
- ``no_lookahead``: no input feature is a look-ahead suspect of the cache's leak screen
  (`atft_core.data.cache.leak`), unless ``lookahead_allow`` names it with a reason;
- ``plausible_rankic``: ``val_rankic < max_rankic`` (0.30): above it a daily equity model almost
  surely sees the future, so the run fails as "implausibly high: check for look-ahead";
- ``loss_finite``, ``completed`` (no crash), ``train_days > 0`` (a run that trained on nothing
  proves nothing).

The gate passes only if every applicable criterion passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from atft_core.config import GateConfig


@dataclass
class Criterion:
    """One gate rule. ``passed`` None = not applicable (shown, but not counted)."""

    name: str
    value: float | bool | None  # bool for yes/no rules; an int count is a float in typing
    threshold: float | None
    passed: bool | None
    note: str = ""
    op: str = ">"  # how value compares with threshold to pass: ">" or "<"


@dataclass
class GateResult:
    passed: bool
    criteria: list[Criterion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN / inf become None; the note says what the value was)."""
        crits = []
        for c in self.criteria:
            d = asdict(c)
            for k in ("value", "threshold"):
                if isinstance(d[k], float) and not math.isfinite(d[k]):
                    d[k] = None
            crits.append(d)
        return {"passed": self.passed, "criteria": crits}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GateResult:
        return cls(passed=bool(raw["passed"]), criteria=[Criterion(**c) for c in raw["criteria"]])

    def to_markdown(self) -> str:
        """A table: criterion, value, threshold, result (pass / FAIL / n.a.), note."""
        lines = [
            f"## Dry-run gate: {'PASSED' if self.passed else 'FAILED'}",
            "",
            "| criterion | value | threshold | result | note |",
            "|---|---|---|---|---|",
        ]
        for c in self.criteria:
            result = {True: "pass", False: "**FAIL**", None: "n.a."}[c.passed]
            threshold = "" if c.threshold is None else f"{c.op} {_fmt(c.threshold)}"
            note = c.note.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c.name} | {_fmt(c.value)} | {threshold} | {result} | {note} |")
        return "\n".join(lines) + "\n"


def _fmt(v: float | bool | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)  # nan / inf shown as such
    return f"{v:.4f}"


def _finite(x: Any) -> float | None:
    """x as a finite float, or None (missing, NaN, inf, not a number)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _gpu_criterion(gpu: dict[str, Any], cfg: GateConfig) -> Criterion:
    name = "gpu_util_mean"
    on_cuda = str(gpu.get("trainer_device") or "").startswith("cuda")
    required = cfg.require_gpu or on_cuda
    why = f"the trainer ran on {gpu['trainer_device']}" if on_cuda else "require_gpu is set (GPU pool)"
    if not gpu.get("available", False):
        reason = gpu.get("reason") or "no GPU monitor result"
        if required:
            return Criterion(name, None, cfg.min_gpu_util, False, f"GPU required ({why}) but {reason}")
        return Criterion(name, None, cfg.min_gpu_util, None, f"not applicable: {reason}")
    util = _finite(gpu.get("util_mean"))
    if util is None:
        reason = gpu.get("reason") or "no utilisation samples"
        return Criterion(name, None, cfg.min_gpu_util, False, f"cannot measure: GPU present but {reason}")
    note = f"{gpu.get('n_samples', '?')} NVML samples while training steps ran"
    if gpu.get("device"):
        note += f" on {gpu['device']}"
    if gpu.get("scope_note"):
        note += f"; {gpu['scope_note']}"
    return Criterion(name, util, cfg.min_gpu_util, util > cfg.min_gpu_util, note)


def _rankic_criterion(metrics: dict[str, Any], cfg: GateConfig) -> Criterion:
    name = "val_rankic"
    key = "val_rankic" if "val_rankic" in metrics else "rankic"
    if key not in metrics:
        return Criterion(name, None, cfg.min_rankic, False,
                         f"missing: metrics have no 'val_rankic' ({sorted(metrics)})")
    raw = metrics[key]
    value = _finite(raw)
    if value is None:
        return Criterion(name, None, cfg.min_rankic, False,
                         f"undefined ({raw!r}): no validation day with a defined RankIC")
    note = f"mean over {metrics['n_days']} validation days" if "n_days" in metrics else ""
    return Criterion(name, value, cfg.min_rankic, value > cfg.min_rankic, note)


def _lookahead_criterion(suspects: list[dict[str, Any]] | None, cfg: GateConfig) -> Criterion:
    name = "no_lookahead"
    if suspects is None:
        return Criterion(name, None, None, None, "not applicable: no leak screen result for this cache")
    names = sorted({s["feature"] for s in suspects})
    allowed = [n for n in names if n in cfg.lookahead_allow]
    bad = [n for n in names if n not in cfg.lookahead_allow]
    worst = {n: max((s for s in suspects if s["feature"] == n), key=lambda s: abs(s["rankic"])) for n in bad}
    notes = ["look-ahead suspect(s) among the inputs: " + ", ".join(
        f"'{n}' (RankIC {worst[n]['rankic']:+.3f} with the {worst[n]['horizon']}d target)" for n in bad)
        + "; drop the column(s) upstream or allow-list them in gate.lookahead_allow with a reason"] if bad else []
    notes += [f"allowed by config: '{n}' ({cfg.lookahead_allow[n]})" for n in allowed]
    return Criterion(name, len(bad), None, not bad, "; ".join(notes) or "no feature beyond the leak screen's threshold")


def _plausible_criterion(metrics: dict[str, Any], cfg: GateConfig) -> Criterion:
    name = "plausible_rankic"
    value = _finite(metrics.get("val_rankic", metrics.get("rankic")))
    if value is None:
        return Criterion(name, None, cfg.max_rankic, None, "not applicable: no defined validation RankIC", op="<")
    ok = value < cfg.max_rankic
    note = "" if ok else "implausibly high: check for look-ahead (a feature or the split that sees the future)"
    return Criterion(name, value, cfg.max_rankic, ok, note, op="<")


def evaluate_gate(
    metrics: dict[str, Any],
    gpu: dict[str, Any],
    cfg: GateConfig,
    *,
    completed: bool,
    loss_finite: bool,
    train_days: int,
    leak_suspects: list[dict[str, Any]] | None = None,
) -> GateResult:
    """Apply the gate rules.

    Args:
        metrics: validation metrics with ``val_rankic`` (or ``rankic``, e.g. a
            ``SignalMetrics.to_dict()``); optional ``n_days`` for the note.
        gpu: ``GpuMonitor.summary()``.
        cfg: thresholds and whether a GPU is required.
        completed: the run finished without crashing.
        loss_finite: every training loss was finite.
        train_days: trading days the run trained on.
        leak_suspects: the cache manifest's ``leak_suspects`` (None: not screened, criterion n.a.).
    """
    criteria = [
        _gpu_criterion(gpu, cfg),
        _rankic_criterion(metrics, cfg),
        _plausible_criterion(metrics, cfg),
        _lookahead_criterion(leak_suspects, cfg),
        Criterion("loss_finite", bool(loss_finite), None, bool(loss_finite),
                  "" if loss_finite else "a training loss was NaN or inf"),
        Criterion("completed", bool(completed), None, bool(completed),
                  "" if completed else "the run did not finish"),
        Criterion("train_days", int(train_days), 0, train_days > 0,
                  "" if train_days > 0 else "no training day: nothing was learned"),
    ]
    passed = all(c.passed for c in criteria if c.passed is not None)
    return GateResult(passed=passed, criteria=criteria)
