"""Start project commands as real processes on loopback and stop them cleanly.

Integration tests, the demo and the benchmarks all run the simulator, the sidecar
and the operator as separate processes over real HTTP; this module is the one
place that knows how to start one, wait until it answers, and end it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessFailed(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    """A child process with its combined output captured to a log file."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_http(self, url: str, timeout_s: float = 30.0) -> None:
        """Block until `url` answers with any HTTP status below 500, or fail with the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProcessFailed(f"{self.argv!r} exited early:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{url} did not answer within {timeout_s} s:\n{self.log()[-4000:]}")

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crashed or OOM-killed process looks like."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode


def voicelane_argv(*args: str) -> list[str]:
    """Run the CLI with the interpreter running us, so tests use the installed package.

    `-P` keeps the working directory off sys.path: started from the repository root,
    the folder `operator/` would otherwise shadow the standard library's `operator`.
    """
    return [sys.executable, "-P", "-m", "voicelane", *args]


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    ready_url: str | None = None,
    log_dir: Path | None = None,
    name: str = "process",
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 30.0,
) -> Iterator[ManagedProcess]:
    """Start `argv`, wait for `ready_url`, yield, and always stop it afterwards."""
    directory = log_dir or Path(tempfile.mkdtemp(prefix="voicelane-"))
    directory.mkdir(parents=True, exist_ok=True)
    merged_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = ManagedProcess(list(argv), directory / f"{name}.log", env=merged_env).start()
    try:
        if ready_url is not None:
            process.wait_http(ready_url, timeout_s=ready_timeout_s)
        yield process
    finally:
        process.stop()
