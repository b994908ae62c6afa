"""`voicelane demo`: the fast lane against its baseline, measured on this machine.

It starts the model tiers (two local Ollama servers with the shipped small model, the
bundled simulator, or URLs you give), then for each variant — the full lane and the
baseline with the lane's features off — a sidecar with embedded espeak speech, replays
the same mixed workload, and prints the before/after TTFA table, what the guardian,
queue, single-flight and cache did, and where it wrote its report. Every process it
started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from voicelane.processes import free_port, running, voicelane_argv
from voicelane.workload import ReplayProgress, mixed_workload, replay, summarize

FEATURES = ("priorities", "routing", "coalescing", "cache", "streaming")

# Simulated tiers: a small model answers sooner and faster than a large one on the same CPU.
SIM_FAST = ("--ttft-ms", "250", "--tokens-per-s", "30", "--parallel", "2")
SIM_DEEP = ("--ttft-ms", "900", "--tokens-per-s", "15", "--parallel", "1")


def parallel_of(sim_flags: Sequence[str]) -> int | None:
    """The `--parallel` a simulator was started with: the requests it serves at once."""
    flags = list(sim_flags)
    return int(flags[flags.index("--parallel") + 1]) if "--parallel" in flags else None


@dataclass(frozen=True)
class Tiers:
    fast_url: str
    deep_url: str
    protocol: str
    fast_model: str
    deep_model: str
    # What each tier's server runs at once, where known: the lane then never sends it more.
    fast_slots: int | None = None
    deep_slots: int | None = None
    share_cpus: bool = False  # both servers run on the same CPUs (one machine)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Measure the fast lane against its baseline on this machine and write a report.",
        description="Starts the model tiers and sidecars, replays a mixed voice workload through the lane and "
        "through the baseline (one FIFO queue, deep tier only, no coalescing, no cache, no sentence streaming), "
        "and prints the before/after TTFA table.",
    )
    parser.add_argument(
        "--backend",
        choices=("ollama", "sim", "urls"),
        default="ollama",
        help="ollama: the local stack of `voicelane stack` (built on first use); sim: the bundled simulator; "
        "urls: servers of your own.",
    )
    parser.add_argument("--fast-url", help="Fast tier URL (with --backend urls).")
    parser.add_argument("--deep-url", help="Deep tier URL (with --backend urls).")
    parser.add_argument("--protocol", choices=("ollama", "openai"), default="ollama", help="With --backend urls.")
    parser.add_argument("--fast-model", default="llama3.2:1b")
    parser.add_argument("--deep-model", default="llama3.1:8b")
    parser.add_argument(
        "--fast-slots", type=int, default=None, help="Requests the fast server runs at once (with --backend urls)."
    )
    parser.add_argument(
        "--deep-slots", type=int, default=None, help="Requests the deep server runs at once (with --backend urls)."
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="Both servers run on the same CPUs (with --backend urls): the lane runs one tier at a time.",
    )
    parser.add_argument("--duration", type=float, default=None, help="Workload length in seconds.")
    parser.add_argument("--report-dir", type=Path, default=None)
    parser.add_argument(
        "--without",
        action="append",
        choices=FEATURES,
        default=[],
        help="Turn one lane feature off (repeatable), to attribute the gain.",
    )
    parser.add_argument("--no-baseline", action="store_true", help="Run only the lane.")
    parser.set_defaults(handler=run)


# A spoken rewrite of a short text is one line about as long as the text: the fast tier only gets
# texts of at most 130 characters without lists, tables or code, so 64 tokens is room enough, and a
# line break ends the reply (what a small model writes after one is commentary, not the rewrite).
FAST_REPLY = {"num_predict": 64, "stop": ["\n", "<|im_end|>", "<|eot_id|>"]}
DEEP_REPLY = {"num_predict": 160}


def sidecar_config(tiers: Tiers, *, enabled: set[str]) -> dict[str, Any]:
    """The lane with the given features on; with none on, this is the baseline."""
    lane_on = bool(enabled)
    upstreams: dict[str, dict[str, Any]] = {
        "fast": {"url": tiers.fast_url, "protocol": tiers.protocol, "model": tiers.fast_model, **FAST_REPLY},
        "deep": {"url": tiers.deep_url, "protocol": tiers.protocol, "model": tiers.deep_model, **DEEP_REPLY},
    }
    for tier, slots in (("fast", tiers.fast_slots), ("deep", tiers.deep_slots)):
        if slots is not None:
            upstreams[tier]["parallel_slots"] = slots
    return {
        "upstreams": upstreams,
        "scheduler": {
            "priorities": "priorities" in enabled,
            "max_waiting": 3 if lane_on else 1000,
            "tiers_share_cpus": tiers.share_cpus,
            # Email segments wait for a pause in the conversation rather than filling its short gaps.
            "segments_after_quiet_s": 2.0 if "priorities" in enabled else 0.0,
        },
        "routing": {"mode": "auto" if "routing" in enabled else "deep_only"},
        "single_flight": {"enabled": "coalescing" in enabled},
        "cache": {"enabled": "cache" in enabled},
        "phrase_bank": {"enabled": "cache" in enabled},
        "tts": {"backend": "espeak", "sentence_streaming": "streaming" in enabled},
        # The baseline has no admission control and no deadline fallback: it waits as long as it takes.
        "rate_limit": {"burst": 8, "sustained_per_s": 4} if lane_on else {"burst": 100000, "sustained_per_s": 100000},
        "guardian": {"enabled": lane_on},
        "ttfa": {} if lane_on else {"targets": {"chat": 600, "notification": 600, "email_tldr": 600}},
    }


@contextlib.contextmanager
def start_tiers(args: argparse.Namespace, logs: Path, *, name: str) -> Iterator[Tiers]:
    if args.backend == "urls":
        if not (args.fast_url and args.deep_url):
            raise SystemExit("voicelane demo --backend urls needs --fast-url and --deep-url")
        yield Tiers(
            args.fast_url,
            args.deep_url,
            args.protocol,
            args.fast_model,
            args.deep_model,
            args.fast_slots,
            args.deep_slots,
            args.shared_cpus,
        )
        return
    with contextlib.ExitStack() as stack:
        if args.backend == "sim":
            urls = []
            for tier, flags in (("fast", SIM_FAST), ("deep", SIM_DEEP)):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                stack.enter_context(
                    running(
                        voicelane_argv("sim", "--listen", f"127.0.0.1:{port}", *flags),
                        ready_url=url + "/api/version",
                        log_dir=logs,
                        name=f"sim-{name}-{tier}",
                    )
                )
                urls.append(url)
            print(f"==> {name}: simulated tiers fast ({' '.join(SIM_FAST)}), deep ({' '.join(SIM_DEEP)})")
            yield Tiers(
                urls[0],
                urls[1],
                "ollama",
                "sim-fast",
                "sim-deep",
                fast_slots=parallel_of(SIM_FAST),
                deep_slots=parallel_of(SIM_DEEP),
            )
            return
        from voicelane.stack.ollama import running_stack, sample_lane_environment

        print("==> starting the local Ollama stack (fast and deep tier, the shipped small model)")
        ollama = stack.enter_context(
            running_stack(
                logs / f"ollama-{name}",
                fast_listen=f"127.0.0.1:{free_port()}",
                deep_listen=f"127.0.0.1:{free_port()}",
            )
        )
        print(f"    {ollama.ready_line()}")
        yield ollama_tiers(ollama, sample_lane_environment)


def ollama_tiers(stack: Any, environment: Callable[[str], dict[str, str]]) -> Tiers:
    """The tiers of a running local Ollama stack, with the parallel slots each server was given."""
    slots = {tier: int(environment(tier)["OLLAMA_NUM_PARALLEL"]) for tier in ("fast", "deep")}
    return Tiers(
        stack.fast.url,
        stack.deep.url,
        "ollama",
        stack.fast.model,
        stack.deep.model,
        fast_slots=slots["fast"],
        deep_slots=slots["deep"],
        share_cpus=True,  # both servers run on this machine
    )


def _run_with_own_tiers(
    args: argparse.Namespace, name: str, enabled: set[str], steps: list[Any], logs: Path
) -> dict[str, Any]:
    with start_tiers(args, logs, name=name) as tiers:
        return run_variant(name, tiers, enabled, steps, logs)


def run_variant(name: str, tiers: Tiers, enabled: set[str], steps: list[Any], logs: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_file = logs / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(sidecar_config(tiers, enabled=enabled)))
    argv = voicelane_argv("sidecar", "--config", str(config_file), "--listen", f"127.0.0.1:{port}")
    print(f"==> {name}: sidecar on {url} with {', '.join(sorted(enabled)) or 'every lane feature off'}")
    with running(argv, ready_url=url + "/healthz", log_dir=logs, name=f"sidecar-{name}"):
        _wait_ready(url)
        started = time.monotonic()
        # The baseline's backlog on a real model can take minutes to drain; wait for all of it,
        # saying how far it is meanwhile.
        measurements = asyncio.run(replay(url, steps, timeout_s=900, progress=_progress_printer(name)))
        # Let background email segments finish before reading the counters.
        stats = requests.get(url + "/v1/stats", timeout=10).json()
        elapsed = time.monotonic() - started
    print(f"    {name}: {len(measurements)} requests in {elapsed:.1f} s")
    return {"name": name, "enabled": sorted(enabled), "measurements": measurements, "stats": stats}


def _progress_printer(name: str) -> Callable[[ReplayProgress], None]:
    def show(progress: ReplayProgress) -> None:
        print(
            f"    {name}: {progress.done}/{progress.total} answered, {progress.sent - progress.done} waiting,"
            f" {progress.total - progress.sent} still to send, {progress.elapsed_s:.0f} s",
            flush=True,
        )

    return show


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(url + "/v1/stats", timeout=5).json()
        bank = response.get("phrase_bank", {})
        if bank.get("prepared", 0) >= bank.get("total", 0) and requests.get(url + "/readyz", timeout=5).ok:
            return
        time.sleep(0.2)


def _fmt(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f} s"


def _gain(before: float | None, after: float | None) -> str:
    if before is None or after is None or before <= 0:
        return "—"
    return f"{(1 - after / before) * 100:.0f} % faster"


ROWS = (
    ("chat", "Chat (short)"),
    ("notification", "Notification"),
    ("email", "Email TL;DR"),
    ("duplicate", "Duplicate requests"),
    ("burst", "Burst beyond the rate limit"),
)


def comparison_table(lane: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    lane_summary = summarize(lane["measurements"])
    base_summary = summarize(baseline["measurements"]) if baseline else {}
    lines = [
        "| scenario | baseline p50 / p95 | lane p50 / p95 | improvement (p50) | lane answered / fallback / refused |",
        "|---|---|---|---|---|",
    ]
    for label, title in ROWS:
        if label not in lane_summary:
            continue
        after = lane_summary[label]
        before = base_summary.get(label, {})
        lines.append(
            f"| {title} | {_fmt(before.get('p50_s'))} / {_fmt(before.get('p95_s'))} "
            f"| {_fmt(after['p50_s'])} / {_fmt(after['p95_s'])} "
            f"| {_gain(before.get('p50_s'), after['p50_s'])} "
            f"| {after['answered']} / {after['fallbacks']} / {after['refused']} |"
        )
    return "\n".join(lines)


def lane_counts(stats: dict[str, Any]) -> str:
    guardian = stats.get("guardian", {})
    flights = stats.get("single_flight", {})
    cache = stats.get("cache", {})
    rejections = guardian.get("rejections", {})
    return "\n".join(
        [
            f"- guardian: blocked now {guardian.get('blocked')}, emergency blocks {guardian.get('emergency_blocks')}, "
            f"rejections {json.dumps(rejections)}",
            f"- single-flight: {flights.get('leaders', 0)} leaders, {flights.get('joiners', 0)} joiners shared a result "
            f"(speech: {flights.get('speech', {}).get('joiners', 0)} joined audio already being made)",
            f"- cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses, {cache.get('entries', 0)} entries",
            f"- speech: {stats.get('tts', {}).get('syntheses', 0)} syntheses; "
            f"email follow-ups {json.dumps(stats.get('followups', {}))}",
        ]
    )


def write_charts(report_dir: Path, variants: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    labels = [label for label, _ in ROWS]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    positions = []
    data = []
    names = []
    for offset, variant in enumerate(variants):
        for index, label in enumerate(labels):
            values = [m.ttfa_s for m in variant["measurements"] if m.step.label == label and m.ttfa_s is not None]
            if values:
                positions.append(index * (len(variants) + 1) + offset)
                data.append(values)
                names.append(f"{label}\n{variant['name']}")
    if data:
        ax.boxplot(data, positions=positions, widths=0.8)
        ax.set_xticks(positions, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("time to first audio (s)")
    ax.set_title("TTFA per class: baseline vs lane")
    fig.tight_layout()
    path = report_dir / "ttfa-by-class.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for variant in variants:
        points = [(m.started_s, m.ttfa_s) for m in variant["measurements"] if m.ttfa_s is not None]
        refused = [m.started_s for m in variant["measurements"] if m.status in (429, 503)]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=12, label=f"{variant['name']} answered")
        if refused:
            ax.scatter(refused, [0] * len(refused), marker="x", label=f"{variant['name']} refused (429/503)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("time to first audio (s)")
    ax.set_title("Timeline: every request, including the burst")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = report_dir / "timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(report_dir: Path, args: argparse.Namespace, variants: list[dict[str, Any]], table: str) -> Path:
    lane = variants[0]
    lines = [
        "# VoiceLane demo report",
        "",
        f"- date: {datetime.now().isoformat(timespec='seconds')}",
        f"- backend: {args.backend}",
        f"- variants: {', '.join(v['name'] for v in variants)}",
        "",
        "## Time to first audio, measured by the client",
        "",
        table,
        "",
        "## What the lane did",
        "",
        lane_counts(lane["stats"]),
        "",
        "![TTFA per class](ttfa-by-class.png)",
        "",
        "![Timeline](timeline.png)",
        "",
    ]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines))
    raw = {v["name"]: [m.as_dict() for m in v["measurements"]] for v in variants}
    (report_dir / "measurements.json").write_text(json.dumps(raw, indent=1))
    return path


def run(args: argparse.Namespace) -> int:
    # The simulated run is the quick one: short enough that the baseline's backlog drains in under a minute.
    duration = args.duration or (10.0 if args.backend == "sim" else 40.0)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = args.report_dir or Path("reports") / f"demo-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=True)
    logs = report_dir / "logs"
    logs.mkdir(exist_ok=True)
    steps = mixed_workload(duration_s=duration, pace=1.0 if args.backend == "sim" else 2.5)
    enabled = set(FEATURES) - set(args.without)
    plan = [("lane", enabled)] + ([] if args.no_baseline else [("baseline", set())])
    try:
        if args.backend == "sim":
            # Simulated tiers cost almost no CPU, so each variant gets tiers of its own and the
            # variants run side by side: the quick run then takes as long as the slower one.
            with ThreadPoolExecutor(max_workers=len(plan)) as pool:
                futures = [pool.submit(_run_with_own_tiers, args, name, on, steps, logs) for name, on in plan]
                variants = [future.result() for future in futures]
        else:
            with start_tiers(args, logs, name="shared") as tiers:
                variants = [run_variant(name, tiers, on, steps, logs) for name, on in plan]
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started has been stopped", file=sys.stderr)
        return 130
    baseline = variants[1] if len(variants) > 1 else None
    table = comparison_table(variants[0], baseline)
    print()
    print(table)
    print()
    print("What the lane did:")
    print(lane_counts(variants[0]["stats"]))
    write_charts(report_dir, variants)
    path = write_report(report_dir, args, variants, table)
    print(f"\nreport: {path} (charts and raw measurements beside it)")
    return 0
