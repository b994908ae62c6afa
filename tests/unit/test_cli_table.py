"""The README's table of commands is the CLI's own: every subcommand, with the help its parser gives."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from voicelane.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_subcommand_is_in_the_readme_with_its_help() -> None:
    [subcommands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    expected = {choice.dest: choice.help for choice in subcommands._choices_actions}
    section = README.read_text(encoding="utf-8").split("### Commands", 1)[1].split("\n### ", 1)[0]
    documented = dict(re.findall(r"^\| `voicelane ([a-z]+)` \| (.+) \|$", section, flags=re.MULTILINE))
    assert len(expected) >= 10  # the parser was read: an empty comparison must not pass
    assert documented == expected
