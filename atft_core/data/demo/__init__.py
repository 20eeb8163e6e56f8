"""The demo market: a synthetic equity panel whose expected returns (the oracle) are known.

`generate` writes the panel and its oracle; `config` holds its market, size and seed. The default
market is simulated from prices (`prices` the simulation, `effects` its expected returns, `features`
the feature pipeline, `price_panel` the writing); `market` is the planted market, kept for tests of
the model's mechanisms.
"""
