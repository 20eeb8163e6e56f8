"""What a study run leaves behind: hpo.json, trials.csv, plots, the table rows and markdown for a UI.

trials.csv is `study.trials_dataframe()`; the importance plot is Optuna's
(`optuna.visualization.matplotlib.plot_param_importances`). The history plot stays our own: Optuna's
shows completed trials only, ours also marks pruned trials and failures (a failure is not a poor score).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from atft_core.hpo.config import BATCH_ATTR, FAIL_REASON_ATTR, HpoConfig, StudyBatch
from atft_core.hpo.objective import round6
from atft_core.hpo.storage import build_storage, dashboard_command, display_url
from atft_core.rundir import json_safe, write_json

log = logging.getLogger("atft_core.hpo.report")


@dataclass
class HpoSummary:
    study_name: str
    storage: str  # redacted
    batch: str
    requested: int
    counts: dict[str, int]  # this invocation's trials (queued by it, retries included)
    study_counts: dict[str, int]  # every trial of the study so far
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    importances: dict[str, float]
    overhead: dict[str, float]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    objective: str = "validation RankIC of the best epoch (maximised)"
    dashboard: str = ""  # the command that opens this study in optuna-dashboard

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finish_study(hpo: HpoConfig, batch: StudyBatch, output_dir: str | Path, reports: list[Any], *,
                 seconds: float, errors: list[str] | None = None) -> HpoSummary:
    """Summarise the study (this batch and all of it) and write hpo.json, trials.csv and the plots."""
    output_dir = Path(output_dir)
    study = optuna.load_study(study_name=batch.study_name, storage=build_storage(batch.storage_url, hpo))
    trials = study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.user_attrs.get(BATCH_ATTR) == batch.batch]
    best = _best(trials)
    summary = HpoSummary(
        study_name=batch.study_name, storage=display_url(batch.storage_url), batch=batch.batch,
        requested=batch.n_trials, counts=_counts(mine), study_counts=_counts(trials),
        best_value=best.value if best else None, best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None, importances=_importances(study),
        overhead=_overhead(reports), seconds=round(seconds, 3), errors=list(errors or []),
        dashboard=dashboard_command(batch.storage_url))
    summary.files = {k: str(v) for k, v in write_reports(study, summary, output_dir).items()}
    write_json(output_dir / "hpo.json", json_safe(summary.to_dict()))
    summary.files["hpo.json"] = str(output_dir / "hpo.json")
    log.info("study %s: best RankIC %s (trial %s); this run %s", batch.study_name, best.value if best else None,
             summary.best_trial, summary.counts)
    return summary


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return max(done, key=lambda t: t.value) if done else None


def _counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {s: 0 for s in ("complete", "pruned", "failed", "running", "waiting")}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in trials:
        out[names[t.state]] += 1
    out["total"] = len(trials)
    return out


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default importances (PED-ANOVA in 5.0) over completed trials; {} until there are enough."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "quantiles select the same trials": few trials
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError) as exc:  # e.g. every completed trial has the same parameters
        log.info("parameter importances not available: %s", exc)
        return {}


def _overhead(reports: list[Any]) -> dict[str, float]:
    rows = [t for r in reports for t in r.trials]
    storage = sum(t["storage_s"] for t in rows)
    train = sum(t["train_s"] for t in rows)
    return {"trials": len(rows), "storage_s": round(storage, 4), "sample_s": round(sum(t["sample_s"] for t in rows), 4),
            "train_s": round(train, 4), "storage_per_train": round(storage / train, 6) if train > 0 else None}


def write_reports(study: optuna.Study, summary: HpoSummary, output_dir: Path) -> dict[str, Path]:
    """trials.csv and the two PNG plots (always written, saying so when there is nothing to draw yet)."""
    from atft_core.evaluate.plots import plot_hpo_history, plot_param_importances  # sets the Agg backend

    files = {"trials.csv": output_dir / "trials.csv"}
    study.trials_dataframe().to_csv(files["trials.csv"], index=False)
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value} for t in study.get_trials(deepcopy=False)]
    files["optimization_history.png"] = plot_hpo_history(rows, plots / "optimization_history.png")
    path = plots / "param_importances.png"
    if summary.importances:
        _save_optuna_importances(study, path)
    else:
        plot_param_importances({}, path, note="needs at least 2 completed trials with different parameters")
    files["param_importances.png"] = path
    return files


def _save_optuna_importances(study: optuna.Study, path: Path) -> None:
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning; "quantiles select the same trials" on few trials
        ax = optuna.visualization.matplotlib.plot_param_importances(study)
    fig = ax.figure
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain row per trial (for tables in an orchestrator's UI): number, state, value, params, reason."""
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # The trial each one retries: the last of its retry history (the first is the original).
        retry_of = {t.number: (optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t) or [None])[-1]
                    for t in trials}
    retried = {orig: number for number, orig in retry_of.items() if orig is not None}
    rows = []
    for t in trials:
        reason = t.user_attrs.get(FAIL_REASON_ATTR, "")
        if t.state == TrialState.FAIL and t.number in retried:
            # A SQL storage's stale trial is failed by another worker, which writes no reason on it;
            # a journal file's gets "its worker stopped (process ... is gone)" (hpo.liveness).
            reason = f"{reason or 'its worker stopped (no heartbeat)'}; retried as trial {retried[t.number]}"
        rows.append({"number": t.number, "state": t.state.name, "value": round6(t.value),
                     "epochs": len(t.intermediate_values), **{k: round6(v) for k, v in t.params.items()},
                     "fail_reason": reason, "retry_of": "" if retry_of[t.number] is None else retry_of[t.number]})
    return rows


def summary_markdown(summary: dict[str, Any]) -> str:
    """The study in a few lines of markdown (the `hpo-summary` artifact)."""
    best = summary.get("best_value")
    lines = [f"## HPO study `{summary['study_name']}`", "",
             f"Best validation RankIC: **{best:+.4f}** (trial {summary.get('best_trial')})" if best is not None
             else "No completed trial yet.", "",
             "| | complete | pruned | failed | running | waiting | total |", "|---|---:|---:|---:|---:|---:|---:|"]
    columns = ("complete", "pruned", "failed", "running", "waiting", "total")
    for label, counts in (("this run", summary["counts"]), ("whole study", summary["study_counts"])):
        lines.append(f"| {label} | " + " | ".join(str(counts.get(k, 0)) for k in columns) + " |")
    if summary.get("best_params"):
        lines += ["", "| parameter | best value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                  for k, v in summary["best_params"].items()]
    lines += ["", f"Storage: `{summary['storage']}`. Watch it live: `{summary['dashboard']}`"]
    if summary.get("errors"):
        lines += ["", "**Worker errors:**"] + [f"- {e}" for e in summary["errors"]]
    return "\n".join(lines) + "\n"
