"""The nightly product: a champion only a better model replaces, tomorrow's ranks, and a live record.

registry   the champion, every model that held the seat, decisions, ranks and live record on disk
promotion  champion vs challenger on the same unseen days (paired daily RankIC interval above zero)
ranks      the champion's score, rank and decile of every stock on the panel's last day
live       earlier ranks scored against the returns that arrived since
health     the live record's verdict over time: healthy, degraded, warming up
night      one night composed of the above (what the pipeline's nightly mode calls)
"""
