"""`voicelane gate`: run the model-side gate in front of one Ollama server (foreground)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any

from voicelane.core.gate_headers import DEFAULT_PRIORITY, PRIORITIES

if TYPE_CHECKING:
    from voicelane.gate.server import Gate


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gate",
        help="Queue every app pod's model calls by priority in front of one Ollama server (foreground).",
        description="An Ollama endpoint in front of one model server: model calls wait for one of the server's "
        "parallel slots in one priority queue for every caller (priority, class, deadline and key from the "
        f"sidecars' X-Voicelane-* headers; priority {DEFAULT_PRIORITY} without them), identical calls share one "
        "model call, and a guardian watching the server's own CPU and memory refuses work while it is overloaded. "
        "Other Ollama endpoints pass through. /readyz answers once the model is loaded; /metrics has the queue.",
    )
    parser.add_argument("--listen", default="127.0.0.1:11500", help="address to serve on (default %(default)s)")
    parser.add_argument(
        "--metrics-listen",
        help="also serve /metrics, /healthz and /readyz, and nothing else, on this address (default: only on --listen)",
    )
    parser.add_argument("--upstream", default="http://127.0.0.1:11434", help="the Ollama server (default %(default)s)")
    parser.add_argument(
        "--slots", type=int, default=1, help="the server's parallel slots, OLLAMA_NUM_PARALLEL (default 1)"
    )
    parser.add_argument(
        "--reserve-for-chats",
        type=int,
        default=1,
        help="slots only priority-0 calls may take, never the last one (default 1: with 2+ slots a chat never "
        "waits behind longer work)",
    )
    parser.add_argument("--model", help="readiness waits until the server has this model loaded (default: any)")
    parser.add_argument(
        "--max-waiting",
        default="0=32,1=16,2=8",
        help="waiting room per priority, PRIORITY=COUNT,... (default %(default)s)",
    )
    parser.add_argument("--coalesce-window", type=float, default=2.0, help="seconds a finished call is shared (2)")
    watch = parser.add_argument_group("guardian: the model server's own CPU and memory")
    watch.add_argument("--server-pid", type=int, help="the model server's process (default: the oldest `ollama serve`)")
    watch.add_argument("--cpu-limit", help="the server's CPU limit, e.g. 4 or 3500m; without it no guardian")
    watch.add_argument("--memory-limit", help="the server's memory limit, e.g. 8Gi; without it no guardian")
    watch.add_argument(
        "--sustain", type=float, default=10.0, help="seconds both must stay high for a failed check (10)"
    )
    watch.add_argument("--check-interval", type=float, default=1.0, help="seconds between pressure samples (1)")
    parser.set_defaults(handler=run)


def waiting_room(text: str) -> dict[int, int]:
    """`0=32,1=16,2=8` as {priority: places}; SystemExit naming the flag when malformed."""
    room: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        level, sep, count = part.partition("=")
        if not sep or level.strip() not in {str(p) for p in PRIORITIES} or not count.strip().isascii():
            raise SystemExit(f"voicelane gate: --max-waiting wants PRIORITY=COUNT with priorities 0-2, got {part!r}")
        try:
            room[int(level)] = int(count)
        except ValueError:
            raise SystemExit(f"voicelane gate: --max-waiting count must be a whole number, got {part!r}") from None
        if room[int(level)] < 0:
            raise SystemExit(f"voicelane gate: --max-waiting count must not be negative, got {part!r}")
    return room


def run(args: argparse.Namespace) -> int:
    from kubernetes.utils.quantity import parse_quantity

    from voicelane.gate.pressure import ProcessTreePressure, find_by_command, find_by_pid
    from voicelane.gate.server import Gate, GateSettings
    from voicelane.sidecar.config import GuardianConfig

    if args.slots < 1:
        raise SystemExit("voicelane gate: --slots must be at least 1")
    if args.reserve_for_chats < 0:
        raise SystemExit("voicelane gate: --reserve-for-chats must not be negative")
    room = waiting_room(args.max_waiting)
    pressure = None
    guardian = GuardianConfig(enabled=False)
    if (args.cpu_limit is None) != (args.memory_limit is None):
        raise SystemExit("voicelane gate: --cpu-limit and --memory-limit go together")
    if args.cpu_limit is not None:
        find = find_by_pid(args.server_pid) if args.server_pid else find_by_command("ollama")
        try:
            cpu, memory = float(parse_quantity(args.cpu_limit)), int(parse_quantity(args.memory_limit))
            pressure = ProcessTreePressure(find, cpu_limit_cores=cpu, memory_limit_bytes=memory)
        except ValueError as exc:
            raise SystemExit(f"voicelane gate: --cpu-limit/--memory-limit: {exc}") from None
        guardian = GuardianConfig(sources=("local",), sustain_s=args.sustain, sample_interval_s=args.check_interval)
    settings = GateSettings(
        upstream=args.upstream.rstrip("/"),
        slots=args.slots,
        reserved_for_priority_0=args.reserve_for_chats,
        max_waiting=sum(room.values()) or 1,
        max_waiting_per_priority=room,
        coalesce_window_s=args.coalesce_window,
        model=args.model,
        guardian=guardian,
    )
    gate = Gate(settings, pressure=pressure)
    listen = _address(args.listen, "--listen")
    metrics_listen = _address(args.metrics_listen, "--metrics-listen") if args.metrics_listen else None
    asyncio.run(_serve(gate, listen, metrics_listen))
    return 0


def _address(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"voicelane gate: {flag} wants HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(gate: Gate, listen: tuple[str, int], metrics_listen: tuple[str, int] | None) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP (there is nothing to re-read) is ignored rather than fatal."""
    from aiohttp import web

    from voicelane.sidecar.edge import ApiAppRunner

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    # The sidecar's runner: requests its HTTP parser refuses get a JSON answer and one log line, not a
    # traceback. Handler cancellation: a caller that hangs up leaves the queue at once, not when its
    # next byte fails to send.
    host, port = listen
    runner = ApiAppRunner(gate.app(), access_log=None, handler_cancellation=True, shutdown_timeout=5.0)
    metrics_runner = ApiAppRunner(gate.metrics_app(), access_log=None) if metrics_listen else None
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        if metrics_runner is not None and metrics_listen is not None:  # both or neither
            await metrics_runner.setup()
            await web.TCPSite(metrics_runner, *metrics_listen).start()
            print(f"gate metrics on http://{metrics_listen[0]}:{metrics_listen[1]}/metrics", flush=True)
        print(f"gate listening on http://{host}:{port} in front of {gate.settings.upstream}", flush=True)
        await stop.wait()
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
