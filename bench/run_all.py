"""Run every benchmark and print one table of ratios against baselines measured in the same run.

    python -m bench.run_all            # full sizes (`make bench`)
    python -m bench.run_all --quick    # CI sizes, well under a minute of benchmark work
    python -m bench.run_all --only compile,dryrun --merge   # re-run some rows into the last results

Writes `results.json` (rows, machine, date) and `results.md` (the table for the README) into
`--out-dir` (default: this folder). Exit status 1 when a benchmark raised (an ERROR row); FAIL
verdicts are reported, not turned into an exit status: the numbers are the product here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from bench.common import Row, fmt_num, fmt_ratio, machine_info

HERE = Path(__file__).resolve().parent

# module -> the row keys it produces, in table order
SUITES: dict[str, tuple[str, ...]] = {
    "data": ("day_index", "day_index_unique", "cache_open", "cache_build", "gather"),
    "build_memory": ("build_rss", "build_vs_scan"),
    "metrics_ic": ("ic",),
    "training": ("delivery", "delivery_prefetch", "validation", "memory"),
    "dryrun_e2e": ("dryrun",),
    "compile_step": ("compile",),
    "bench_hpo": ("hpo_storage",),
}
ALIASES = {"metrics": "metrics_ic", "ic": "metrics_ic", "dryrun": "dryrun_e2e", "compile": "compile_step",
           "hpo": "bench_hpo"}
EXPECTED_KEYS: tuple[str, ...] = tuple(k for keys in SUITES.values() for k in keys)


def run_suites(quick: bool, only: list[str] | None = None, echo: bool = True) -> list[Row]:
    import torch

    threads = torch.get_num_threads()
    rows: list[Row] = []
    for mod in (only or list(SUITES)):
        torch.set_num_threads(threads)  # a Trainer sets the process-wide count (cpu_threads): reset per suite
        t0 = time.perf_counter()
        if echo:
            print(f"[bench] {mod} ...", file=sys.stderr, flush=True)
        try:
            got = importlib.import_module(f"bench.{mod}").run(quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            tb = traceback.format_exc(limit=4)
            got = [Row(key, f"{mod}: {key}", float("nan"), "", None, "", float("nan"), "", "", "ERROR",
                       note=f"{type(exc).__name__}: {exc}. {tb[-800:]}") for key in SUITES[mod]]
        if echo:
            print(f"[bench] {mod}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        rows += got
    return rows


def _cells(r: Row) -> list[str]:
    measured = r.measured_text or fmt_num(r.measured, r.unit)
    baseline = fmt_num(r.baseline, r.baseline_unit) if r.baseline is not None else "n/a"
    return [r.name, measured, baseline, fmt_ratio(r.ratio), r.target, r.verdict]


HEADER = ["name", "measured", "baseline", "ratio", "target", "verdict"]


def format_table(rows: list[Row]) -> str:
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for n, c in enumerate(cells):
        lines.append(" | ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f"  [{i}] {r.name}: ratio = {r.ratio_meaning}. {r.note}" for i, r in enumerate(rows, 1)]
    return "\n".join(lines) + "\n\nnotes:\n" + "\n".join(notes)


def _where(machine: dict[str, Any]) -> str:
    return (f"{machine['date'][:10]} on {machine['cpu']} ({machine['cores']} cores, shared; load average at start "
            f"{', '.join(str(x) for x in machine.get('loadavg_at_start', []))}), torch {machine['torch']}")


def format_markdown(rows: list[Row], machine: dict[str, Any], quick: bool,
                    reruns: list[dict[str, Any]] | None = None) -> str:
    """The table with its footnotes. ``machine``: where the whole suite ran; ``reruns``: later ``--merge``
    runs ({"machine", "keys", "only"}), each said under the header with the rows it replaced."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    out = [f"Measured {_where(machine)}, {'quick (CI) sizes' if quick else 'full sizes'}: `python -m bench.run_all"
           f"{' --quick' if quick else ''}`."]
    number = {r.key: i for i, r in enumerate(rows, 1)}
    for rerun in reruns or []:
        nums = sorted(number[k] for k in rerun["keys"] if k in number)
        out.append(f"Rows {', '.join(f'[{n}]' for n in nums)} measured again {_where(rerun['machine'])}: "
                   f"`python -m bench.run_all --only {','.join(rerun['only'])} --merge`.")
    out += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for i, r in enumerate(rows, 1):
        c = _cells(r)
        c[0] = f"{c[0]} [{i}]"
        out.append("| " + " | ".join(esc(x) for x in c) + " |")
    out += [""] + [f"{i}. ratio = {esc(r.ratio_meaning)}. {esc(r.note)}" for i, r in enumerate(rows, 1)]
    return "\n".join(out) + "\n"


