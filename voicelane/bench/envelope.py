"""The JSON document every suite writes: machine, command, timestamps, settings, figures, ratios.

It also accounts for the CPU of the whole machine during a run, split into what this
benchmark and the processes it started used and what everything else used, because a
shared machine's other processes move absolute figures (and ratios, a little).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

SCHEMA_VERSION = 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again: `voicelane bench …`."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["voicelane", *args])


def _busy_cpu_s() -> float:
    # Guest time is already inside user time on Linux, and steal is the hypervisor's, not ours.
    times = psutil.cpu_times()
    return float(sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq")))


def _own_cpu_s() -> float:
    # Children count once they have been waited for, which every process the suites start is.
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class CpuLedger:
    """Machine-wide busy CPU seconds during a run, and how much of it was ours."""

    started_busy: float = field(default_factory=_busy_cpu_s)
    started_own: float = field(default_factory=_own_cpu_s)
    started_wall: float = field(default_factory=time.monotonic)

    def close(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started_wall
        busy = _busy_cpu_s() - self.started_busy
        own = _own_cpu_s() - self.started_own
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 3),
            "machine_busy_cpu_s": round(busy, 3),
            "benchmark_cpu_s": round(own, 3),
            # Never negative: the two clocks are read a moment apart.
            "other_users_cpu_s": round(max(0.0, busy - own), 3),
            "machine_busy_percent": round(100.0 * busy / (wall * cores), 1) if wall > 0 else None,
        }


@dataclass
class SuiteOutcome:
    """What a suite returns: its settings, raw figures, the ratios against the reference, notes."""

    settings: dict[str, Any]
    results: dict[str, Any]
    ratios: dict[str, float | None]
    notes: list[str] = field(default_factory=list)


def document(
    *,
    suite: str,
    size: str,
    backend: str,
    command: str,
    started_at: datetime,
    finished_at: datetime,
    machine: dict[str, Any],
    cpu: dict[str, Any],
    outcome: SuiteOutcome,
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "size": size,
        "backend": backend,
        "command": command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "duration_s": round((finished_at - started_at).total_seconds(), 3),
        "machine": machine,
        "machine_cpu_during_run": cpu,
        "settings": outcome.settings,
        "ratios": outcome.ratios,
        "results": outcome.results,
        "notes": outcome.notes,
    }
