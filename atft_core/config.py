"""Typed configuration, passed down explicitly (never read from environment variables deep inside).

Every stage takes one of these small dataclasses. `AtftConfig` bundles them for the dry run and
can be read from / written to YAML so that a run's exact settings travel with its results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ColumnsConfig:
    """Which column plays which role (README "Data contract"). Part of the cache key: roles shape the grid.

    ``profile`` fills the names for a known layout: "atft" (``target_{h}d``, ``sector33_code``),
    "gogooku3" (``feat_ret_{h}d``, ``sector33_code`` or ``sector33``), or "auto" (gogooku3 when its
    labels are present and no ``target_{h}d`` is, else atft; the log says which). Names set here win
    over the profile's. Columns named like labels (`atft_core.data.roles.LABEL_PATTERNS`) are never
    features unless listed by exact name in ``features_allow``.
    """

    profile: str = "auto"  # auto | atft | gogooku3
    date: str = "Date"
    code: str = "Code"
    section: str = ""  # "" = the profile's (Section)
    sector: str = ""  # "" = the profile's (sector33_code, or gogooku3's sector33)
    targets: dict[int, str] = field(default_factory=dict)  # horizon -> column; empty = target_pattern
    target_pattern: str = ""  # e.g. "feat_ret_{h}d"; "" = the profile's
    include: list[str] = field(default_factory=list)  # feature name globs; empty = every numeric column
    exclude: list[str] = field(default_factory=list)  # feature name globs never used
    features_allow: list[str] = field(default_factory=list)  # label-like names that ARE features (exact names)
    non_numeric: str = ""  # "error" | "ignore" for non-numeric, non-role columns; "" = the profile's


@dataclass
class CacheConfig:
    """How the Arrow cache is built from the parquet panel."""

    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    clip: float = 5.0  # robust z-scores are clipped to +-clip
    min_valid_fraction: float = 0.0  # drop features valid on fewer than this fraction of cells (0 = keep all)
    market_window: int = 0  # market-level features: 0 = expanding stats over past days, N = rolling N days
    # Look-ahead screen: a feature is suspect when |mean daily RankIC| with a forward target exceeds
    # max(floor, k * noise sd of that mean for this many stocks and days); see atft_core.data.cache.leak.
    leak_rankic_floor: float = 0.2
    leak_noise_k: float = 6.0
    # Days built at once: ~6 chunk buffers of chunk_days x S x F floats are held (16 x 4,000 x 400:
    # ~0.6 GB), whatever the number of days. 16 built 4,000 x 1,150 x 400 in 17.3 s against 21-22 s
    # with 64 (fewer fresh pages to fault in, chunks closer to the cache) and 19 s with 8 or 32.
    chunk_days: int = 16


@dataclass
class SplitConfig:
    """Walk-forward split by date; embargo counted in trading days.

    Train | embargo | validation | embargo | test. Validation picks epochs, HPO trials and defaults;
    the test days are scored once, by the best epoch, and are what reports and comparisons show.
    On the 750-day demo (window 10, horizons up to 20): 120 + 20 + 120 + 20 leaves ~460 training days;
    120 test days put the standard error of a mean daily RankIC near 0.005 (0 = no test window).
    """

    val_days: int = 120
    test_days: int = 120
    embargo_days: int | None = None  # None = the longest target horizon (the minimum allowed)


@dataclass
class DataConfig:
    window: int = 10  # L: days of history per sample
    days_per_batch: int = 2  # whole trading days per batch; a day is never cut
    min_stocks: int = 20  # days with fewer valid names are skipped (sampler and metrics)
    min_train_days: int = 20  # build-cache refuses a history shorter than window+horizon+embargo+val+this
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)

    def min_history(self, horizons: tuple[int, ...]) -> int:
        """Trading days a panel needs: window, longest horizon, embargo(s), validation, min_train_days.

        Checked at cache build so that a too-short file fails before anything is written; the
        split itself checks again exactly (it also knows which days have too few stocks).
        """
        embargo = max(horizons) if self.split.embargo_days is None else self.split.embargo_days
        test = self.split.test_days + embargo if self.split.test_days else 0
        return self.window + max(horizons) + embargo + self.split.val_days + test + self.min_train_days


@dataclass
class ModelConfig:
    """ATFT-GAT-FAN sizes. Demo defaults are small; `reference()` gives the production sizes."""

    hidden: int = 32
    lstm_layers: int = 1
    attn_heads: int = 4
    dropout: float = 0.2
    fan_k: int = 3  # rFFT components removed per feature and predicted back
    gat_layers: int = 1
    gat_heads: tuple[int, ...] = (4,)
    graph_topk: int = 8  # correlation neighbours per stock
    graph_sector_edges: int = 8  # same-sector neighbours sampled per stock (bounds degree in big sectors)
    graph_return_feature: str = ""  # feature whose window correlation builds edges ("" = auto)
    n_sections: int = 8  # embedding table sizes (ids above are folded into the last row)
    n_sectors: int = 40
    static_dim: int = 8
    # signed (in (-2, 2): a gate that follows another variable's sign forms x * sign(gate)) | sigmoid (0, 2) |
    # softmax (TFT's). Signed lifted val RankIC 0.115 -> 0.127 (seed 0) and 0.115 -> 0.126 (seed 4), one
    # 3-epoch run each: see VariableSelectionNetwork.
    vsn_gate: str = "signed"
    # Width of each variable's own GRN in the VSN (its cost is S*L*F*this). 16, not 4: a variable whose
    # effect is an even function (extremes in either direction) needs it; measured on demo seed 0
    # (validation) the planted extreme part's capture went 0.01 -> 0.19, val RankIC 0.101 -> 0.107,
    # for 1.6x the CPU time of a step.
    vsn_var_dim: int = 16
    fan_aux_weight: float = 0.1  # weight of FAN's reconstruction loss inside the model's aux_loss
    quantiles: tuple[float, ...] = ()  # () = point forecast; e.g. (0.1, 0.5, 0.9)
    cross_section: bool = False  # encodings relative to their day's sector / market means before the GAT
    # Each feature minus its day's sector mean as one more encoder stream (what the peer gets too).
    # Measured on demo seed 0 (validation): sector-relative signal captured 0.08 -> 0.36, val RankIC +0.015.
    sector_relative_inputs: bool = True
    # Width of a dense path from the forecast day's own inputs to the encoding (0 = off): see CurrentDayMLP.
    # Off by default: on demo seed 0 (300 stocks) it took the planted interaction's capture 0.10 -> 0.30 and
    # val RankIC 0.103 -> 0.112, on seed 4 val RankIC fell 0.114 -> 0.104 (bench/signal_ablation-round3-*.md).
    current_day_width: int = 0
    # Bin edges of a piecewise-linear code of each input value (the cache's z-scores), one more VSN
    # stream and current-day input per bin; () = off. See PiecewiseLinearEncoding. On the tuning seeds
    # (0 and 4, 300 stocks, validation) 2-epoch runs went 0.1065 -> 0.1109 and 0.1047 -> 0.1099 (mean of
    # five training seeds each), the extreme-value part's capture 0.15-0.20 -> 0.30-0.37; 1.2-1.3x the time.
    piecewise_edges: tuple[float, ...] = (-5.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0)

    @classmethod
    def reference(cls) -> "ModelConfig":
        """The production config's named sizes (hidden 256): 4.5M parameters at 300 features, 5.1M at 400."""
        # vsn_var_dim 4, not the demo's 16: at 400 features and 4,000 stocks the VSN's [S, L, F, d]
        # tensors dominate step memory, and 16 has not been measured on a GPU yet.
        # No piecewise code either: it makes the VSN's input [S, L, F, 16] instead of [S, L, F, 4].
        return cls(hidden=256, lstm_layers=1, attn_heads=8, dropout=0.1, fan_k=5, gat_layers=2,
                   gat_heads=(8, 4), graph_topk=16, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9), vsn_var_dim=4,
                   piecewise_edges=())

    @classmethod
    def reference_20m(cls) -> "ModelConfig":
        """The parameter count of the system this replaces (~20M): 21.0M at 300 features, 22.0M at 400.

        `reference()` widened to hidden 576 with a 2-layer LSTM. Memory for one day of 4,000 stocks
        (window 10, 300 features, fp32 training) is estimated in docs/gpu-readiness.md.
        """
        return dataclasses.replace(cls.reference(), hidden=576, lstm_layers=2)


