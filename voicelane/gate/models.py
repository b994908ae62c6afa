"""What the model server has loaded, from Ollama's `/api/ps`: the gate's readiness and its model metrics.

Ollama exports no metrics, and its `/api/version` answers while no model is loaded; `/api/ps`
lists the loaded models with their expiry, which is what readiness and the dashboards need.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger("voicelane.gate")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size_bytes: int
    expires_in_s: float | None  # None: kept loaded for ever (keep_alive < 0)


class LoadedModels:
    """The last `/api/ps` answer, refreshed by the gate; ready once `model` (or any, if unset) is loaded."""

    def __init__(self, upstream: str, model: str | None) -> None:
        self.upstream = upstream
        self.model = model
        self.loaded: tuple[LoadedModel, ...] = ()
        self.reachable = False

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self.upstream + "/api/ps", timeout=aiohttp.ClientTimeout(total=5)) as response:
                data = await response.json(content_type=None) if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            logger.debug("The model server's /api/ps failed: %s", exc)
            data = None
        self.reachable = isinstance(data, dict)
        models = data.get("models") if isinstance(data, dict) else None
        now = dt.datetime.now(dt.UTC)
        self.loaded = tuple(_loaded(entry, now) for entry in models or () if isinstance(entry, dict))

    def ready(self) -> tuple[bool, str]:
        if not self.reachable:
            return False, "the model server does not answer"
        names = {model.name for model in self.loaded}
        if self.model is None:
            return (True, "a model is loaded") if names else (False, "no model is loaded yet")
        if self.model in names or f"{self.model}:latest" in names:
            return True, f"{self.model} is loaded"
        return False, f"{self.model} is not loaded yet"


def _loaded(entry: dict[str, object], now: dt.datetime) -> LoadedModel:
    expires_in: float | None = None
    raw = entry.get("expires_at")
    if isinstance(raw, str):
        try:
            expires = dt.datetime.fromisoformat(raw)
        except ValueError:
            expires = None
        # Ollama reports a model kept for ever with an expiry centuries away.
        if expires is not None and expires.year < 2200:
            expires_in = max(0.0, (expires - now).total_seconds())
    size = entry.get("size")
    return LoadedModel(
        str(entry.get("name") or entry.get("model") or ""), size if isinstance(size, int) else 0, expires_in
    )
