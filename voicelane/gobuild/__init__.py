"""Build Go programs from their modules, once per pinned version: the local control plane and Ollama.

Each component has a small build module under `modules/` that pins one release (and, for Kubernetes,
every `k8s.io/*` staging module to the matching `v0.x` by `replace` lines: the release's own go.mod
points them at local paths a dependent module cannot use). A cgo component may need C headers its
release's module zip leaves out (Go drops `vendor/` folders from module zips); those come from other
Go modules the build module pins, so the go command stays the only download source. The binaries land in
`~/.cache/voicelane/go/<component>-<version>/` and are rebuilt only when the pinned version (or the
build module's go.sum) changes. Only the `go` command and its module proxy are used, with two compile
jobs so the Kubernetes build fits in memory; `go build -v` names each package it compiles, which
drives a progress line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from voicelane.cache import cache_dir

GOBUILD = Path(__file__).with_name("modules")
STAMP = "voicelane-build.json"
BUILD_JOBS = "2"


class BuildError(RuntimeError):
    """A Go build failed; the message carries the go command's own error output."""


@dataclasses.dataclass(frozen=True)
class Headers:
    """C headers taken from a pinned Go module and offered to cgo as `<include>/<file>`."""

    include: str  # the folder name the C sources include them under, e.g. "nlohmann"
    module: str  # a module the build module requires, e.g. github.com/nlohmann/json
    path: str = ""  # the folder inside that module that holds the headers
    suffixes: tuple[str, ...] = (".h", ".hpp")


@dataclasses.dataclass(frozen=True)
class Component:
    """One build module and the programs built from it."""

    name: str  # the folder under gobuild/
    module: str  # the pinned module whose version keys the cache
    programs: dict[str, str]  # binary name -> package path
    ldflags: Callable[[str], str] = lambda version: "-s -w"
    extra_files: tuple[str, ...] = ()  # files copied from the pinned module into the cache folder
    cgo: bool = False
    headers: tuple[Headers, ...] = ()
    cflags: str = ""  # added to CGO_CFLAGS and CGO_CXXFLAGS (e.g. the CPU features C code may use)

    @property
    def build_dir(self) -> Path:
        return GOBUILD / self.name

    def version(self, module: str | None = None) -> str:
        """The version go.mod pins for the component's module (or for another module it requires)."""
        module = module or self.module
        text = (self.build_dir / "go.mod").read_text(encoding="utf-8")
        found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
        if not found:
            raise BuildError(f"{self.build_dir / 'go.mod'} does not require {module}")
        return found.group(1)

    def key(self) -> str:
        # The C flags change the binary as much as a pin does; they join the key only when set, so the
        # components without any keep the folders they were cached in.
        keyed = (self.build_dir / "go.sum").read_bytes() + (f"\ncflags {self.cflags}".encode() if self.cflags else b"")
        digest = hashlib.sha256(keyed).hexdigest()[:8]
        return f"{self.name}-{self.version()}-{digest}"

    def output_dir(self) -> Path:
        return cache_dir() / "go" / self.key()

    def binary(self, program: str) -> Path:
        return self.output_dir() / program


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    # The machine's own Go: a newer toolchain named by a module must not be fetched behind our back.
    env.setdefault("GOTOOLCHAIN", "local")
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-buildvcs=false", "-mod=readonly"]))
    return env


def is_built(component: Component) -> bool:
    stamp = component.output_dir() / STAMP
    if not stamp.exists():
        return False
    return all(component.binary(program).exists() for program in component.programs)


