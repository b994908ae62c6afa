"""The model server's own CPU and memory, read from its process tree, as a pressure source for the gate's guardian.

The gate runs beside Ollama in the tier pod, in a container of its own, so its cgroup says nothing
about the model server. With the pod's process namespace shared, the gate sees Ollama's processes
(the server and the runner it starts per model) and sums their CPU time and resident memory; the
limits come from Ollama's container spec through the downward API. Off a cluster the same source
watches a local `ollama serve` against limits given on the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from voicelane.core.guardian import PressureSample

ProcessFinder = Callable[[], "psutil.Process | None"]


def find_by_pid(pid: int) -> ProcessFinder:
    def find() -> psutil.Process | None:
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    return find


def find_by_command(word: str) -> ProcessFinder:
    """The oldest process whose command line has `word` as its first two words' program (`ollama serve`)."""

    def find() -> psutil.Process | None:
        matches = []
        for process in psutil.process_iter(["cmdline", "create_time"]):
            cmdline = process.info.get("cmdline") or []
            if len(cmdline) >= 2 and cmdline[0].rsplit("/", 1)[-1] == word and cmdline[1] == "serve":
                matches.append(process)
        return min(matches, key=lambda p: p.info["create_time"], default=None)

    return find


class ProcessTreePressure:
    """CPU (percent of `cpu_limit_cores`) and memory (percent of `memory_limit_bytes`) of a process and its children."""

    def __init__(
        self,
        find: ProcessFinder,
        *,
        cpu_limit_cores: float,
        memory_limit_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cpu_limit_cores <= 0 or memory_limit_bytes <= 0:
            raise ValueError("the model server's CPU and memory limits must be positive")
        self._find = find
        self.cpu_limit_cores = cpu_limit_cores
        self.memory_limit_bytes = memory_limit_bytes
        self._clock = clock
        self._last: tuple[float, float] | None = None  # (when, CPU seconds) at the previous sample

    def sample(self) -> PressureSample:
        root = self._find()
        if root is None:
            self._last = None
            return PressureSample(0.0, 0.0, origin="model-server-absent")
        cpu_s = 0.0
        rss = 0
        for process in [root, *_children(root)]:
            try:
                times = process.cpu_times()
                cpu_s += times.user + times.system
                rss += process.memory_info().rss
            except psutil.Error:  # a runner that exited between the listing and the read
                continue
        now = self._clock()
        cpu_percent = 0.0
        if self._last is not None and now > self._last[0]:
            used = max(0.0, cpu_s - self._last[1])
            cpu_percent = 100.0 * used / (now - self._last[0]) / self.cpu_limit_cores
        self._last = (now, cpu_s)
        return PressureSample(cpu_percent, 100.0 * rss / self.memory_limit_bytes, origin="model-server")


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []
