"""`voicelane bench SUITE`: run a benchmark suite (or all of them) and write its JSON results."""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from voicelane.bench.context import BACKENDS, SIZES, SUITES, SuiteContext


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="Measure the lane against its reference and write JSON results.",
        description="Suites: "
        + "; ".join(f"{name}: {spec.summary}" for name, spec in SUITES.items())
        + ". `all` runs every suite in turn. Each measures this project and its reference in one run "
        "and reports ratios.",
    )
    parser.add_argument("suite", choices=(*SUITES, "all"), metavar="SUITE", help=f"{', '.join(SUITES)} or all")
    parser.add_argument("--size", choices=SIZES, default="full", help="smoke: a few requests (CI); full: the figures")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Model tiers: the simulator or the local Ollama stack (default: the suite's own).",
    )
    parser.add_argument("--out", type=Path, default=None, help="Results file (default reports/bench/SUITE-TIME.json).")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="Where started processes log (default beside --out)."
    )
    parser.set_defaults(handler=run)


def _backend_for(suite: str, requested: str | None, *, strict: bool) -> str:
    spec = SUITES[suite]
    if requested is None:
        return spec.default_backend
    if requested in spec.backends:
        return requested
    if strict:
        supported = ", ".join(spec.backends) or "none (it runs no model)"
        raise SystemExit(f"voicelane bench {suite}: --backend {requested} is not supported; supported: {supported}")
    return spec.default_backend


def run_suite(suite: str, *, size: str, backend: str, logs: Path, command: str) -> dict[str, Any]:
    """Run one suite and return its results document."""
    from voicelane.bench.envelope import CpuLedger, document, machine_info

    module = importlib.import_module(SUITES[suite].module)
    logs.mkdir(parents=True, exist_ok=True)
    ctx = SuiteContext(name=suite, size=size, backend=backend, logs=logs)
    print(f"==> bench {suite} (size {size}, backend {backend}); logs in {logs}", file=sys.stderr, flush=True)
    machine = machine_info()
    started_at = datetime.now().astimezone()
    ledger = CpuLedger()
    outcome = module.run(ctx)
    cpu = ledger.close()
    machine["load_average_at_end"] = machine_info()["load_average_1_5_15"]
    return document(
        suite=suite,
        size=size,
        backend=backend,
        command=command,
        started_at=started_at,
        finished_at=datetime.now().astimezone(),
        machine=machine,
        cpu=cpu,
        outcome=outcome,
    )


def _print_ratios(doc: dict[str, Any]) -> None:
    print(f"{doc['suite']} ({doc['size']}, {doc['backend']}, {doc['duration_s']:.0f} s):")
    for name, value in doc["ratios"].items():
        print(f"  {name:<58} {'—' if value is None else value}")


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process a suite started is stopped on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    from voicelane.bench.envelope import command_line, machine_info

    _stop_on_sigterm()

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or Path("reports") / "bench" / f"{args.suite}-{stamp}.json"
    logs: Path = args.log_dir or out.with_name(out.stem + "-logs")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = command_line()
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    backends = {name: _backend_for(name, args.backend, strict=args.suite != "all") for name in suites}
    documents = []
    try:
        for name in suites:
            doc = run_suite(name, size=args.size, backend=backends[name], logs=logs / name, command=command)
            documents.append(doc)
            _print_ratios(doc)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the benchmark started has been stopped", file=sys.stderr)
        return 130
    if args.suite == "all":
        result: dict[str, Any] = {
            "command": command,
            "machine": machine_info(),
            "suites": {doc["suite"]: doc for doc in documents},
        }
    else:
        result = documents[0]
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0
