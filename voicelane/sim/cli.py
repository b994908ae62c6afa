"""`voicelane sim`: placeholder until the simulator lands."""

from __future__ import annotations

from typing import Any


def add_parser(subparsers: Any) -> None:
    subparsers.add_parser("sim", help="Run the upstream simulator.")
