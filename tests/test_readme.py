"""The README is the front door: its commands and its configuration example must stay true."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from atft_core.config import AtftConfig
from flows.cli_parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_exist_and_ci_runs_the_test_command():
    makefile = (ROOT / "Makefile").read_text()
    assert "make dryrun" in README and "make test" in README
    assert re.search(r"^dryrun: .*\n\t\$\(BIN\)/atft dryrun", makefile, re.M)
    assert re.search(r"^test: .*\n\t\$\(BIN\)/python -m pytest", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_configuration_example_is_the_defaults():
    block = README[README.index("# the defaults ("):]
    block = block[: block.index("```")]
    assert AtftConfig.from_dict(yaml.safe_load(block)) == AtftConfig()


def test_every_documented_subcommand_exists():
    documented = set(re.findall(r"^atft ([a-z-]+)", README, re.M))
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)  # argparse keeps them here
    assert documented and documented <= known
