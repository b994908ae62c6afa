"""The `voicelane` command: one entry point whose subcommands live beside their features.

Each feature module exposes `add_parser(subparsers)`, which registers its subcommand
and sets `handler` to a function taking the parsed arguments and returning an exit
code. Heavy imports (aiohttp, kopf) happen inside the handlers, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from voicelane import __version__

# Subcommand modules, in the order `voicelane --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "voicelane.sidecar.cli",
    "voicelane.sim.cli",
    "voicelane.operator.cli",
    "voicelane.operator.inject_command",
    "voicelane.demo",
    "voicelane.bench.cli",
    "voicelane.stack.cli",
    "voicelane.cluster.cli",
    "voicelane.gate.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicelane", description="Low-latency voice lane for self-hosted LLMs.")
    parser.add_argument("--version", action="version", version=f"voicelane {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`voicelane render ... | head`): quiet, like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
