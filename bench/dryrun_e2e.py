"""The dry run on the demo data, end to end, in a child process with a time limit.

What is timed is what `atft dryrun` does after the demo parquet exists (generated once, reused;
its generation time is reported in the note): build the cache from the parquet (a miss, into a
fresh folder) and `run_dryrun` on it with the default `AtftConfig` (2 epochs over every
training day, validation, checkpoint, predictions, gate). The Prefect flow wrapper is not
included (it adds the flow-run start-up, see the flow tests).

Child: ``python -m bench.dryrun_e2e --child-out FILE [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import Row, demo_panel, run_child, tiny_config, verdict

LIMIT_S = 360.0  # 2x the 3-minute target: past it the verdict is FAIL whatever the final time
TARGET_S = 180.0


def _child(out: Path, quick: bool) -> None:
    from atft_core.config import AtftConfig
    from atft_core.data.cache.build import build_cache
    from atft_core.dryrun import run_dryrun

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res: dict = {"quick": quick}

    def save():
        out.write_text(json.dumps(res, default=str))

    t0 = time.perf_counter()
    if quick:
        data = demo_panel(stocks=80, days=160, features=16)
        cfg = tiny_config(device="auto", max_epochs=2, max_train_days=3, val_days=6, window=20)
        res["label"] = ("quick: demo 80 stocks x 160 days x 16 features, tiny model, 2 epochs of 3 training days, "
                        "6 validation days")
    else:
        data = demo_panel()
        cfg = AtftConfig()
        cfg.train.progress = True  # tqdm lines in the log let the parent estimate the time if it is stopped
        res["label"] = "default demo data (300 stocks x 750 days x 40 features), default AtftConfig (2 epochs)"
    res["demo_s"] = time.perf_counter() - t0  # ~0 when the demo parquet already existed
    tmp = Path(tempfile.mkdtemp(prefix="atft-bench-dryrun-"))
    try:
        t0 = time.perf_counter()
        build = build_cache(data, tmp / "cache", progress=False)
        res["build_s"] = time.perf_counter() - t0
        save()
        t0 = time.perf_counter()
        result = run_dryrun(build.path, cfg, tmp / "run")
        res["dryrun_s"] = time.perf_counter() - t0
        m = result.metrics
        res.update({"passed": result.gate.passed, "epochs": m.get("epochs"), "epoch_seconds": m.get("epoch_seconds"),
                    "train_days_per_epoch": m.get("train_days_per_epoch"), "val_rankic": m.get("val_rankic"),
                    "gpu_available": result.gpu.get("available"), "device": cfg.train.device})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save()


def run(quick: bool) -> list[Row]:
    limit = min(LIMIT_S, 240.0) if quick else LIMIT_S
    child = run_child("bench.dryrun_e2e", ["--quick"] if quick else [], limit)
    r = child.result or {}
    name = "dry run end to end, demo data" + (" (quick)" if quick else "")
    label = r.get("label", "")
    if child.ok and "dryrun_s" in r:
        total = r["build_s"] + r["dryrun_s"]
        rankic = r.get("val_rankic")
        return [Row("dryrun", name, total, "s", TARGET_S, "s", total / TARGET_S, "time / 3-minute budget",
                    "< 180 s on 2 cores", "INFO" if quick else verdict(total < TARGET_S),
                    note=f"{label}: cache build {r['build_s']:.1f} s + run_dryrun {r['dryrun_s']:.1f} s "
                         f"({r['epochs']} epochs of {r['train_days_per_epoch']} training days, "
                         f"{r['epoch_seconds']:.1f} s/epoch incl. validation), gate "
                         f"{'passed' if r['passed'] else 'FAILED'}, val RankIC "
                         f"{'n/a' if rankic is None else f'{rankic:+.4f}'}. Demo generation "
                         f"{r['demo_s']:.1f} s (once, then reused)."
                         + (" Quick mode: small sizes, not judged against the 3-minute target." if quick else ""))]
    if child.timed_out:
        epochs = re.findall(r"epoch (\d+): loss .*?\| ([\d.]+)s", child.log_tail)
        done = (f"epochs finished before the limit: {', '.join(f'#{e} in {s} s' for e, s in epochs)}" if epochs
                else "no epoch finished before the limit")
        steps = re.findall(r"(\d+) days/epoch", child.log_tail)
        done += _estimate(child.log_tail)
        return [Row("dryrun", name, limit, "s", TARGET_S, "s", limit / TARGET_S, "time / 3-minute budget (lower bound)",
                    "< 180 s on 2 cores", "FAIL",
                    measured_text=f"> {limit:.0f} s",
                    note=f"{label}: stopped at the {limit:.0f} s limit (cache build "
                         f"{r.get('build_s', float('nan')):.1f} s); {done}"
                         + (f"; {steps[-1]} training days per epoch" if steps else "")
                         + ". The time goes to the model's train steps: see the 'batch delivery vs train step' "
                           "row for the seconds per step.")]
    return [Row("dryrun", name, float("nan"), "s", TARGET_S, "s", float("nan"), "time / 3-minute budget",
                "< 180 s on 2 cores", "ERROR", note=f"{label}: the dry run failed: {child.log_tail[-600:]}")]


def _seconds(mmss: str) -> int:
    parts = [int(p) for p in mmss.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def _estimate(log: str) -> str:
    """From the last tqdm progress line ('epoch 0:  35%|...| 207/590 [01:30<02:45, ...]'), if any."""
    found = re.findall(r"epoch (\d+):\s+\d+%\|[^|]*\| (\d+)/(\d+) \[([\d:]+)<([\d:]+)", log)
    if not found:
        return ""
    epoch, done, total, elapsed, left = found[-1]
    per_epoch = _seconds(elapsed) + _seconds(left)
    return (f"; epoch {epoch} had done {done}/{total} training steps in {_seconds(elapsed)} s, so one epoch's "
            f"training alone takes ~{per_epoch} s and the 2-epoch dry run at least ~{2 * per_epoch} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child-out", required=True, type=Path)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    _child(a.child_out, a.quick)


if __name__ == "__main__":
    main()
