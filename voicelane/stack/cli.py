"""`voicelane stack`: the two model tiers on Ollama in the foreground, optionally with a sidecar in front."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stack",
        help="Run the fast and deep tiers on Ollama with the shipped small model (foreground).",
        description="Builds Ollama from its Go module and fetches the SmolLM2-135M model once (cached), then "
        "runs two Ollama servers on loopback with the sample lane's settings, imports and loads the model under "
        "one name per tier, and prints `ready fast=URL deep=URL`. Ctrl-C or SIGTERM stops everything it started.",
    )
    parser.add_argument("--fast-listen", default="127.0.0.1:11435", help="fast tier address (default %(default)s)")
    parser.add_argument("--deep-listen", default="127.0.0.1:11434", help="deep tier address (default %(default)s)")
    parser.add_argument("--sidecar", metavar="HOST:PORT", help="also start a sidecar in front of both tiers")
    parser.add_argument("--dir", type=Path, default=None, help="folder for logs and server homes (default: temporary)")
    parser.add_argument("--ollama", type=Path, default=None, help="an ollama binary to run instead of the cached build")
    parser.add_argument("--build", action="store_true", help="only build or fetch Ollama and the model, then exit")
    parser.set_defaults(handler=run)


def _loopback(address: str, flag: str) -> str:
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise SystemExit(f"voicelane stack: {flag} must be 127.0.0.1:PORT (got {address!r})")
    return f"127.0.0.1:{port}"


def run(args: argparse.Namespace) -> int:
    from voicelane.gobuild import BuildError
    from voicelane.stack.build import ensure_model, ensure_ollama
    from voicelane.stack.ollama import StackError, running_stack

    try:
        binary = args.ollama or ensure_ollama()
        gguf = ensure_model()
    except (BuildError, RuntimeError) as exc:
        print(f"voicelane stack: {exc}", file=sys.stderr)
        return 1
    if args.build:
        print(f"ollama: {binary}\nmodel: {gguf}")
        return 0
    fast_listen = _loopback(args.fast_listen, "--fast-listen")
    deep_listen = _loopback(args.deep_listen, "--deep-listen")
    sidecar_listen = _loopback(args.sidecar, "--sidecar") if args.sidecar else None
    folder = args.dir or Path(tempfile.mkdtemp(prefix="voicelane-stack-"))

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with contextlib.ExitStack() as started:
            stack = started.enter_context(
                running_stack(folder, fast_listen=fast_listen, deep_listen=deep_listen, binary=binary, gguf=gguf)
            )
            print(f"models: fast={stack.fast.model} deep={stack.deep.model}; logs in {folder}", file=sys.stderr)
            if sidecar_listen:
                _start_sidecar(started, stack, sidecar_listen, folder)
            print(stack.ready_line(), flush=True)
            signal.pause()
    except StackError as exc:
        print(f"voicelane stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _start_sidecar(started: contextlib.ExitStack, stack: Any, listen: str, folder: Path) -> None:
    import yaml

    from voicelane.demo import FEATURES, Tiers, sidecar_config
    from voicelane.processes import running, voicelane_argv

    tiers = Tiers(stack.fast.url, stack.deep.url, "ollama", stack.fast.model, stack.deep.model)
    config_file = folder / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(sidecar_config(tiers, enabled=set(FEATURES))), encoding="utf-8")
    started.enter_context(
        running(
            voicelane_argv("sidecar", "--config", str(config_file), "--listen", listen),
            ready_url=f"http://{listen}/readyz",
            log_dir=folder,
            name="sidecar",
            ready_timeout_s=60,
        )
    )
    print(f"sidecar: http://{listen} (config {config_file})", file=sys.stderr)