def ensure_built(component: Component, *, out: TextIO = sys.stderr) -> Path:
    """The folder with the component's binaries, building them first if the cache lacks them."""
    if is_built(component):
        return component.output_dir()
    go = shutil.which("go")
    if go is None:
        raise BuildError("the go command is not on PATH (Go 1.24 or newer is needed to build the control plane)")
    target = component.output_dir()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    version = component.version()
    started = time.monotonic()
    env = go_env()
    if component.cgo:
        env["CGO_ENABLED"] = "1"
    if component.cflags:
        for name in ("CGO_CFLAGS", "CGO_CXXFLAGS"):
            env[name] = " ".join(filter(None, [env.get(name, "-O2 -g"), component.cflags]))
    if component.headers:
        include = _gather_headers(go, component, partial / "include")
        env["CGO_CPPFLAGS"] = " ".join(filter(None, [env.get("CGO_CPPFLAGS", ""), f"-I{include}"]))
    total = _count_packages(go, component, env)
    argv = [
        go,
        "build",
        "-v",
        "-p",
        BUILD_JOBS,
        "-trimpath",
        "-ldflags",
        component.ldflags(version),
        "-o",
        str(partial) + os.sep,
        *component.programs.values(),
    ]
    _run_with_progress(argv, component, total, env=env, out=out)
    for relative in component.extra_files:
        source = _module_dir(go, component) / relative
        shutil.copyfile(source, partial / Path(relative).name)
    # `go build -o DIR/` names a binary after its package's last element; a major-version suffix
    # (go.etcd.io/etcd/server/v3) gives the element before it.
    for program, package in component.programs.items():
        built = partial / _default_binary_name(package)
        if built.name != program:
            built.rename(partial / program)
    seconds = time.monotonic() - started
    (partial / STAMP).write_text(
        json.dumps({"module": component.module, "version": version, "build_seconds": round(seconds, 1)}) + "\n",
        encoding="utf-8",
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    print(f"==> built {component.name} {version} in {seconds:.0f} s → {target}", file=out, flush=True)
    return target


def _default_binary_name(package: str) -> str:
    parts = package.split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _count_packages(go: str, component: Component, env: dict[str, str]) -> int:
    """How many packages the build compiles, for the progress line (0 if go list fails)."""
    result = subprocess.run(
        [go, "list", "-deps", *component.programs.values()],
        cwd=component.build_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return len(result.stdout.split()) if result.returncode == 0 else 0


def _module_dir(go: str, component: Component) -> Path:
    result = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", component.module],
        cwd=component.build_dir,
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(result.stdout.strip())


def _gather_headers(go: str, component: Component, include: Path) -> Path:
    """Copy each header set out of its module (downloaded by the go command) into one include folder."""
    for headers in component.headers:
        pinned = f"{headers.module}@{component.version(headers.module)}"
        result = subprocess.run(
            [go, "mod", "download", "-json", pinned],
            cwd=component.build_dir,
            env=go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"go mod download {pinned} failed:\n{result.stdout}{result.stderr}")
        source = Path(json.loads(result.stdout)["Dir"]) / headers.path
        target = include / headers.include
        target.mkdir(parents=True, exist_ok=True)
        copied = [f for f in source.iterdir() if f.suffix in headers.suffixes]
        if not copied:
            raise BuildError(f"{pinned} has no {'/'.join(headers.suffixes)} headers in {headers.path or '/'}")
        for header in copied:
            shutil.copyfile(header, target / header.name)
    return include


def _run_with_progress(argv: list[str], component: Component, total: int, *, env: dict[str, str], out: TextIO) -> None:
    """Run `go build -v`, turning the package names it prints into a progress line; raise with its errors."""
    label = f"{component.name} {component.version()}"
    print(f"==> building {label} ({', '.join(component.programs)}) with {BUILD_JOBS} jobs", file=out, flush=True)
    process = subprocess.Popen(
        argv,
        cwd=component.build_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    tty = out.isatty()
    done = 0
    errors: list[str] = []
    last_line = 0.0
    for line in process.stdout:
        line = line.rstrip()
        # `go build -v` prints bare import paths; anything else (with spaces or a colon) is a message.
        if line and " " not in line and ":" not in line:
            done += 1
        elif line:
            errors.append(line)
            continue
        now = time.monotonic()
        if tty or now - last_line >= 15:
            last_line = now
            share = f"{done}/{total}" if total else str(done)
            end = "\r" if tty else "\n"
            print(
                f"    {label}: {share} packages compiled, last {line}"[:160].ljust(100 if tty else 0), end=end, file=out
            )
            out.flush()
    code = process.wait()
    if tty:
        print(file=out)
    if code != 0:
        detail = "\n".join(errors[-40:]) or f"exit code {code}"
        raise BuildError(f"go build of {label} failed:\n{detail}")
