"""The models the simulator pretends to have: names as Ollama resolves them, and their listing metadata."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DEFAULT_MODELS: tuple[str, ...] = ("llama3.2:1b", "llama3.1:8b")

_PARAMETERS = re.compile(r"(\d+(?:\.\d+)?)([bm])\b", re.IGNORECASE)


def canonical_name(name: str) -> str:
    """Ollama's resolution of a model name: a name without a tag means `:latest`."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    modified_at: float

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def parameter_size(self) -> str:
        match = _PARAMETERS.search(self.name.rsplit(":", 1)[-1]) or _PARAMETERS.search(self.name)
        return f"{match.group(1)}{match.group(2).upper()}" if match else "3.2B"

    @property
    def size(self) -> int:
        """Bytes of a Q4 file of that many parameters (about 0.6 byte each), as a listing shows."""
        match = _PARAMETERS.search(self.parameter_size)
        assert match is not None
        scale = 1e9 if match.group(2).lower() == "b" else 1e6
        return int(float(match.group(1)) * scale * 0.6) + 1_000_000

    @property
    def family(self) -> str:
        base = self.name.rsplit("/", 1)[-1].split(":", 1)[0]
        return re.sub(r"[\d.]+$", "", base) or base

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": "Q4_K_M",
        }


class ModelCatalog:
    """Known models by canonical name; pulling a model adds it."""

    def __init__(self, names: tuple[str, ...] | list[str], *, now: float) -> None:
        self._initial = tuple(names)
        self._models: dict[str, ModelInfo] = {}
        self.reset(now=now)

    def reset(self, *, now: float) -> None:
        self._models = {canonical_name(n): ModelInfo(canonical_name(n), now) for n in self._initial}

    def find(self, name: str) -> ModelInfo | None:
        return self._models.get(canonical_name(name))

    def add(self, name: str, *, now: float) -> ModelInfo:
        info = self._models.get(canonical_name(name)) or ModelInfo(canonical_name(name), now)
        self._models[info.name] = info
        return info

    def all(self) -> list[ModelInfo]:
        return list(self._models.values())
