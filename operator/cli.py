"""Subcommands of the operator: `voicelane operator`, `voicelane render`, `voicelane crd`."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    operator = subparsers.add_parser("operator", help="Run the VoiceLane operator (kopf).")
    operator.set_defaults(handler=_not_ready)
    render = subparsers.add_parser("render", help="Print the objects the operator would apply for a VoiceLane.")
    render.set_defaults(handler=_not_ready)


def _not_ready(args: argparse.Namespace) -> int:
    raise SystemExit(f"voicelane {args.command}: not available in this build")
