"""`voicelane gate --metrics-listen`: a second port with the gate's metrics and probes, and no model calls.

On a cluster the lane's NetworkPolicy opens this port to every source, for a Prometheus in another
namespace, while the port that takes model calls stays the lane's own: so nothing but metrics and
probes may be reached through it.
"""

from __future__ import annotations

import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from voicelane.processes import free_port, voicelane_argv

pytestmark = pytest.mark.timeout(60)


def test_the_metrics_port_serves_metrics_and_probes_and_takes_no_model_call(start_sim, start_gate) -> None:
    sim = start_sim("--ttft-ms", "5", "--tokens-per-s", "500")
    metrics_port = free_port()
    gate = start_gate(sim.url, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    chat = {"model": "fast-model", "messages": [{"role": "user", "content": "Hej"}], "stream": False}

    assert gate.post("/api/chat", json=chat).status_code == 200  # through the main port
    scraped = requests.get(metrics_url + "/metrics", timeout=10)
    assert scraped.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(scraped.text)}
    calls = [s for s in families["voicelane_gate_calls"].samples if s.name == "voicelane_gate_calls_total"]
    assert sum(sample.value for sample in calls) == 1  # the same registry as the main port's
    assert requests.get(metrics_url + "/healthz", timeout=10).status_code == 200
    assert requests.get(metrics_url + "/readyz", timeout=10).status_code in (200, 503)

    for method, path in (("POST", "/api/chat"), ("POST", "/api/generate"), ("GET", "/api/tags")):
        answer = requests.request(method, metrics_url + path, json=chat, timeout=10)
        assert answer.status_code in (404, 405), (path, answer.status_code)


def test_a_malformed_metrics_address_is_refused_naming_the_flag(start_sim) -> None:
    sim = start_sim()
    argv = voicelane_argv("gate", "--upstream", sim.url, "--metrics-listen", "no-port")
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert finished.returncode != 0
    assert "--metrics-listen wants HOST:PORT, got 'no-port'" in finished.stderr
