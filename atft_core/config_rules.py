"""Range rules for every config value: a value out of range fails by name before any data is read.

Without them a bad value surfaces deep inside torch ("Invalid learning rate", "Invalid number of data
points (0)") after a cache build. tests/test_config_rules.py checks that every leaf of `AtftConfig`
has a rule here, so a new field cannot slip past unchecked.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from atft_core.errors import ConfigError

if TYPE_CHECKING:
    from atft_core.config import AtftConfig

# (path, test, what it must be)
_RULES: tuple[tuple[str, Any, str], ...] = (
    ("data.window", lambda v: _int(v) and v >= 1, "an integer >= 1 (days of history per sample)"),
    ("data.days_per_batch", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.min_stocks", lambda v: _int(v) and v >= 2, "an integer >= 2 (a cross-section needs two names)"),
    ("data.seed", lambda v: _int(v), "an integer"),
    ("data.min_train_days", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.split.val_days", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("data.split.test_days", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("data.split.embargo_days", lambda v: v is None or (_int(v) and v >= 0), "empty or an integer >= 0"),
    ("cache.clip", lambda v: _num(v) and v > 0, "a number > 0"),
    ("cache.min_valid_fraction", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("cache.market_window", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("cache.leak_rankic_floor", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("cache.leak_noise_k", lambda v: _num(v) and v > 0, "a number > 0 (noise standard deviations)"),
    ("cache.chunk_days", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.hidden", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.lstm_layers", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.attn_heads", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.dropout", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.fan_k", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("model.gat_layers", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("model.gat_heads", lambda v: isinstance(v, tuple) and all(_int(h) and h >= 1 for h in v),
     "a list of integers >= 1"),
    ("model.graph_topk", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("model.graph_sector_edges", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("model.n_sections", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.n_sectors", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.static_dim", lambda v: _int(v) and v >= 0, "an integer >= 0"),
    ("model.vsn_gate", lambda v: v in ("softmax", "sigmoid", "signed"), "softmax, sigmoid or signed"),
    ("model.vsn_var_dim", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("model.current_day_width", lambda v: _int(v) and v >= 0, "an integer >= 0 (0 = no current-day path)"),
    ("model.fan_aux_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("model.fan_mode", lambda v: v in ("streams", "normalise"), "streams or normalise"),
    ("model.long_blocks", lambda v: _int(v) and 0 <= v <= 64, "an integer in [0, 64] (0 = no long history)"),
    ("model.long_block_days", lambda v: _int(v) and 1 <= v <= 250, "an integer in [1, 250]"),
    ("model.graph_history", lambda v: v in ("window", "long"), "window or long"),
    ("model.quantiles", lambda v: isinstance(v, tuple) and all(_num(q) and 0 < q < 1 for q in v),
     "a list of numbers in (0, 1)"),
    ("model.piecewise_edges", lambda v: isinstance(v, tuple) and all(_num(e) for e in v)
     and (len(v) == 0 or (len(v) >= 2 and all(a < b for a, b in zip(v, v[1:])))),
     "empty (off) or a list of at least two increasing numbers (bin edges of the z-scored inputs)"),
    ("loss.huber_delta", lambda v: _num(v) and v > 0, "a number > 0"),
    ("loss.rankic_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("loss.cs_ic_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("loss.sharpe_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("loss.rank_anchors", lambda v: _int(v) and v >= 2, "an integer >= 2"),
    ("loss.quantile_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("loss.horizon_weights", lambda v: isinstance(v, dict) and all(_num(w) and w >= 0 for w in v.values()),
     "a mapping of horizon -> number >= 0"),
    ("loss.shortest_horizon_weight", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("train.max_epochs", lambda v: _int(v) and v >= 1, "an integer >= 1 (--max-epochs)"),
    ("train.lr", lambda v: _num(v) and v > 0, "a number > 0 (e.g. 2e-3)"),
    ("train.weight_decay", lambda v: _num(v) and v >= 0, "a number >= 0"),
    ("train.grad_clip", lambda v: _num(v) and v > 0, "a number > 0"),
    ("train.warmup_fraction", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.patience", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("train.plateau_lr_factor", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (0 = no rewind on a plateau)"),
    ("train.max_train_days", lambda v: v is None or (_int(v) and v >= 1), "empty or an integer >= 1"),
    ("train.device", lambda v: v in ("auto", "cpu", "cuda"), "one of auto, cpu, cuda (--device)"),
    ("train.cpu_threads", lambda v: _int(v) and v >= 0, "an integer >= 0 (0 = torch's default)"),
    ("train.seed", lambda v: _int(v), "an integer"),
    ("train.control_shuffle_seed", lambda v: v is None or _int(v), "empty or an integer"),
    ("gate.min_gpu_util", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1] (--min-gpu-util)"),
    ("gate.min_rankic", lambda v: _num(v) and -1 <= v <= 1, "a number in [-1, 1] (--min-rankic)"),
    ("gate.require_gpu", lambda v: isinstance(v, bool), "true or false (--require-gpu)"),
    ("gate.max_rankic", lambda v: _num(v) and -1 < v <= 1, "a number in (-1, 1] (the plausibility ceiling)"),
    ("gate.lookahead_allow", lambda v: isinstance(v, dict), "a mapping of feature name -> reason"),
    ("loss.target_transform", lambda v: v in ("zscore", "rank"), "one of zscore, rank"),
    ("model.cross_section", lambda v: isinstance(v, bool), "true or false"),
    ("model.sector_relative_inputs", lambda v: isinstance(v, bool), "true or false"),
    ("train.amp", lambda v: isinstance(v, bool), "true or false"),
    ("train.compile", lambda v: isinstance(v, bool), "true or false"),
    ("train.progress", lambda v: isinstance(v, bool), "true or false"),
    ("train.static_shapes", lambda v: v in ("auto", "on", "off"), "one of auto, on, off"),
    ("train.resume_from", lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
     "empty or the path of a checkpoint.pt (--resume)"),
    ("model.graph_return_feature", lambda v: isinstance(v, str), "a feature name, or empty for automatic"),
    ("train.ema_decay", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (0 = no weight averaging)"),
    ("train.log_every", lambda v: _int(v) and v >= 1, "an integer >= 1 (training steps between host reads)"),
    ("train.ensemble", lambda v: _int(v) and 1 <= v <= 64, "an integer in [1, 64] (models trained from seeds "
                                                           "seed..seed+K-1, predictions averaged)"),
    ("train.ensemble_alternate_encoding", lambda v: isinstance(v, bool), "true or false"),
    ("nightly.challenger_ensemble", lambda v: _int(v) and 1 <= v <= 64, "an integer in [1, 64]"),
    ("nightly.challenger_epochs", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("nightly.level", lambda v: _num(v) and 0.5 <= v < 1, "a number in [0.5, 1) (e.g. 0.95)"),
    ("nightly.min_gain", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (daily RankIC)"),
    ("nightly.recent_nights", lambda v: _int(v) and v >= 5, "an integer >= 5 (nights in the health window)"),
    ("nightly.health_se", lambda v: _num(v) and v > 0, "a number > 0 (standard errors below the long-run mean)"),
    ("nightly.top_n", lambda v: _int(v) and v >= 1, "an integer >= 1"),
    ("nightly.top_features", lambda v: _int(v) and v >= 0, "an integer >= 0"),
)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def config_problems(cfg: AtftConfig) -> list[str]:
    """Every value of `cfg` out of its range, as `path = value: must be ...` (empty when all is well)."""
    problems = []
    for path, ok, must in _RULES:
        value: Any = cfg
        for part in path.split("."):
            value = getattr(value, part)
        if not ok(value):
            problems.append(f"{path} = {value!r}: must be {must}")
    m = cfg.model
    if _int(m.hidden) and _int(m.attn_heads) and m.attn_heads >= 1 and m.hidden % m.attn_heads:
        problems.append(f"model.hidden = {m.hidden} must be divisible by model.attn_heads = {m.attn_heads}")
    if m.graph_history == "long" and _int(m.long_blocks) and m.long_blocks < 1:
        problems.append("model.graph_history = 'long' reads the long-history blocks: set model.long_blocks >= 1, "
                        "or model.graph_history = 'window'")
    t = cfg.train
    if t.resume_from and _int(t.ensemble) and t.ensemble > 1:
        problems.append(f"train.resume_from = {t.resume_from!r} continues one model: set train.ensemble = 1 "
                        f"(now {t.ensemble}) to resume, or start the ensemble afresh without --resume")
    return problems


def validate_config(cfg: AtftConfig) -> AtftConfig:
    """`cfg` when every value is in range; otherwise one ConfigError listing them all."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg
