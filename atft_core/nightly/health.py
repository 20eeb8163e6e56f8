"""Is the champion still good? Its live RankIC over the last nights against its own past and the peer's.

Tonight's gate asks whether a 2-epoch run is above -0.01; this asks the trader's question, on the
live record (`atft_core.nightly.live`, first horizon: daily returns barely overlap, so nights are
close to independent):

- **against its own history**: the mean of the last `recent` nights is below the mean of every
  earlier night by more than `n_se` standard errors of a `recent`-night mean (the earlier nights'
  standard deviation over sqrt(recent));
- **against the peer**: over the same last `recent` nights, the paired daily difference champion -
  peer has its 95 % interval entirely below zero (`atft_core.evaluate.compare`).

Either one makes the state `degraded`. With fewer than `recent` scored nights the state is
`warming up` (and the first check waits for `recent` earlier nights as well): a verdict on five
nights would be noise with a red label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from atft_core.evaluate.compare import block_bootstrap_interval, paired_daily_difference
from atft_core.nightly.live import series

HEALTHY, DEGRADED, WARMING_UP = "healthy", "degraded", "warming up"


@dataclass
class Health:
    state: str
    reasons: list[str] = field(default_factory=list)
    nights: int = 0  # champion nights scored at this horizon
    recent_mean: float | None = None
    earlier_mean: float | None = None
    floor: float | None = None  # earlier_mean - n_se * SE: degraded below it
    peer_recent_mean: float | None = None
    vs_peer: dict[str, Any] | None = None  # PairedDifference.to_dict() of champion - peer, recent nights
    horizon: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = [f"## Live health: {self.state.upper()}", "",
                 f"Champion nights scored ({self.horizon}d returns): {self.nights}.", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| | value |", "|---|---:|",
                  f"| champion, recent nights' mean live RankIC | {_fmt(self.recent_mean)} |",
                  f"| champion, earlier nights' mean | {_fmt(self.earlier_mean)} |",
                  f"| degraded below (earlier mean - k standard errors) | {_fmt(self.floor)} |",
                  f"| peer, recent nights' mean | {_fmt(self.peer_recent_mean)} |"]
        if self.vs_peer:
            v = self.vs_peer
            lines.append(f"| champion - peer, recent nights [interval] | {v['mean']:+.4f} [{v['lo']:+.4f}, "
                         f"{v['hi']:+.4f}] |")
        return "\n".join(lines)


def assess(history: pl.DataFrame, horizon: int, *, recent: int = 20, n_se: float = 2.0) -> Health:
    champ = series(history, "champion", horizon)
    nights = len(champ)
    h = Health(state=WARMING_UP, nights=nights, horizon=horizon)
    if nights < recent:
        h.reasons.append(f"{nights} of {recent} nights scored: no verdict before {recent} nights of live record")
        return h
    ic = champ["rankic"].to_numpy()
    last, earlier = ic[-recent:], ic[:-recent]
    h.recent_mean = float(np.mean(last))
    degraded = []
    if len(earlier) >= recent:
        h.earlier_mean = float(np.mean(earlier))
        h.floor = h.earlier_mean - n_se * float(np.std(earlier, ddof=1)) / math.sqrt(recent)
        if h.recent_mean < h.floor:
            degraded.append(f"the last {recent} nights' mean live RankIC {h.recent_mean:+.4f} is below its earlier "
                            f"nights' {h.earlier_mean:+.4f} by more than {n_se:g} standard errors (floor "
                            f"{h.floor:+.4f})")
        else:
            h.reasons.append(f"the last {recent} nights ({h.recent_mean:+.4f}) are within {n_se:g} standard errors "
                             f"of the earlier nights ({h.earlier_mean:+.4f})")
    else:
        h.reasons.append(f"against its own past: waits for {recent} earlier nights ({len(earlier)} so far)")
    peer = series(history, "peer", horizon)
    dates = champ["date"].to_list()[-recent:]
    peer_by_date = dict(zip(peer["date"].to_list(), peer["rankic"].to_list(), strict=True))
    peer_ic = np.array([peer_by_date.get(d, np.nan) for d in dates], dtype=np.float64)
    d = paired_daily_difference(last, peer_ic)
    if len(d) >= recent // 2:
        h.peer_recent_mean = float(np.nanmean(peer_ic))
        diff = block_bootstrap_interval([d])
        h.vs_peer = diff.to_dict()
        if diff.hi < 0:
            degraded.append(f"the champion trails the peer over the last {recent} nights: {diff.mean:+.4f} "
                            f"[{diff.lo:+.4f}, {diff.hi:+.4f}]")
        else:
            h.reasons.append(f"against the peer over the last {recent} nights: {diff.mean:+.4f} "
                             f"[{diff.lo:+.4f}, {diff.hi:+.4f}], not below zero")
    else:
        h.reasons.append(f"against the peer: {len(d)} paired nights, needs {recent // 2}")
    h.state = DEGRADED if degraded else HEALTHY
    h.reasons = degraded + h.reasons
    return h


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"
