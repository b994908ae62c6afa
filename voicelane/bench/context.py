"""What a suite is given to run with (size, backend, where to log) and the table of suites.

A suite is a module exposing `run(ctx: SuiteContext) -> SuiteOutcome`; the table says which
backends it supports, so the command line can refuse a combination before starting anything.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

SIZES = ("smoke", "full")
BACKENDS = ("sim", "ollama")


@dataclass(frozen=True)
class SuiteSpec:
    module: str
    backends: tuple[str, ...]
    default_backend: str
    summary: str


SUITES: dict[str, SuiteSpec] = {
    "overhead": SuiteSpec(
        "voicelane.bench.overhead", ("sim",), "sim", "latency, CPU and memory the sidecar adds to a model call"
    ),
    "isolation": SuiteSpec(
        "voicelane.bench.isolation", ("sim",), "sim", "chat TTFA alone vs under an email and burst flood"
    ),
    "coalescing": SuiteSpec(
        "voicelane.bench.coalescing", ("sim",), "sim", "100 identical requests: upstream and TTS calls, TTFA"
    ),
    "streaming": SuiteSpec(
        "voicelane.bench.streaming", ("ollama", "sim"), "ollama", "TTFA with sentence streaming vs full text"
    ),
    "operator": SuiteSpec(
        "voicelane.bench.operator_scale", (), "none", "200 VoiceLanes at once against a local control plane"
    ),
    "fleet": SuiteSpec(
        "voicelane.bench.fleet",
        ("sim", "ollama"),
        "sim",
        "four sidecars share one model server, straight and through the gate",
    ),
    "real": SuiteSpec(
        "voicelane.bench.real", ("ollama", "sim"), "ollama", "the demo workload per class against its TTFA targets"
    ),
}


@dataclass(frozen=True)
class SuiteContext:
    name: str
    size: str
    backend: str
    logs: Path

    @property
    def smoke(self) -> bool:
        return self.size == "smoke"

    def say(self, message: str) -> None:
        """Progress for the person watching; the results go to the JSON file."""
        print(f"    [{self.name}] {message}", file=sys.stderr, flush=True)
