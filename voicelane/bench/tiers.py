"""Model tiers for the suites that speak: the simulated pair or the local llama-server.

`--backend sim` starts the demo's simulated fast and deep tiers (or near-instant ones for a
smoke run); `--backend llama` starts llama-server with the shipped small model, serving both
tiers over the OpenAI protocol, as `voicelane demo` does.
"""

from __future__ import annotations

import contextlib
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.procs import start_llama, start_sim_tiers
from voicelane.demo import SIM_DEEP, SIM_FAST, Tiers

# A smoke run checks the harness, not the latency model: its tiers answer almost at once.
SMOKE_FAST = ("--ttft-ms", "20", "--tokens-per-s", "400", "--parallel", "2")
SMOKE_DEEP = ("--ttft-ms", "40", "--tokens-per-s", "300", "--parallel", "1")


def start_tiers(ctx: SuiteContext, stack: contextlib.ExitStack) -> tuple[Tiers, dict[str, Any]]:
    """The tiers for `ctx.backend` and a description of them for the results."""
    if ctx.backend == "llama":
        llama = start_llama(stack, ctx.logs)
        description = {
            "backend": "llama-server (OpenAI protocol) serving both tiers",
            "model": llama.model,
            "extra_flags": list(llama.extra_flags),
            "default_flags_start_died_of": llama.first_attempt_signal,
        }
        return Tiers(llama.url, llama.url, "openai", llama.model, llama.model), description
    fast_flags, deep_flags = (SMOKE_FAST, SMOKE_DEEP) if ctx.smoke else (SIM_FAST, SIM_DEEP)
    tiers, _, _ = start_sim_tiers(stack, fast_flags, deep_flags, ctx.logs, "tiers")
    return tiers, {"backend": "voicelane sim", "fast_flags": list(fast_flags), "deep_flags": list(deep_flags)}