def _merge(previous: Path, rows: list[Row]) -> list[Row]:
    """Rows of this run replace the same keys in `previous`; the others are kept (table order)."""
    if not previous.exists():
        return rows
    old = {d["key"]: d for d in json.loads(previous.read_text()).get("rows", [])}
    new = {r.key: r for r in rows}
    merged = []
    for key in EXPECTED_KEYS:
        if key in new:
            merged.append(new[key])
        elif key in old:
            d = {k: v for k, v in old[key].items() if k in Row.__dataclass_fields__}
            for k in ("measured", "ratio"):
                d[k] = float("nan") if d.get(k) is None else d[k]
            merged.append(Row(**d))
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI sizes (whole suite well under a minute of work)")
    p.add_argument("--only", default="", help=f"comma-separated suites: {', '.join(SUITES)} (or aliases "
                                              f"{', '.join(ALIASES)})")
    p.add_argument("--merge", action="store_true", help="replace only this run's rows in the existing results.json")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results.json / results.md go")
    p.add_argument("--dryrun-limit", type=float, default=None, help="seconds before the dry run is stopped (360)")
    p.add_argument("--compile-limit", type=float, default=None, help="seconds for the torch.compile child (600)")
    p.add_argument("--compile-in-quick", action="store_true", help="measure torch.compile in quick mode too")
    a = p.parse_args(argv)

    only = [ALIASES.get(s.strip(), s.strip()) for s in a.only.split(",") if s.strip()] or None
    unknown = [s for s in only or [] if s not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {unknown}; known: {list(SUITES)}")
    from bench import compile_step, dryrun_e2e
    if a.dryrun_limit:
        dryrun_e2e.LIMIT_S = a.dryrun_limit
    if a.compile_limit:
        compile_step.LIMIT_S = a.compile_limit
    compile_step.RUN_IN_QUICK = a.compile_in_quick

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    machine = here = machine_info()
    t0 = time.perf_counter()
    rows = run_suites(a.quick, only)
    elapsed = time.perf_counter() - t0
    a.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = a.out_dir / "results.json"
    reruns: list[dict[str, Any]] = []
    if a.merge and json_path.exists():
        # the header keeps where the whole suite ran and says which rows this run replaced, and where
        previous = json.loads(json_path.read_text())
        reruns = previous.get("reruns", []) + [{"machine": machine, "keys": [r.key for r in rows],
                                                "only": only or list(SUITES)}]
        machine = previous.get("machine", machine)
        rows = _merge(json_path, rows)
    print()
    print(format_table(rows))
    print(f"\n{here['date']}  {here['cpu']}, {here['cores']} cores, torch {here['torch']}, "
          f"load avg at start {here['loadavg_at_start']}; suite took {elapsed:.0f} s")
    json_path.write_text(json.dumps({"machine": machine, "quick": a.quick, "elapsed_s": round(elapsed, 1),
                                     "only": only, "merged": a.merge, "reruns": reruns,
                                     "rows": [r.to_dict() for r in rows]}, indent=1))
    (a.out_dir / "results.md").write_text(format_markdown(rows, machine, a.quick, reruns))
    print(f"wrote {json_path} and {a.out_dir / 'results.md'}")
    return 1 if any(r.verdict == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
