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

from atft_core.config_rules import validate_config


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
    # sigmoid (each variable's weight in (0, 2)) | signed (-2, 2) | softmax (TFT's): see VariableSelectionNetwork.
    # sigmoid: better than signed on every tuning seed of the price market (bench/ablation_prices.md).
    vsn_gate: str = "sigmoid"
    # Width of each variable's own GRN in the VSN (its cost is S*L*F*this). 8, not 16: as good on the
    # price market's tuning seeds at 0.7x the model's CPU time (bench/ablation_prices.md, with no piecewise code).
    vsn_var_dim: int = 8
    fan_aux_weight: float = 0.1  # weight of FAN's reconstruction loss inside the model's aux_loss
    quantiles: tuple[float, ...] = ()  # () = point forecast; e.g. (0.1, 0.5, 0.9)
    cross_section: bool = False  # encodings relative to their day's sector / market means before the GAT
    # Each feature minus its day's sector mean as one more encoder stream (what the peer gets too): a
    # stock's standing within its sector is hard to learn from raw values alone.
    sector_relative_inputs: bool = True
    # Width of a dense path from the forecast day's own inputs to the encoding (0 = off): see CurrentDayMLP.
    # Off by default: it helped one tuning seed and hurt another (bench/signal_ablation-round3-*.md).
    current_day_width: int = 0
    # Bin edges of a piecewise-linear code of each input value (the cache's z-scores), one more VSN
    # stream and current-day input per bin; () = off. See PiecewiseLinearEncoding. Off by default: on the
    # price market's tuning seeds the model without it (and vsn_var_dim 8) was not worse and cheaper
    # (bench/ablation_prices.md); e.g. (-5, -2, -1.5, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 1.5, 2, 5) turns it on.
    piecewise_edges: tuple[float, ...] = ()
    # FAN: "streams" = the encoder reads residual, removed part and its reconstruction (nothing is lost);
    # "normalise" = it reads the residual only and the removed part enters through a learned forecast
    # of its next value (see atft_core.model.fan.RemovedForecaster).
    fan_mode: str = "streams"
    # Long history: means of each feature over the last long_blocks blocks of long_block_days days,
    # encoded into the stock's vector (0 = off): effects of weeks to a year a 10-day window cannot see.
    long_blocks: int = 0
    long_block_days: int = 20
    # Correlation behind the graph's edges: "window" = the return feature over the input window;
    # "long" = that window plus the return feature's long-history block means (needs long_blocks).
    graph_history: str = "window"

    @classmethod
    def reference(cls) -> "ModelConfig":
        """The production config: the measured default (its encoding, gates, FAN mode, long history) scaled up.

        Only sizes change (hidden 256, two GAT layers, wider graph, quantile heads; 4.8M parameters at 300
        features, 5.6M at 400): every choice the
        walk-forward ablation made on the tuning seeds (bench/ablation_prices.md) is kept as measured.
        """
        return dataclasses.replace(cls(), hidden=256, lstm_layers=1, attn_heads=8, dropout=0.1, fan_k=5,
                                   gat_layers=2, gat_heads=(8, 4), graph_topk=16,
                                   quantiles=(0.1, 0.25, 0.5, 0.75, 0.9))

    @classmethod
    def reference_20m(cls) -> "ModelConfig":
        """The parameter count of the system this replaces (~20M): 21.7M at 300 features, 22.9M at 400.

        `reference()` widened to hidden 576 with a 2-layer LSTM. Memory for one day of 4,000 stocks
        (window 10, 300 features, fp32 training) is estimated in docs/gpu-readiness.md.
        """
        return dataclasses.replace(cls.reference(), hidden=576, lstm_layers=2)


@dataclass
class LossConfig:
    huber_delta: float = 1.0
    # Huber alone by default: the three ranking terms did not help on the tuning seeds' validation
    # days (bench/results.md). HPO still searches them.
    rankic_weight: float = 0.0
    cs_ic_weight: float = 0.0
    sharpe_weight: float = 0.0
    rank_anchors: int = 64  # K quantile knots per day of the soft rank (RankIC surrogate); more = closer to exact
    quantile_weight: float = 1.0  # weight of the pinball loss when the model has quantile heads
    horizon_weights: dict[int, float] = field(default_factory=dict)  # per horizon; unlisted ones get the defaults
    # Default weight of the shortest horizon (the gate's): weighted up, not alone, since the longer
    # horizons regularise what the shortest one learns (chosen on validation days).
    shortest_horizon_weight: float = 3.0
    target_transform: str = "zscore"  # zscore (the cache's y_z) | rank (per-day rank-gauss, atft_core.train.targets)


