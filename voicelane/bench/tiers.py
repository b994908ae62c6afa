"""Model tiers for the suites that speak: the simulated pair or the local Ollama stack.

`--backend sim` starts the demo's simulated fast and deep tiers (or near-instant ones for a
smoke run); `--backend ollama` starts the fast and deep Ollama servers of `voicelane stack`
with the shipped small model and the sample lane's settings, as `voicelane demo` does.
"""

from __future__ import annotations

import contextlib
from typing import Any

from voicelane.bench.context import SuiteContext
from voicelane.bench.procs import start_sim_tiers
from voicelane.demo import SIM_DEEP, SIM_FAST, Tiers, ollama_tiers
from voicelane.processes import free_port

# A smoke run checks the harness, not the latency model: its tiers answer almost at once.
SMOKE_FAST = ("--ttft-ms", "20", "--tokens-per-s", "400", "--parallel", "2")
SMOKE_DEEP = ("--ttft-ms", "40", "--tokens-per-s", "300", "--parallel", "1")


def start_tiers(ctx: SuiteContext, stack: contextlib.ExitStack) -> tuple[Tiers, dict[str, Any]]:
    """The tiers for `ctx.backend` and a description of them for the results."""
    if ctx.backend == "ollama":
        from voicelane.stack.ollama import running_stack, sample_lane_environment

        ollama = stack.enter_context(
            running_stack(
                ctx.logs / "ollama",
                fast_listen=f"127.0.0.1:{free_port()}",
                deep_listen=f"127.0.0.1:{free_port()}",
            )
        )
        description = {
            "backend": "Ollama (its own protocol), one server per tier, as `voicelane stack` runs them",
            "models": {"fast": ollama.fast.model, "deep": ollama.deep.model},
            "server_settings": {tier: sample_lane_environment(tier) for tier in ("fast", "deep")},
        }
        return ollama_tiers(ollama, sample_lane_environment), description
    fast_flags, deep_flags = (SMOKE_FAST, SMOKE_DEEP) if ctx.smoke else (SIM_FAST, SIM_DEEP)
    tiers, _, _ = start_sim_tiers(stack, fast_flags, deep_flags, ctx.logs, "tiers")
    return tiers, {"backend": "voicelane sim", "fast_flags": list(fast_flags), "deep_flags": list(deep_flags)}
