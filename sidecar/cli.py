"""`voicelane sidecar`: flags for the everyday settings, layered over the YAML file and environment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicelane.sidecar.server import Extensions


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="Run the sidecar proxy (loopback API in front of the fast and deep model tiers).",
        description="Run the sidecar. Flags override the config file, which overrides built-in defaults; "
        "environment variables VOICELANE_<SECTION>__<KEY> sit between file and flags.",
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file (reloaded when it changes).")
    parser.add_argument("--listen", metavar="HOST:PORT", help="API address (default 127.0.0.1:8787).")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT", help="Separate /metrics address for scraping.")
    parser.add_argument("--fast-url", metavar="URL", help="Base URL of the fast tier.")
    parser.add_argument("--deep-url", metavar="URL", help="Base URL of the deep tier.")
    parser.add_argument("--fast-protocol", choices=("ollama", "openai"))
    parser.add_argument("--deep-protocol", choices=("ollama", "openai"))
    parser.add_argument("--fast-model", metavar="NAME")
    parser.add_argument("--deep-model", metavar="NAME")
    parser.add_argument("--tts", choices=("espeak", "openai"), help="Speech backend (default espeak, in-process).")
    parser.add_argument("--tts-url", metavar="URL", help="Base URL of an OpenAI-compatible speech server.")
    parser.add_argument("--passthrough", action="store_true", help="Skip the model: speak the text as given.")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Turn the flags that were given into a config layer (unset flags leave lower layers alone)."""
    layer: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = layer
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    put("server.listen", args.listen)
    put("server.metrics_listen", args.metrics_listen)
    put("upstreams.fast.url", args.fast_url)
    put("upstreams.deep.url", args.deep_url)
    put("upstreams.fast.protocol", args.fast_protocol)
    put("upstreams.deep.protocol", args.deep_protocol)
    put("upstreams.fast.model", args.fast_model)
    put("upstreams.deep.model", args.deep_model)
    put("tts.backend", args.tts)
    put("tts.url", args.tts_url)
    put("prompts.passthrough", True if args.passthrough else None)
    put("log_level", args.log_level)
    return layer


def run(args: argparse.Namespace, *, extensions: Extensions | None = None) -> int:
    """Load the configuration the flags and file describe and serve it; `extensions` as `build_app` takes them."""
    from voicelane.sidecar.config import ConfigError, load_config

    flags = flag_overrides(args)
    try:
        config = load_config(args.config, flags=flags)
    except ConfigError as exc:
        print(f"voicelane sidecar: {exc}", file=sys.stderr)
        return 2

    from voicelane.sidecar.server import serve

    return serve(config, config_path=args.config, flags=flags, extensions=extensions)
