"""The search space: dotted AtftConfig paths (`train.lr`) mapped to Optuna distributions, from YAML.

A file is checked when it is read (unknown fields, wrong types, hidden sizes the head counts do not
divide), so a typo fails before any trial is queued rather than in trial 37.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from atft_core.config import AtftConfig, read_yaml_mapping

DEFAULT_SEARCH_SPACE = Path(__file__).resolve().parents[1] / "configs" / "search_space.yaml"


@dataclass(frozen=True)
class SearchSpace:
    """Dotted AtftConfig paths (`train.lr`) mapped to Optuna distributions, read from YAML."""

    params: dict[str, optuna.distributions.BaseDistribution]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> SearchSpace:
        path = Path(path) if path else DEFAULT_SEARCH_SPACE
        return cls.from_dict(read_yaml_mapping(path, "search space", "parameter paths"), str(path))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        entries = raw.get("params") if isinstance(raw, Mapping) else None
        if not isinstance(entries, Mapping) or not entries:
            raise ValueError(f"{source}: expected a non-empty mapping under 'params' (dotted config path -> spec)")
        problems: list[str] = []
        params: dict[str, optuna.distributions.BaseDistribution] = {}
        for name, spec in entries.items():
            try:
                params[name] = _distribution(name, spec)
            except (TypeError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        problems += _joint_problems(params)
        if problems:
            raise ValueError(f"{source}: invalid search space:\n  - " + "\n  - ".join(problems))
        return cls(params, source)

    def changed_since(self, trials: list[optuna.trial.FrozenTrial]) -> list[str]:
        """Parameters this space samples differently from the study's earlier ``trials``, one line each.

        Optuna refuses, trial after trial, a parameter whose categorical choices, kind or log scale
        changed within one study ("does not support dynamic value space"): a study started before a
        search-space change would fail every new trial. Ranges may move; those are fine.
        """
        before: dict[str, optuna.distributions.BaseDistribution] = {}
        for t in trials:
            for name, dist in t.distributions.items():
                before.setdefault(name, dist)
        problems = []
        for name, dist in self.params.items():
            if name not in before:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(before[name], dist)
            except ValueError:
                problems.append(f"{name}: the study's trials sampled it as {_describe(before[name])}, "
                                f"{self.source or 'the search space'} now says {_describe(dist)}")
        return problems

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every parameter for `trial` (a retried or enqueued trial gets its fixed values back)."""
        out: dict[str, Any] = {}
        for name, dist in self.params.items():
            if isinstance(dist, optuna.distributions.FloatDistribution):
                out[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                out[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                out[name] = trial.suggest_categorical(name, dist.choices)
        return out


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"categorical {list(dist.choices)}"
    kind = "float" if isinstance(dist, optuna.distributions.FloatDistribution) else "int"
    return f"{kind} [{dist.low}, {dist.high}]{' log' if getattr(dist, 'log', False) else ''}"


def _distribution(name: str, spec: Any) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError("needs a mapping with 'type' (float | int | categorical)")
    default = _config_field(name)
    kind = spec["type"]
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices"})
    if extra:
        raise ValueError(f"unknown key(s) {extra}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("categorical needs a non-empty 'choices' list")
        for c in choices:
            _check_value_type(default, c)
        return optuna.distributions.CategoricalDistribution(choices)
    if kind not in ("float", "int"):
        raise ValueError(f"type must be float, int or categorical, got {kind!r}")
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{kind} needs 'low' and 'high'")
    if kind == "int" and type(default) is float:
        kind = "float"  # an int range for a float field is still a float
    if kind == "float":
        if type(default) is not float:
            raise ValueError(f"float range for a field of type {type(default).__name__}")
        return optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                      log=bool(spec.get("log", False)), step=spec.get("step"))
    if type(default) is not int and default is not None:  # None: an optional int such as max_train_days
        raise ValueError(f"int range for a field of type {type(default).__name__}")
    return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                                step=int(spec.get("step", 1)))


def _config_field(path: str) -> Any:
    """The default value at a dotted AtftConfig path; ValueError naming the known fields otherwise."""
    node: Any = AtftConfig()
    walked = []
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"'{'.'.join(walked)}' is a value, not a section")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(walked) or "config"
            raise ValueError(f"'{part}' is not a field of {where}; known: {names}")
        node = getattr(node, part)
        walked.append(part)
    if dataclasses.is_dataclass(node):
        raise ValueError("names a whole section; name one of its fields")
    if isinstance(node, (tuple, list, dict)):
        raise TypeError(f"is a {type(node).__name__}; only scalar fields can be searched")
    return node


def _check_value_type(default: Any, value: Any) -> None:
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][0-9]+", value):
            hint = f" (YAML reads {value} as text: write the exponent with a sign, e.g. 1.0e+6)"
        raise ValueError(f"choice {value!r} does not fit a field of type {type(default).__name__}{hint}")


def _joint_problems(params: Mapping[str, optuna.distributions.BaseDistribution]) -> list[str]:
    """Combinations the model cannot use, caught when the file is read rather than in trial 37."""
    hidden, heads = params.get("model.hidden"), params.get("model.attn_heads")
    if not (isinstance(hidden, optuna.distributions.CategoricalDistribution)
            and isinstance(heads, optuna.distributions.CategoricalDistribution)):
        return []
    bad = [(d, h) for d in hidden.choices for h in heads.choices if int(d) % int(h)]
    return [f"model.hidden {d} is not divisible by model.attn_heads {h}" for d, h in bad]


def apply_params(cfg: AtftConfig, params: Mapping[str, Any]) -> AtftConfig:
    """A copy of `cfg` with each dotted path set to its value (the input is left untouched)."""
    out = AtftConfig.from_dict(cfg.to_dict())
    for path, value in params.items():
        *sections, leaf = path.split(".")
        node: Any = out
        for s in sections:
            node = getattr(node, s)
        if not hasattr(node, leaf):
            raise ValueError(f"{path}: no such config field")
        setattr(node, leaf, value)
    return out



def trial_config(base_cfg: AtftConfig, params: Mapping[str, Any], max_epochs: int) -> AtftConfig:
    """The config one trial trains with: the base, the sampled values, the study's epoch budget."""
    cfg = apply_params(base_cfg, params)
    cfg.train.max_epochs = max_epochs
    cfg.train.progress = False  # K workers' progress bars in one log are noise
    return cfg