@dataclass
class LossConfig:
    huber_delta: float = 1.0
    # Huber alone by default: on demo seeds 0 and 4 (300 stocks, validation) dropping the three ranking
    # terms lifted RankIC 0.103 -> 0.114 and 0.114 -> 0.112 (mean +0.004), and the planted interaction's
    # capture 0.10 -> 0.31 (seed 0). HPO still searches them.
    rankic_weight: float = 0.0
    cs_ic_weight: float = 0.0
    sharpe_weight: float = 0.0
    rank_anchors: int = 64  # K quantile knots per day of the soft rank (RankIC surrogate); more = closer to exact
    quantile_weight: float = 1.0  # weight of the pinball loss when the model has quantile heads
    horizon_weights: dict[int, float] = field(default_factory=dict)  # per horizon; unlisted ones get the defaults
    # Default weight of the shortest horizon (the gate's). Tuned on the demo: 3 lifted 1d validation
    # RankIC from ~0.080 to ~0.090; training on 1d alone was worse (0.069): longer horizons regularise.
    shortest_horizon_weight: float = 3.0
    target_transform: str = "zscore"  # zscore (the cache's y_z) | rank (per-day rank-gauss, atft_core.train.targets)


@dataclass
class TrainConfig:
    max_epochs: int = 2
    # Validation, test and checkpoints use an exponential moving average of the weights (0 = off).
    # Chosen on demo seed 0's validation days: 0.99 lifted epoch-1 val RankIC 0.078 -> 0.084.
    ema_decay: float = 0.99
    lr: float = 2e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
    patience: int = 3  # epochs without val RankIC improvement before stopping
    # > 0: an epoch that does not improve val RankIC is undone (weights, average and optimiser back to
    # the best epoch's) and the learning rate is multiplied by this; 0 = keep training from where it is.
    plateau_lr_factor: float = 0.3
    max_train_days: int | None = None  # explicit cap only; None = every training day every epoch
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model (bench/); mode reduce-overhead with static shapes on CUDA
    # Pad every training batch to all stocks of the cache (fixed shapes, masked rows): "auto" = on for
    # CUDA (lets the step be compiled / CUDA-graph captured), off on CPU where padding only costs time.
    static_shapes: str = "auto"  # auto | on | off
    # Training steps between reads of the loss parts and the finite check (the only host sync of the
    # loop); the epoch's end always reads. A NaN is still reported with its epoch, batch and days.
    log_every: int = 50
    # Intra-op threads on CPU (0 = torch's default, one per core). The demo-sized model's ops are
    # too small to gain from a second thread, and on a shared box spinning threads made steps 5x
    # slower (measured): one thread is the robust default. Ignored on CUDA.
    cpu_threads: int = 1
    progress: bool = True
    seed: int = 0
    control_shuffle_seed: int | None = None  # control run: train on targets shuffled within each day
    resume_from: str | None = None  # checkpoint.pt of an earlier run on the same panel layout: continue it
    # Members of a seed ensemble (atft_core.train.ensemble): K runs with seeds seed..seed+K-1, predictions
    # averaged. 1 = one model (the dry run's default: it is a quick go/no-go); HPO trials always train one.
    # `atft train` trains TRAIN_RECIPE's ensemble by default (bench/signal_recipes.md).
    ensemble: int = 1
    # True: odd members read the raw values only (model.piecewise_edges off), even ones the configured
    # encoding. With sigmoid VSN gates the two learnt different planted parts and their mix won; with the
    # signed gates the coded members learn both, and three coded members scored 0.129 / 0.133 on the
    # tuning seeds' validation days against 0.127 / 0.132 alternating (ensemble.py, bench/signal_recipes.md).
    ensemble_alternate_encoding: bool = False

    def __post_init__(self) -> None:
        # checked when the config is read, before a run folder or cache is made
        if self.static_shapes not in ("auto", "on", "off"):
            raise ValueError(f"train.static_shapes must be auto, on or off, got {self.static_shapes!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"train.log_every must be an integer >= 1 (training steps), got {self.log_every!r}")


@dataclass
class GateConfig:
    min_gpu_util: float = 0.40
    min_rankic: float = -0.01
    require_gpu: bool = False
    # Above this validation RankIC a daily equity model almost surely sees the future (plausible_rankic).
    max_rankic: float = 0.30
    # Look-ahead suspects accepted anyway: feature name -> why it is not future information (no_lookahead).
    lookahead_allow: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, reason in self.lookahead_allow.items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"gate.lookahead_allow['{name}'] needs a reason (why this column is not future "
                                 "information), e.g. {" + repr(name) + ": 'published before the open'}")


