"""Smoke runs of every benchmark suite at its tiny size, so the harness cannot rot.

Each test runs `voicelane bench SUITE --size smoke` as a user would and checks the JSON it
writes: the envelope (machine, command, timestamps), counts that match what was sent, and
ratios that are finite numbers. Performance targets are deliberately not asserted here; the
figures of a smoke run mean nothing. The Ollama variants run only where the local model stack
is already built (they are marked `realstack`).
"""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from voicelane.gobuild import is_built
from voicelane.processes import voicelane_argv
from voicelane.stack.build import OLLAMA, find_model

pytestmark = pytest.mark.timeout(180)


def run_bench(tmp_path: Path, *args: str, timeout_s: float = 150.0) -> dict[str, Any]:
    out = tmp_path / "results.json"
    argv = voicelane_argv("bench", *args, "--size", "smoke", "--out", str(out), "--log-dir", str(tmp_path / "logs"))
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the bench stop the processes it started; only then give up on it.
            bench.terminate()
            stdout, stderr = bench.communicate(timeout=30)
            pytest.fail(f"{' '.join(args)} took over {timeout_s:.0f} s:\n{stdout}\n{stderr}")
    assert bench.returncode == 0, f"{' '.join(args)} failed:\n{stdout}\n{stderr}"
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return document


def check_envelope(doc: dict[str, Any], suite: str, backend: str) -> None:
    assert doc["suite"] == suite
    assert doc["size"] == "smoke"
    assert doc["backend"] == backend
    assert doc["command"].startswith(f"voicelane bench {suite} ")
    assert "--size smoke" in doc["command"]
    started = datetime.fromisoformat(doc["started_at"])
    finished = datetime.fromisoformat(doc["finished_at"])
    assert started <= finished
    machine = doc["machine"]
    assert machine["nproc"] >= 1
    assert machine["memory_total_bytes"] > 0
    assert machine["cpu_model"]
    assert machine["python"].count(".") == 2
    assert doc["machine_cpu_during_run"]["wall_s"] > 0
    assert doc["settings"]
    assert doc["results"]
    assert doc["ratios"], "a suite reports at least one ratio against its reference"


def finite_ratios(doc: dict[str, Any], *names: str) -> None:
    """Every ratio present is a finite number; the named ones must be present."""
    for name, value in doc["ratios"].items():
        assert value is None or (isinstance(value, float | int) and math.isfinite(value)), (name, value)
    for name in names:
        assert doc["ratios"].get(name) is not None, f"ratio {name} is missing"


def test_overhead_counts_every_request_on_every_path(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "overhead")
    check_envelope(doc, "overhead", "sim")
    sent_per_rate = {"50": 10, "200": 40}  # rate x 0.2 s phase x 1 round
    for rate, expected in sent_per_rate.items():
        figures = doc["results"]["rates"][rate]
        for path in ("direct", "sidecar_text", "sidecar_chat"):
            assert figures[path]["sent"] == expected
            # Admission caps are raised for this suite: nothing may be refused.
            assert figures[path]["statuses"] == {"200": expected}
            assert figures[path]["latency_s"]["count"] == expected
            assert len(doc["results"]["raw_latency_s"][rate][path]) == expected
        assert figures["sidecar_text"]["sidecar_cpu_s_per_request"] is not None
        assert set(figures["added_latency_s"]) == {"sidecar_text", "sidecar_chat"}
    rss = doc["results"]["sidecar_rss_bytes"]
    assert 0 < rss["idle"] <= rss["under_load_peak"]
    finite_ratios(doc, "sidecar_text_vs_direct_latency_p50_at_50rps", "sidecar_chat_vs_direct_latency_p99_at_200rps")


def test_isolation_runs_both_phases_through_lane_and_baseline(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "isolation")
    check_envelope(doc, "isolation", "sim")
    settings = doc["settings"]
    for variant in ("lane", "baseline"):
        phases = doc["results"][variant]["phases"]
        assert phases["alone"]["chat"]["sent"] == settings["probe_chats"]
        assert set(phases["alone"]) == {"chat"}
        flood = phases["flood"]
        assert flood["chat"]["sent"] == settings["probe_chats"]
        assert flood["burst"]["sent"] == settings["bursts"] * settings["burst_size"]
        assert flood["email"]["sent"] == settings["emails"]
        for entry in (*phases["alone"].values(), *flood.values()):
            assert entry["answered"] + entry["refused"] + entry["failed"] == entry["sent"]
    # The baseline has no admission control: every request of the flood gets audio.
    assert doc["results"]["baseline"]["phases"]["flood"]["burst"]["refused"] == 0
    finite_ratios(doc, "lane_chat_flood_vs_alone_p95", "baseline_chat_flood_vs_alone_p95")


def test_coalescing_counts_upstream_and_speech_calls(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "coalescing")
    check_envelope(doc, "coalescing", "sim")
    identical = doc["settings"]["identical_requests"]
    lane, reference = doc["results"]["lane"], doc["results"]["reference"]
    for variant in (lane, reference):
        assert variant["identical_requests"]["sent"] == identical
        assert variant["identical_requests"]["answered"] == identical
        assert len(variant["raw"]) == identical
    assert lane["upstream_calls"] == 1
    assert lane["identical_requests"]["leaders"] == 1
    assert lane["identical_requests"]["joiners"] == identical - 1
    assert reference["upstream_calls"] == identical
    assert reference["identical_requests"]["joiners"] == 0
    repeats = lane["cache_repeats"]
    assert repeats["sent"] == doc["settings"]["cache_repeats_sequential"]
    assert repeats["served_from_cache"] == repeats["sent"]
    assert repeats["upstream_calls"] == 0
    finite_ratios(doc, "reference_vs_lane_upstream_calls", "lane_cache_hit_p99_vs_leader_ttfa")


def test_fleet_runs_four_sidecars_straight_to_the_server_and_through_the_gate(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "fleet")
    check_envelope(doc, "fleet", "sim")
    check_fleet(doc)


def check_fleet(doc: dict[str, Any]) -> None:
    probes = doc["settings"]["probes"]
    for variant in ("direct", "gate"):
        result = doc["results"][variant]
        for phase in ("alone", "flood"):
            assert result["chat"][phase]["sent"] == probes
            assert len(result["raw"][phase]) == probes
        assert sum(result["identical"]["statuses"].values()) == doc["settings"]["identical_requests"]
        assert result["identical"]["model_calls"] >= 1
        assert sum(sum(kind["statuses"].values()) for kind in result["flood"].values()) > 0
    overhead = doc["results"]["gate"]["gate_overhead"]
    assert overhead["gate_first_byte_s"]["count"] == overhead["direct_first_byte_s"]["count"] > 0
    assert overhead["gate_rss_bytes"] > 0
    finite_ratios(doc, "direct_vs_gate_chat_under_flood_p95", "gate_vs_direct_idle_first_byte_p50")


def test_streaming_on_the_simulator(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "streaming", "--backend", "sim")
    check_envelope(doc, "streaming", "sim")
    for variant in ("streaming", "full_text"):
        assert doc["results"][variant]["sent"] == doc["settings"]["messages"] * doc["settings"]["rounds"]
        assert doc["results"][variant]["answered"] == doc["settings"]["messages"] * doc["settings"]["rounds"]
    finite_ratios(doc, "full_text_vs_streaming_ttfa_p50")


@pytest.mark.cluster
def test_operator_reconciles_every_lane_on_a_local_control_plane(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "operator")
    check_envelope(doc, "operator", "none")
    lanes = doc["settings"]["lanes"]
    operator, reference = doc["results"]["operator"], doc["results"]["reference"]
    assert operator["create_statuses"] == {"201": lanes}
    assert operator["converged"] is True
    assert operator["lanes_reaching"] == {"children_complete": lanes, "status_observed": lanes, "ready": lanes}
    assert operator["operator_rss_bytes"]["idle"] > 0
    children = doc["settings"]["children_per_lane"]
    assert reference["requests"] == {"lanes": lanes, "children": lanes * children, "statuses": lanes, "failed": 0}
    assert reference["lanes_with_all_children"] == lanes
    finite_ratios(doc, "operator_vs_reference_all_converged")


def test_real_workload_on_the_simulator(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "real", "--backend", "sim")
    check_envelope(doc, "real", "sim")
    check_real(doc)


def check_real(doc: dict[str, Any]) -> None:
    by_label = doc["settings"]["by_label"]
    for variant in ("lane", "baseline"):
        per_label = doc["results"][variant]["per_label"]
        assert {label: entry["sent"] for label, entry in per_label.items()} == by_label
        for entry in per_label.values():
            assert entry["target_s"] in (2.5, 3.0, 3.5)
        unloaded = doc["results"][variant]["unloaded_chat"]
        assert unloaded["sent"] == doc["settings"]["unloaded_chats"] == len(unloaded["raw"])
    # On a busy 2-core machine the tiny real model may answer no chat of the smoke run in time
    # (each is then refused or spoken from the fallback), so only the ratios present are checked.
    finite_ratios(doc)


def test_a_suite_refuses_a_backend_it_cannot_use(tmp_path: Path) -> None:
    argv = voicelane_argv("bench", "overhead", "--backend", "ollama", "--out", str(tmp_path / "x.json"))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "--backend ollama is not supported" in result.stderr
    assert not (tmp_path / "x.json").exists()


def _stack_built() -> bool:
    return is_built(OLLAMA) and find_model() is not None


needs_stack = pytest.mark.skipif(
    not _stack_built(), reason="the local Ollama stack is not built (voicelane stack --build)"
)


@pytest.mark.realstack
@needs_stack
def test_streaming_on_the_local_model(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "streaming", "--backend", "ollama")
    check_envelope(doc, "streaming", "ollama")
    for variant in ("streaming", "full_text"):
        assert doc["results"][variant]["sent"] == doc["settings"]["messages"] * doc["settings"]["rounds"]
    finite_ratios(doc)  # a busy machine may leave the tiny model's smoke run without answers


@pytest.mark.realstack
@needs_stack
def test_fleet_on_the_local_model(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "fleet", "--backend", "ollama")
    check_envelope(doc, "fleet", "ollama")
    check_fleet(doc)
    assert doc["settings"]["model_server"]["settings"]["OLLAMA_NUM_PARALLEL"] == str(
        doc["settings"]["model_server_slots"]
    )


@pytest.mark.realstack
@needs_stack
def test_real_workload_on_the_local_model(tmp_path: Path) -> None:
    doc = run_bench(tmp_path, "real", "--backend", "ollama")
    check_envelope(doc, "real", "ollama")
    check_real(doc)
