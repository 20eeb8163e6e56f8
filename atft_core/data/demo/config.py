"""The demo panel's market, size and seed: what `atft_core.data.demo.generate` simulates."""

from __future__ import annotations

from dataclasses import dataclass

# "prices": simulated from prices, effects and a feature pipeline (the product demo);
# "planted": a signal of known functional form, for tests of the model's mechanisms.
MARKETS = ("prices", "planted")


@dataclass
class DemoConfig:
    stocks: int = 300
    days: int = 750
    features: int = 40
    seed: int = 0
    start: str = "2020-01-06"  # first trading day candidate (the first XTKS session on or after it)
    horizons: tuple[int, ...] = (1, 5, 10, 20)
    market: str = "prices"  # one of MARKETS
    chunk_days: int = 250  # days simulated/written per chunk (bounded memory at real size)