# What `atft train` trains when neither the config nor a flag says otherwise, and what
# `bench.signal --goals` measures: three 3-epoch runs (nine epochs of training; validation picks each
# run's epoch). Chosen on the tuning seeds' validation days (`python -m bench.signal --recipes`,
# bench/signal_recipes.md): with the signed VSN gates val RankIC 0.129 / 0.133 against 0.128 / 0.131 for
# two such runs and 0.127 / 0.122 / 0.125 and 0.126 / 0.129 / 0.127 for the single runs.
TRAIN_RECIPE: dict[str, int] = {"ensemble": 3, "max_epochs": 3}


@dataclass
class AtftConfig:
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "AtftConfig":
        return _build(cls, raw or {}, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AtftConfig":
        return _build(cls, read_yaml_mapping(path, "config file", "sections (data, model, ...)"), str(path))


def read_yaml_mapping(path: str | Path, what: str, of: str = "keys") -> dict[str, Any]:
    """A YAML file that must hold a mapping; every failure is a ValueError saying which file and why."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path} must hold a mapping of {of}")
    return raw


def _build(cls: type, raw: dict[str, Any], where: str):
    """Build a (nested) dataclass from a dict, rejecting unknown keys so typos are not ignored."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name} must be a mapping")
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        elif isinstance(default, dict) and isinstance(value, dict):
            kwargs[name] = {int(k) if str(k).isdigit() else k: v for k, v in value.items()}
        else:
            kwargs[name] = value
    return cls(**kwargs)


# Ranges, not only types: a value out of range fails here, by name, before any data is read, instead
# of deep inside torch ("Invalid learning rate", "Invalid number of data points (0)").
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
)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    import math

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
    t = cfg.train
    if t.resume_from and _int(t.ensemble) and t.ensemble > 1:
        problems.append(f"train.resume_from = {t.resume_from!r} continues one model: set train.ensemble = 1 "
                        f"(now {t.ensemble}) to resume, or start the ensemble afresh without --resume")
    return problems


def validate_config(cfg: AtftConfig) -> AtftConfig:
    """`cfg` when every value is in range; otherwise one ConfigError listing them all."""
    from atft_core.errors import ConfigError

    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg
