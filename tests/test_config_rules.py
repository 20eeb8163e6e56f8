"""Every config value has a range rule, so a new field cannot slip past `validate_config` unchecked."""

from __future__ import annotations

import dataclasses

from atft_core.config import AtftConfig
from atft_core.config_rules import _RULES, config_problems

# Column roles are names and patterns: the data contract checks them against the panel itself.
CHECKED_BY_THE_CONTRACT = "cache.columns."


def _leaves(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_config_value_has_a_rule_and_the_defaults_pass_them():
    ruled = {path for path, _, _ in _RULES}
    leaves = {p for p in _leaves(AtftConfig()) if not p.startswith(CHECKED_BY_THE_CONTRACT)}
    assert leaves - ruled == set(), "add a range rule in atft_core/config_rules.py _RULES for these"
    assert ruled - leaves == set(), "these rules name fields that no longer exist"
    assert config_problems(AtftConfig()) == []