@dataclass
class TrainConfig:
    max_epochs: int = 2
    # Validation, test and checkpoints use an exponential moving average of the weights (0 = off): the
    # average of a noisy run's last steps ranks better than its last step (chosen on validation days).
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
    # too small to gain from a second thread, and on a shared box spinning threads slow every step:
    # one thread is the robust default. Ignored on CUDA.
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
    # encoding: a mix of members that see their inputs differently (off by default: on the tuning seeds'
    # validation days it did not beat members with one encoding, bench/signal_recipes.md).
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
# `bench.signal --goals` measures: a seed ensemble of short runs, validation picking each run's epoch.
# Chosen on the tuning seeds' validation days (bench/signal_recipes.md has the comparison).
TRAIN_RECIPE: dict[str, int] = {"ensemble": 3, "max_epochs": 3}


@dataclass
class NightlyConfig:
    """The nightly product after the gate and the study: challenger, champion decision, ranks, live health."""

    # Tonight's challenger: the study's best configuration trained with the measured recipe.
    challenger_ensemble: int = TRAIN_RECIPE["ensemble"]
    challenger_epochs: int = TRAIN_RECIPE["max_epochs"]
    # A challenger replaces the champion only when the paired daily RankIC interval at this level is above 0.
    level: float = 0.95
    # ... and its lower end above this RankIC gain (0: any confident gain). A margin worth the turnover a
    # new champion brings is the team's choice: near-identical nightly models clear zero on tiny gains.
    min_gain: float = 0.0
    # Health: the champion's live RankIC over the last `recent_nights` nights against its own earlier
    # nights (degraded below their mean by more than `health_se` standard errors) and against the peer.
    recent_nights: int = 20
    health_se: float = 2.0
    top_n: int = 20  # stocks at each end of the ranks table artifact
    top_features: int = 5  # the features the model weighted most, shown beside them


@dataclass
class AtftConfig:
    """Everything one training run needs: the dry run, `atft train`, `atft predict` and each HPO trial."""

    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)

    @classmethod
    def load(cls, path: str | Path | None) -> AtftConfig:
        """The YAML file's config, or the library's defaults when there is no file."""
        return cls.from_yaml(path) if path else cls()

    def with_overrides(self, *, max_epochs: int | None = None, device: str | None = None,
                       ensemble: int | None = None, resume_from: str | None = None,
                       min_gpu_util: float | None = None, min_rankic: float | None = None,
                       require_gpu: bool | None = None, profile: str | None = None,
                       challenger_ensemble: int | None = None, challenger_epochs: int | None = None) -> AtftConfig:
        """This config with a run's explicit choices on top; None keeps this config's value.

        The one place a flag or a flow parameter becomes a config value: the CLI checks its flags with
        it before any server starts, and the flow builds its config with it, so the two cannot drift.
        """
        train = _replace_given(self.train, max_epochs=max_epochs, device=device, ensemble=ensemble,
                               resume_from=resume_from)
        gate = _replace_given(self.gate, min_gpu_util=min_gpu_util, min_rankic=min_rankic, require_gpu=require_gpu)
        cache = dataclasses.replace(self.cache, columns=_replace_given(self.cache.columns, profile=profile))
        nightly = _replace_given(self.nightly, challenger_ensemble=challenger_ensemble,
                                 challenger_epochs=challenger_epochs)
        return dataclasses.replace(self, train=train, gate=gate, cache=cache, nightly=nightly)

    def validated(self) -> AtftConfig:
        """This config when every value is in its range; otherwise one ConfigError naming them all."""
        return validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> AtftConfig:
        return _build(cls, raw or {}, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> AtftConfig:
        return _build(cls, read_yaml_mapping(path, "config file", "sections (data, model, ...)"), str(path))


def _replace_given(section: Any, **values: Any) -> Any:
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(section, **given) if given else section


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
