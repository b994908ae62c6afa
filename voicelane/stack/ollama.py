"""Run the two model tiers on Ollama: start each server on loopback, import the shipped model, load it.

Each tier's server gets the environment the operator renders for the sample lane's tier (keep-alive,
parallel slots, queue length, context length, one loaded model), with the model store in the cache
and everything bound to 127.0.0.1. The model is imported offline from the GGUF file with a Modelfile
(`ollama create`), under one stable name per tier, and loaded before the stack counts as ready.
Cloud features are off, and no name the stack uses points at a registry, so nothing dials out.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelane.cache import cache_dir
from voicelane.processes import ManagedProcess, ProcessFailed

TIER_NAMES = ("fast", "deep")
DEFAULT_LISTEN = {"fast": "127.0.0.1:11435", "deep": "127.0.0.1:11434"}  # as in the original design
MODEL_NAMES = {"fast": "smollm2-fast:135m", "deep": "smollm2-deep:135m"}
SAMPLE_LANE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "voicelane.yaml"
LOAD_TIMEOUT_S = 180.0


class StackError(RuntimeError):
    """A model server did not start, import or load its model; the message carries its log."""


@dataclass(frozen=True)
class TierServer:
    """One running tier: where it answers and the model it serves."""

    tier: str
    url: str
    model: str
    process: ManagedProcess


def sample_lane_environment(tier: str) -> dict[str, str]:
    """The Ollama settings the operator renders for the sample lane's tier, minus the in-pod paths."""
    # Imported here: the operator's renderer is the one source of these settings, and the stack's
    # process code should not need it just to be imported.
    import yaml

    from voicelane.operator.api import parse_spec
    from voicelane.operator.render import model_server_environment

    if not SAMPLE_LANE.exists():
        raise StackError(f"the sample lane {SAMPLE_LANE} is missing; run from a checkout of the project")
    spec = parse_spec(yaml.safe_load(SAMPLE_LANE.read_text(encoding="utf-8"))["spec"])
    environment = model_server_environment(spec.tier(tier))  # type: ignore[arg-type]
    for in_pod in ("OLLAMA_HOST", "OLLAMA_MODELS", "HOME", "VOICELANE_MODEL"):
        environment.pop(in_pod, None)
    return environment


def server_environment(tier: str, listen: str, folder: Path, models: Path) -> dict[str, str]:
    base = {name: value for name, value in os.environ.items() if not name.startswith("OLLAMA_")}
    home = folder / f"home-{tier}"  # ollama writes its identity key under ~/.ollama
    home.mkdir(parents=True, exist_ok=True)
    return {
        **base,
        **sample_lane_environment(tier),
        "OLLAMA_HOST": listen,
        "OLLAMA_MODELS": str(models),
        "OLLAMA_NO_CLOUD": "1",
        "HOME": str(home),
    }


def _request(url: str, payload: dict[str, Any] | None = None, *, timeout_s: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read() or b"null")


def loaded_models(url: str) -> list[str]:
    return [entry["name"] for entry in _request(url + "/api/ps").get("models", [])]


def has_model(url: str, model: str) -> bool:
    return any(entry["name"] == model for entry in _request(url + "/api/tags").get("models", []))


def import_model(binary: Path, url: str, model: str, gguf: Path, folder: Path) -> None:
    """`ollama create` the model from the GGUF file: the CLI uploads the blob to the server, no network."""
    modelfile = folder / ("Modelfile." + "".join(c if c.isalnum() or c in "-." else "_" for c in model))
    modelfile.write_text(f"FROM {gguf}\n", encoding="utf-8")
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://"), "HOME": str(folder)}
    result = subprocess.run(
        [str(binary), "create", model, "-f", str(modelfile)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise StackError(f"ollama create {model} failed:\n{result.stdout}{result.stderr}")


def load_model(url: str, model: str, *, timeout_s: float = LOAD_TIMEOUT_S) -> float:
    """Load the model into memory (Ollama's documented preload: an empty prompt); returns seconds taken."""
    started = time.monotonic()
    _request(url + "/api/generate", {"model": model, "prompt": ""}, timeout_s=timeout_s)
    if model not in loaded_models(url):
        raise StackError(f"{model} answered the preload but /api/ps does not list it")
    return time.monotonic() - started


@contextlib.contextmanager
def running_tier(
    binary: Path, tier: str, listen: str, gguf: Path, folder: Path, *, models: Path | None = None
) -> Iterator[TierServer]:
    """One tier's `ollama serve`, its model imported and loaded; stopped on the way out."""
    models = models or cache_dir() / "ollama-models"
    models.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    url = f"http://{listen}"
    process = ManagedProcess(
        [str(binary), "serve"],
        folder / f"ollama-{tier}.log",
        env=server_environment(tier, listen, folder, models),
    ).start()
    try:
        try:
            process.wait_http(url + "/api/version", timeout_s=60)
        except ProcessFailed as exc:
            raise StackError(f"ollama serve for the {tier} tier on {listen} did not start: {exc}") from exc
        model = MODEL_NAMES[tier]
        if not has_model(url, model):
            import_model(binary, url, model, gguf, folder)
        try:
            load_model(url, model)
        except (OSError, urllib.error.URLError) as exc:
            raise StackError(f"{model} did not load on {url}: {exc}\n{process.log()[-3000:]}") from exc
        yield TierServer(tier, url, model, process)
    finally:
        process.stop()


@dataclass(frozen=True)
class Stack:
    fast: TierServer
    deep: TierServer

    def ready_line(self) -> str:
        return f"ready fast={self.fast.url} deep={self.deep.url}"


@contextlib.contextmanager
def running_stack(
    folder: Path,
    *,
    fast_listen: str = DEFAULT_LISTEN["fast"],
    deep_listen: str = DEFAULT_LISTEN["deep"],
    binary: Path | None = None,
    gguf: Path | None = None,
) -> Iterator[Stack]:
    """Both tiers up with their models loaded (Ollama and the model built or fetched first if need be)."""
    from voicelane.stack.build import ensure_model, ensure_ollama

    binary = binary or ensure_ollama()
    gguf = gguf or ensure_model()
    with (
        running_tier(binary, "fast", fast_listen, gguf, folder) as fast,
        running_tier(binary, "deep", deep_listen, gguf, folder) as deep,
    ):
        yield Stack(fast, deep)
