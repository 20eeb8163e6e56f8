"""Champion or challenger: the paired daily RankIC difference on days neither model has seen.

A challenger replaces the champion only when, on the same held-out days, the mean daily difference
``RankIC_challenger(t) - RankIC_champion(t)`` has a block-bootstrap interval (`atft_core.evaluate.compare`)
entirely above zero (or above `nightly.min_gain`, a margin the team may ask for). Ties and "probably
better" keep the champion: a seat that changes on noise makes the live record a record of nobody.

The days: tonight's test days (held out from the challenger by its split) after the last day the
champion saw plus the embargo, so neither model's training or epoch choice touched their labels.
The champion was trained on an earlier night's panel; when it saw days that tonight's test days
include (a champion registered from a later panel, by hand), only the days after it are compared.

An empty seat is held by a model that predicts nothing (RankIC 0 every day): the first champion too
must show a daily RankIC whose interval is above zero.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from atft_core.evaluate.compare import block_bootstrap_interval, paired_daily_difference


def unseen_days(dates: list[str], test_days: np.ndarray, seen_until: list[str], embargo: int) -> np.ndarray:
    """The `test_days` (cache day indices) later than every `seen_until` date by more than `embargo` trading days.

    A `seen_until` date that is not a trading day of `dates` counts from the last trading day on or before it.
    """
    test_days = np.asarray(test_days, dtype=np.int64)
    if not seen_until:
        return test_days
    last_seen = max(bisect.bisect_right(dates, d) - 1 for d in seen_until)
    return test_days[test_days > last_seen + embargo]


@dataclass
class Decision:
    """One night's champion decision, with every number a person needs to trust it."""

    night: str  # the panel's last date: the night this decision belongs to
    challenger: str
    champion: str | None  # the seat before the decision (None: empty)
    promoted: bool
    reason: str
    days: list[str] = field(default_factory=list)  # first and last compared day
    n_days: int = 0
    challenger_rankic: float | None = None  # mean daily RankIC on the compared days
    champion_rankic: float | None = None
    peer_rankic: float | None = None  # the LightGBM peer's test RankIC from the challenger's run
    difference: dict[str, Any] | None = None  # PairedDifference.to_dict()
    level: float = 0.95
    min_gain: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        verdict = "PROMOTED" if self.promoted else "KEPT"
        seat = f"`{self.champion}`" if self.champion else "empty seat (a model that predicts nothing)"
        lines = [f"## Champion decision {self.night}: {verdict}", "", self.reason, "",
                 "| | model | mean daily RankIC |", "|---|---|---:|",
                 f"| challenger | `{self.challenger}` | {_fmt(self.challenger_rankic)} |",
                 f"| champion | {seat} | {_fmt(self.champion_rankic if self.champion else 0.0)} |",
                 f"| LightGBM peer | tonight's, same test days | {_fmt(self.peer_rankic)} |"]
        if self.difference:
            d = self.difference
            lines += ["", f"Challenger - champion: **{d['mean']:+.4f}**, {self.level:.0%} interval "
                          f"[{d['lo']:+.4f}, {d['hi']:+.4f}] over {d['n_days']} paired days "
                          f"({self.days[0]} .. {self.days[-1]}; moving blocks of {d['block']} days)."]
        floor = "zero" if self.min_gain == 0 else f"{self.min_gain:+.4f} (nightly.min_gain)"
        lines += ["", f"Promotion needs the whole interval above {floor}. People: `atft champion show | promote RUN "
                      "| rollback`."]
        return "\n".join(lines)


def decide(*, night: str, challenger: str, champion: str | None, dates: list[str], days: np.ndarray,
           challenger_daily: np.ndarray, champion_daily: np.ndarray | None, peer_rankic: float | None,
           level: float = 0.95, min_gain: float = 0.0) -> Decision:
    """Promote `challenger` iff its paired daily RankIC difference over `days` has its interval above `min_gain`.

    ``*_daily``: ``[len(days)]`` daily RankICs on the cache days `days` (NaN: too few names that day);
    `champion_daily` None: the seat is empty and the challenger is compared with zero.
    """
    base = np.zeros_like(challenger_daily) if champion_daily is None else champion_daily
    d = paired_daily_difference(challenger_daily, base)
    common = dict(night=night, challenger=challenger, champion=champion, peer_rankic=peer_rankic, level=level,
                  min_gain=min_gain)
    if len(d) < 2:
        return Decision(**common, promoted=False, n_days=len(d),
                        reason=f"only {len(d)} held-out day(s) that neither model has seen: nothing to compare, "
                               "the champion stays (the next nights add days)")
    both = np.isfinite(challenger_daily) & np.isfinite(base)
    diff = block_bootstrap_interval([d], level=level)
    shown = [dates[int(i)] for i in np.asarray(days)[both]]
    promoted = diff.lo > min_gain
    floor = "zero" if min_gain == 0 else f"the minimum gain {min_gain:+.4f}"
    if champion is None:
        reason = (f"the seat was empty; the challenger's daily RankIC interval is above {floor}: it is the first "
                  "champion" if promoted else
                  f"the seat stays empty: the challenger's daily RankIC interval is not above {floor}")
    else:
        reason = (f"the challenger beats the champion on the same held-out days (interval above {floor})" if promoted
                  else f"the challenger is not better than the champion with confidence (interval not above "
                       f"{floor}): the champion stays")
    return Decision(**common, promoted=bool(promoted), reason=reason, days=[shown[0], shown[-1]], n_days=diff.n_days,
                    challenger_rankic=float(np.mean(challenger_daily[both])),
                    champion_rankic=None if champion_daily is None else float(np.mean(champion_daily[both])),
                    difference=diff.to_dict())


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"
