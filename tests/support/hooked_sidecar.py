"""The sidecar with the hooks its tests need: a pressure sample and a clock set over HTTP.

`POST /v1/test/pressure` sets the local pressure sample the guardian reads and may run
guardian checks with the clock moved on between them, so tests of admission under
pressure need neither real load nor real waiting. The shipped server has no such
route: tests add it through `build_app`'s extensions, in process (`hook_extensions()`) or
as a real process (`argv(...)`, which runs this file with the sidecar's own flags).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aiohttp import web

from voicelane.core.guardian import PressureSample
from voicelane.sidecar import cli
from voicelane.sidecar.edge import decode_json_object, read_body
from voicelane.sidecar.errors import ApiError
from voicelane.sidecar.pressure import InjectedPressureSource
from voicelane.sidecar.server import LANE_KEY, METRICS_KEY, Extensions

PRESSURE_PATH = "/v1/test/pressure"
# A request runs at most this many guardian checks, so one call cannot keep the sidecar busy.
MAX_CHECKS = 1000


class ManualOffsetClock:
    """Monotonic time plus an offset tests can advance, so 'held for 10 s' needs no real 10 s."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def hook_extensions() -> Extensions:
    """A pressure source and a clock the tests control, and the route that sets them."""
    source, clock = InjectedPressureSource(), ManualOffsetClock()

    async def inject_pressure(request: web.Request) -> web.Response:
        """Set the pressure sample; with `run_checks`, run that many checks `advance_s` apart."""
        lane = request.app[LANE_KEY]
        payload = decode_json_object(await read_body(request, lane.config.limits))
        try:
            sample = PressureSample(
                cpu_percent=float(payload["cpu_percent"]), memory_percent=float(payload["memory_percent"])
            )
            checks = int(payload.get("run_checks", 0))
            advance = float(payload.get("advance_s", 0.0))
        except (KeyError, TypeError, ValueError):
            raise ApiError(
                400, "invalid_field", "expected numeric 'cpu_percent' and 'memory_percent', 'run_checks', 'advance_s'"
            ) from None
        source.set(sample)
        results = []
        for _ in range(max(0, min(checks, MAX_CHECKS))):
            clock.advance(advance)
            result = lane.guardian.check()
            request.app[METRICS_KEY].guardian_checks.labels("failed" if result.failed else "ok").inc()
            results.append(result.failed)
        return web.json_response({"checks_failed": results, "guardian": lane.guardian.snapshot()})

    return Extensions(routes=(web.post(PRESSURE_PATH, inject_pressure),), local_pressure=source, clock=clock)


def argv(*flags: str) -> list[str]:
    """The command that runs the sidecar with these hooks and the given `voicelane sidecar` flags.

    `-P` keeps this file's folder off sys.path, as `voicelane_argv` does for the CLI.
    """
    return [sys.executable, "-P", str(Path(__file__).resolve()), *flags]


def main(flags: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hooked-sidecar")
    cli.add_parser(parser.add_subparsers())
    return cli.run(parser.parse_args(["sidecar", *flags]), extensions=hook_extensions())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
