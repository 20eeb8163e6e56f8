"""Column roles: which column is the date, the stock code, a category, a target, a feature.

A panel's layout is stated in `ColumnsConfig` (or taken from a profile: "atft" or "gogooku3") and
resolved here against the file's schema into concrete names. The one rule no profile can relax:
a column *named like a label* (``LABEL_PATTERNS``) is never a feature unless the config lists it by
its exact name, because forward returns under another name are the commonest look-ahead leak.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass

from atft_core.config import ColumnsConfig
from atft_core.errors import Problem

log = logging.getLogger("atft_core.data.roles")

# Names that mean "a future quantity" in the datasets atft meets (gogooku3, vendor exports).
LABEL_PATTERNS = ("target_*", "feat_ret_*", "ret_fwd_*", "fwd_*", "future_*", "label_*", "y_*")

PROFILES: dict[str, dict[str, object]] = {
    "atft": {"target_pattern": "target_{h}d", "section": ("Section",), "sector": ("sector33_code",),
             "non_numeric": "error"},
    # gogooku3's ml_dataset_latest_full.parquet: labels feat_ret_{1,5,10,20}d, sector as sector33_code
    # (newer exports) or sector33 (older); it also carries text columns (names, codes) that are not inputs.
    "gogooku3": {"target_pattern": "feat_ret_{h}d", "section": ("Section",),
                 "sector": ("sector33_code", "sector33"), "non_numeric": "ignore"},
}


@dataclass(frozen=True)
class Roles:
    """Concrete column names for one schema. ``section`` / ``sector`` are "" when absent."""

    profile: str
    date: str
    code: str
    section: str
    sector: str
    target_pattern: str
    targets: dict[int, str]  # explicit horizon -> column ({} = match target_pattern)
    non_numeric: str


def is_label_like(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in LABEL_PATTERNS)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """``feat_ret_{h}d`` -> ^feat_ret_(\\d+)d$ (the horizon is the captured integer)."""
    if pattern.count("{h}") != 1:
        raise ValueError(f"columns.target_pattern {pattern!r} must contain '{{h}}' exactly once, e.g. 'target_{{h}}d'")
    head, tail = pattern.split("{h}")
    return re.compile(f"^{re.escape(head)}(\\d+){re.escape(tail)}$")


def detect_profile(names: list[str]) -> str:
    """gogooku3 when its labels are there and atft's are not; atft otherwise."""
    atft = pattern_regex("target_{h}d")
    gogo = pattern_regex("feat_ret_{h}d")
    if not any(atft.match(n) for n in names) and any(gogo.match(n) for n in names):
        return "gogooku3"
    return "atft"


def resolve_roles(cfg: ColumnsConfig, names: list[str], source: str) -> Roles:
    """The profile's defaults under the config's explicit names, checked against the schema's names."""
    if cfg.profile not in ("auto", *PROFILES):
        raise ValueError(f"columns.profile {cfg.profile!r} is not known; use one of auto, {', '.join(PROFILES)}")
    if cfg.non_numeric not in ("", "error", "ignore"):
        raise ValueError(f"columns.non_numeric {cfg.non_numeric!r}: use 'error' or 'ignore'")
    profile = detect_profile(names) if cfg.profile == "auto" else cfg.profile
    preset = PROFILES[profile]
    if cfg.profile == "auto" and profile != "atft":
        log.info("%s: detected the %s layout (labels %s); pass --profile atft to read it otherwise",
                 source, profile, preset["target_pattern"])
    elif cfg.profile != "auto":
        log.info("%s: reading columns with the %s profile", source, profile)

    def first_present(explicit: str, candidates: object) -> str:
        if explicit:
            return explicit
        return next((c for c in candidates if c in names), "")  # type: ignore[attr-defined]

    pattern = cfg.target_pattern or str(preset["target_pattern"])
    pattern_regex(pattern)  # a bad pattern is a config error before anything is read
    return Roles(profile=profile, date=cfg.date, code=cfg.code,
                 section=first_present(cfg.section, preset["section"]),
                 sector=first_present(cfg.sector, preset["sector"]),
                 target_pattern=pattern, targets={int(h): c for h, c in cfg.targets.items()},
                 non_numeric=cfg.non_numeric or str(preset["non_numeric"]))


def pick_targets(roles: Roles, names: list[str]) -> tuple[list[tuple[int, str]], list[Problem]]:
    """(horizon, column) pairs sorted by horizon, and problems (a mapped column that does not exist)."""
    if roles.targets:
        missing = [Problem(c, f"is columns.targets[{h}] in the config but not in the file")
                   for h, c in roles.targets.items() if c not in names]
        return sorted((h, c) for h, c in roles.targets.items() if c in names), missing
    rx = pattern_regex(roles.target_pattern)
    return sorted((int(m.group(1)), n) for n in names if (m := rx.match(n))), []


def feature_filter(cfg: ColumnsConfig):
    """name -> (is a feature, why not). Label-like names need an exact listing; globs never admit them."""
    allow = set(cfg.features_allow) | {p for p in cfg.include if not any(ch in p for ch in "*?[")}

    def decide(name: str) -> tuple[bool, str]:
        if is_label_like(name) and name not in allow:
            return False, "named like a label (future information); list it in columns.features_allow if it is not"
        if any(fnmatch.fnmatchcase(name, p) for p in cfg.exclude):
            return False, "matches columns.exclude"
        if cfg.include and not any(fnmatch.fnmatchcase(name, p) for p in cfg.include):
            return False, "not matched by columns.include"
        return True, ""

    return decide
