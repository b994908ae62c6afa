"""Hot reload of the configuration file (a mounted ConfigMap) without dropping in-flight requests.

The file is polled by content rather than watched with inotify: kubelet updates a
ConfigMap volume by swapping a `..data` symlink, which inotify watches on the file
itself miss, while a content hash sees every change however it was made.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voicelane-config-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poll(self) -> bool | None:
        """Check once: True when a new config was applied, False when rejected, None when unchanged."""
        digest = _digest(self.path)
        if digest is None or digest == self._digest:
            return None
        self._digest = digest
        try:
            config = load_config(self.path, flags=self.flags)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("configuration change rejected, keeping the running one: %s", exc)
            return False
        self.on_change(config)
        self.metrics.config_reloads.labels("applied").inc()
        log.info("configuration reloaded from %s", self.path)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.poll()
