"""The Kubernetes API emulator as the `operator` suite runs it: its request history kept short.

`python -P -m voicelane.bench.emulator --listen HOST:PORT --kubeconfig-out PATH [--history N]`

The emulator (voicelane.testing.kube_emulator) builds on kmock, which keeps every request
it served so tests can assert on them, and matches each new request against its reactions
by scanning that history: the cost of one request grows with the number served before it
(the emulator trims the history to 2,000 once it passes 4,000). A suite that sends tens of
thousands of requests would then measure that scan instead of the operator, so this launcher
trims the history to the last N requests after every request. Matching needs only the
request being dispatched, which is always the newest, so the API behaves the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_HISTORY = 16


def _lean_emulator_class(history: int) -> Any:
    from voicelane.testing.kube_emulator import KubeEmulator

    class LeanKubeEmulator(KubeEmulator):
        async def __call__(self, raw_request: Any) -> Any:
            try:
                return await super().__call__(raw_request)
            finally:
                # Trimmed in batches: one slice per `history` requests, not one per request.
                if len(self._requests) > 2 * history:
                    del self._requests[:-history]
                for reaction in self._payloads:
                    if len(reaction._requests) > 2 * history:
                        del reaction._requests[:-history]

    return LeanKubeEmulator


async def serve(host: str, port: int, kubeconfig_out: Path, history: int) -> None:
    import kmock

    from voicelane.testing.kube_emulator import write_kubeconfig

    emulator = _lean_emulator_class(history)()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        write_kubeconfig(kubeconfig_out, f"http://{host}:{server.port}")
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicelane.bench.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--kubeconfig-out", required=True, type=Path)
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="requests kept (default 16)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or args.history < 1:
        parser.error("expected --listen HOST:PORT and --history >= 1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port), args.kubeconfig_out, args.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
