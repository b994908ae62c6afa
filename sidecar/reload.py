"""Hot reload of the configuration file (a mounted ConfigMap) without dropping in-flight requests.

The file is polled by content rather than watched with inotify: kubelet updates a
ConfigMap volume by swapping a `..data` symlink, which inotify watches on the file
itself miss, while a content hash sees every change however it was made. SIGHUP
re-reads it at once. A version that cannot be loaded, for whatever reason (invalid
settings, broken YAML, bytes that are not UTF-8), is rejected, logged and counted, and
the watcher carries on with the running configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicelane.sidecar.config import ConfigError, SidecarConfig, load_config
from voicelane.sidecar.metrics import SidecarMetrics

log = logging.getLogger("voicelane.sidecar.reload")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls `on_change(new_config)` when the file's content changes and the new content is valid."""

    def __init__(
        self,
        path: Path,
        flags: dict[str, Any],
        *,
        on_change: Callable[[SidecarConfig], None],
        metrics: SidecarMetrics,
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.flags = flags
        self.on_change = on_change
        self.metrics = metrics
        self.interval_s = interval_s
        self._digest = _digest(path)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voicelane-config-watch")

    async def stop(self) -> None:
        """Stop watching; never raises, so that shutting down never depends on the watcher."""
        self._stopped = True  # a SIGHUP during shutdown reloads nothing
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the configuration watcher had failed")

    def poll(self, *, trigger: str = "") -> bool | None:
        """Check once: True when a new config was applied, False when rejected, None when unchanged.

        `trigger` (e.g. "SIGHUP: ") begins the log line of the outcome.
        """
        digest = _digest(self.path)
        if digest is None or digest == self._digest:
            return None
        self._digest = digest
        try:
            config = load_config(self.path, flags=self.flags)
        except Exception as exc:
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("%sconfiguration change rejected, keeping the running one: %s", trigger, _reason(self.path, exc))
            return False
        self.on_change(config)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("%sconfiguration reloaded from %s", trigger, self.path)
        return True

    def reload_now(self, *, reason: str) -> bool | None:
        """Re-read the file at once (on SIGHUP, say): as `poll`, with one log line for any outcome."""
        trigger = f"{reason}: "
        if self._stopped:
            log.info("%sshutting down; nothing is reloaded", trigger)
            return None
        if _digest(self.path) is None:
            log.warning("%scannot read %s; keeping the running configuration", trigger, self.path)
            return None
        result = self.poll(trigger=trigger)
        if result is None:
            log.info("%s%s is unchanged; nothing to reload", trigger, self.path)
        return result

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.poll()
            except Exception:
                # A fault in applying a valid file is the sidecar's own: logged in full, and the next
                # version is still watched for.
                log.exception("applying the configuration from %s failed", self.path)


def _reason(path: Path, exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r})"
    return f"{path}: cannot be loaded: {type(exc).__name__}: {exc}"
