"""The demo market: a synthetic equity panel with a planted, known signal.

`generate` writes the panel and its oracle, `market` simulates the market behind it, `config` holds
its size and seed.
"""
