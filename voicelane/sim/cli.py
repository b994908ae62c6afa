"""`voicelane sim`: run the Ollama/OpenAI upstream simulator as its own process."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voicelane.sim.catalog import DEFAULT_MODELS
from voicelane.sim.replies import DEFAULT_FIXED_REPLY


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port_text)


def _positive(kind: type[float] | type[int], *, allow_zero: bool) -> Any:
    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}, got {text}")
        return value

    return convert


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="Run the upstream simulator (Ollama and OpenAI-compatible APIs with a latency model).",
        description="A model server stand-in for tests and benchmarks: Ollama's API "
        "(/api/chat, /api/generate, /api/tags, /api/ps, /api/pull, /api/version) and OpenAI's "
        "(/v1/chat/completions, /v1/models, /v1/audio/speech), with load time, time to first token, "
        "token rate, parallel slots and a queue. "
        "Control API: GET /sim/stats, POST /sim/reset, POST|DELETE /sim/faults, POST /sim/config.",
    )
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 11434), metavar="HOST:PORT")
    parser.add_argument("--protocol", choices=("ollama", "openai", "both"), default="both")
    parser.add_argument("--ttft-ms", type=_positive(float, allow_zero=True), default=150.0, metavar="N")
    parser.add_argument("--tokens-per-s", type=_positive(float, allow_zero=False), default=40.0, metavar="N")
    parser.add_argument(
        "--load-ms", type=_positive(float, allow_zero=True), default=0.0, metavar="N", help="Model load time."
    )
    parser.add_argument(
        "--parallel",
        type=_positive(int, allow_zero=False),
        default=1,
        metavar="N",
        help="Like OLLAMA_NUM_PARALLEL.",
    )
    parser.add_argument(
        "--max-queue",
        type=_positive(int, allow_zero=True),
        default=512,
        metavar="N",
        help="Like OLLAMA_MAX_QUEUE: waiting requests beyond the parallel slots; more get a 503.",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="A model it lists and serves (repeatable). Given at least once, other names get a 404; "
        f"without it, {', '.join(DEFAULT_MODELS)} are listed and any name is served.",
    )
    parser.add_argument("--reply", choices=("echo", "fixed"), default="echo", help="Echo the last user message.")
    parser.add_argument("--reply-text", default=DEFAULT_FIXED_REPLY, help="The reply when --reply fixed.")
    parser.add_argument("--tts-first-byte-ms", type=_positive(float, allow_zero=True), default=50.0, metavar="N")
    parser.add_argument("--api-key", help="Require `Authorization: Bearer KEY` on the OpenAI endpoints.")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from voicelane.sim.server import serve
    from voicelane.sim.state import SimSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    settings = SimSettings(
        host=host,
        port=port,
        protocol=args.protocol,
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        load_ms=args.load_ms,
        parallel=args.parallel,
        max_queue=args.max_queue,
        models=tuple(args.models) if args.models else DEFAULT_MODELS,
        strict_models=bool(args.models),
        reply=args.reply,
        reply_text=args.reply_text,
        tts_first_byte_ms=args.tts_first_byte_ms,
        api_key=args.api_key,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"voicelane sim: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
