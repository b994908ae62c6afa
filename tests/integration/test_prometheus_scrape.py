"""A real Prometheus scrapes a real sidecar and operator under a short generated load, loads the
rule file, and answers every dashboard and rule expression: each parses, each panel returns data,
every rule evaluates without error, and the alerts that the load should trip do trip.

The stack, started once for the module: two upstream simulators (fast and deep tiers), the gate in
front of the deep one, a sidecar in front of both, the session's Kubernetes API (tests/support/kube.py: the local control plane, or a
user's cluster) with one VoiceLane and the operator reconciling it, and Prometheus (Debian package) scraping the sidecar and the operator every second with the
target labels a PodMonitor/ServiceMonitor would add (namespace, lane, pod) as static labels, and no
`cluster` label, like the one Prometheus of a single cluster.

The load covers what the panels show: all three classes through /v1/speak and /v1/text,
duplicates (single-flight joins, cache hits), a configuration reload, a burst beyond the rate
limit and queue (429), forced guardian pressure (503 and the blocked gauge), deadline fallbacks
and consecutive slow notifications (a deliberately tiny notification target), and a killed fast
tier (failover, unhealthy tier).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes.client import ApiClient, ApiextensionsV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config

from tests.integration.observability_files import (
    ROOT,
    RULES,
    PanelQuery,
    expand,
    load_rules,
    panel_queries,
    required_binary,
)
from tests.support import hooked_sidecar
from tests.support.kube import KubeTarget
from voicelane.processes import ManagedProcess, free_port, running, voicelane_argv

LANES = "voicelanes"

pytestmark = [pytest.mark.tools, pytest.mark.timeout(180)]

SCRAPE_LABELS = {"namespace": "test", "lane": "demo", "pod": "sidecar-0"}
OPERATOR_LABELS = {"namespace": "voicelane-system", "pod": "operator-0"}
# The gate runs in the deep tier's pod: same namespace and lane, its own pod.
GATE_LABELS = {**SCRAPE_LABELS, "pod": "demo-deep-0"}
# Grafana's built-in variables, wide enough to cover the whole load from the first query on.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "10m"}
# One Prometheus, as in a single-cluster install: no series has a `cluster` label, so Grafana offers
# only "All" for it, and its `.*` matches series without the label.
ALL_CLUSTERS = {"cluster": ".*"}
SELECTIONS = {
    "all": {**ALL_CLUSTERS, "namespace": ".*", "lane": ".*", "pod": ".*", **BUILTINS},
    "one-pod": {**ALL_CLUSTERS, **SCRAPE_LABELS, **BUILTINS},
}
NOTIFICATION_TARGET_S = 0.001  # under any real TTFA: every notification is slow


@dataclass
class Prometheus:
    url: str
    process: ManagedProcess

    def api(self, path: str, **params: str) -> dict[str, Any]:
        response = requests.get(self.url + path, params=params, timeout=10)
        body: dict[str, Any] = response.json()
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", query=expr)

    def series(self, expr: str) -> list[dict[str, Any]]:
        body = self.query(expr)
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """The result of `expr` once it is non-empty; fails with the expression after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.series(expr)
            if result or time.monotonic() > deadline:
                assert result, f"Prometheus never returned data for: {expr}\n{self.process.log()[-2000:]}"
                return result
            time.sleep(0.25)


@dataclass
class Stack:
    prometheus: Prometheus
    operator_scraped: bool
    notes: list[str] = field(default_factory=list)


# ----- processes ---------------------------------------------------------------------------------


def _start_sim(stack: contextlib.ExitStack, log_dir: Path, name: str) -> tuple[str, ManagedProcess]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv(
        "sim", "--listen", f"127.0.0.1:{port}", "--ttft-ms", "20", "--tokens-per-s", "400", "--parallel", "4"
    )
    process = stack.enter_context(running(argv, ready_url=url + "/api/version", log_dir=log_dir, name=name))
    return url, process


def _start_gate(stack: contextlib.ExitStack, log_dir: Path, upstream: str) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = voicelane_argv("gate", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--slots", "4")
    stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=log_dir, name="gate"))
    return url


def _start_sidecar(
    stack: contextlib.ExitStack, log_dir: Path, config_file: Path, fast: str, deep: str
) -> tuple[str, str, dict[str, Any]]:
    port, metrics_port = free_port(), free_port()
    config: dict[str, Any] = {
        "server": {"metrics_listen": f"127.0.0.1:{metrics_port}"},
        "upstreams": {
            "fast": {"url": fast, "model": "fast-model", "health_interval_s": 1.0},
            "deep": {"url": deep, "model": "deep-model", "health_interval_s": 1.0},
        },
        "phrase_bank": {"enabled": False},
        # Room for the steady load; the burst of 30 at once still exceeds it and the queue.
        "rate_limit": {"burst": 20, "sustained_per_s": 10},
        "ttfa": {"targets": {"notification": NOTIFICATION_TARGET_S}, "consecutive_slow_alert": 2},
    }
    config_file.write_text(yaml.safe_dump(config))
    argv = hooked_sidecar.argv("--config", str(config_file), "--listen", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    stack.enter_context(running(argv, ready_url=url + "/healthz", log_dir=log_dir, name="sidecar"))
    return url, f"127.0.0.1:{metrics_port}", config


@dataclass
class Operator:
    """The operator, and an admin client of the API it reconciles against."""

    api: ApiClient
    metrics_address: str

    def create_lane(self, name: str, namespace: str) -> None:
        """The sample VoiceLane under another name: the operator reconciles it at once."""
        lane = yaml.safe_load((ROOT / "manifests" / "samples" / "voicelane.yaml").read_text(encoding="utf-8"))
        lane["metadata"] = {"name": name, "namespace": namespace}
        group, version = lane["apiVersion"].split("/")
        CustomObjectsApi(self.api).create_namespaced_custom_object(group, version, namespace, LANES, lane)


def _start_operator(stack: contextlib.ExitStack, log_dir: Path, kube: KubeTarget, namespace: str) -> Operator:
    """The CRD and a namespace on the session's API, and the operator watching that namespace."""
    from voicelane.operator.crd import build_crd

    api = stack.enter_context(new_client_from_config(config_file=str(kube.kubeconfig)))
    crd = build_crd()
    with contextlib.suppress(ApiException):  # already there (another test applied it): kept as it is
        ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    core = CoreV1Api(api)
    try:
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        stack.callback(core.delete_namespace, namespace)
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists, and is not ours to delete
            raise
    group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
    wait_until_served = time.monotonic() + 30
    while True:  # a new CRD is served once the API server has established it
        try:
            CustomObjectsApi(api).list_namespaced_custom_object(group, version, namespace, LANES)
            break
        except ApiException:
            if time.monotonic() > wait_until_served:
                raise
            time.sleep(0.2)

    metrics_address = f"127.0.0.1:{free_port()}"
    argv = voicelane_argv(
        "operator",
        "--kubeconfig",
        str(kube.kubeconfig),
        "--namespace",
        namespace,
        "--metrics-listen",
        metrics_address,
    )
    stack.enter_context(running(argv, ready_url=f"http://{metrics_address}/readyz", log_dir=log_dir, name="operator"))
    # Runs before the operator stops: the lane carries its finalizer, which the operator releases.
    stack.callback(_delete_lanes, api, group, version, namespace)
    return Operator(api, metrics_address)


def _delete_lanes(api: ApiClient, group: str, version: str, namespace: str) -> None:
    lanes = CustomObjectsApi(api)
    for lane in lanes.list_namespaced_custom_object(group, version, namespace, LANES)["items"]:
        lanes.delete_namespaced_custom_object(group, version, namespace, LANES, lane["metadata"]["name"])
    deadline = time.monotonic() + 60
    while lanes.list_namespaced_custom_object(group, version, namespace, LANES)["items"]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)


def _start_prometheus(
    stack: contextlib.ExitStack, log_dir: Path, workdir: Path, sidecar: str, gate: str, operator: str | None
) -> Prometheus:
    binary = required_binary("prometheus", "/usr/bin/prometheus")
    scrape_configs: list[dict[str, Any]] = [
        {"job_name": "voicelane-sidecar", "static_configs": [{"targets": [sidecar], "labels": SCRAPE_LABELS}]},
        {"job_name": "voicelane-gate", "static_configs": [{"targets": [gate], "labels": GATE_LABELS}]},
    ]
    if operator is not None:
        scrape_configs.append(
            {
                "job_name": "voicelane-operator",
                "static_configs": [{"targets": [operator], "labels": OPERATOR_LABELS}],
            }
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape_configs,
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = stack.enter_context(running(argv, ready_url=url + "/-/ready", log_dir=log_dir, name="prometheus"))
    return Prometheus(url, process)


# ----- load --------------------------------------------------------------------------------------

CHATS = [
    "Hej! Mötet börjar klockan tre.",
    "Kan du ringa mig när du är ledig?",
    "Jag är framme om tio minuter.",
    "Tack för hjälpen i går, det betydde mycket.",
]
LONG_CHAT = (
    "Här är sammanfattningen från dagens möte. Vi gick igenom budgeten för nästa kvartal, "
    "diskuterade rekryteringen av två nya utvecklare och bestämde att lanseringen flyttas en vecka."
)
NOTIFICATIONS = [
    "Du har ett nytt meddelande från Anna.",
    "Påminnelse: tandläkaren klockan nio.",
    "Paketet har levererats.",
]
EMAIL = (
    "Hej! Jag skriver angående offerten vi fick förra veckan. Priset är högre än budgeterat, "
    "men leveranstiden är kortare. Kan du titta på villkoren före fredag? Jag behöver ett svar "
    "innan styrelsemötet. Bilagan innehåller de detaljerade siffrorna och en jämförelse med "
    "det andra anbudet. Hör av dig om något är oklart. Vänliga hälsningar, Erik."
)


def _post(url: str, path: str, text: str, source: str) -> requests.Response:
    # requests reads the whole (streamed) body: the sidecar records TTFA when the response ends.
    return requests.post(url + path, json={"text": text, "source": source}, timeout=60)


def _in_parallel(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        return list(pool.map(lambda call: call(), calls))


def _sidecar_metric(metrics_address: str, needle: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in requests.get(f"http://{metrics_address}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, f"the sidecar never exported {needle}"
        time.sleep(0.2)


def _generate_load(
    sidecar: str,
    fast: str,
    metrics_address: str,
    config_file: Path,
    config: dict[str, Any],
    fast_sim: ManagedProcess,
    prometheus: Prometheus,
) -> None:
    def speak(text: str, source: str) -> Callable[[], requests.Response]:
        return lambda: _post(sidecar, "/v1/speak", text, source)

    def text(body: str, source: str) -> Callable[[], requests.Response]:
        return lambda: _post(sidecar, "/v1/text", body, source)

    # One request of each kind first, then a scrape, so every histogram series exists before the
    # load is counted (the sidecar creates its counters' known label sets at zero on start).
    primers = [speak("God kväll!", "chat"), speak("Nytt sms.", "notification"), speak(EMAIL[:120], "email")]
    primers += [text("Hur mår du?", "chat"), text(EMAIL[:100], "email_tldr")]
    for response in [call() for call in primers]:
        assert response.status_code == 200, response.text
    prometheus.wait_for("count(count by (request_class) (voicelane_ttfa_seconds_count)) == 3")
    prometheus.wait_for('count(voicelane_ttfa_requests_total{request_class="notification"}) >= 1')

    # Every class, both endpoints, both tiers (the long chat goes deep).
    steady = [speak(t, "chat") for t in CHATS] + [speak(LONG_CHAT, "chat"), speak(EMAIL, "email")]
    steady += [text("Vad är klockan i Tokyo nu?", "chat"), text(EMAIL, "email_tldr")]
    for response in _in_parallel(steady[:4]) + _in_parallel(steady[4:]):
        assert response.status_code == 200, response.text
    # Notifications one after another, so the sidecar sees them slow in a row. The model stalls
    # on the first: past the class deadline the sidecar speaks the original text (a fallback).
    stall: dict[str, Any] = {"fault": "stall_first_token", "count": 1, "hold_s": 1.0}
    assert requests.post(fast + "/sim/faults", json=stall, timeout=10).status_code == 200
    spoken = [_post(sidecar, "/v1/speak", notification, "notification") for notification in NOTIFICATIONS]
    assert [r.status_code for r in spoken] == [200] * len(NOTIFICATIONS), [r.headers for r in spoken]
    assert spoken[0].headers.get("X-Voicelane-Fallback") == "deadline"

    # Identical requests at once share one flight; the same again later is a cache hit.
    duplicates = _in_parallel([speak("Ett ögonblick, jag kollar.", "chat")] * 4)
    assert [r.status_code for r in duplicates] == [200] * 4
    assert _post(sidecar, "/v1/speak", "Ett ögonblick, jag kollar.", "chat").status_code == 200
    assert _post(sidecar, "/v1/text", CHATS[0], "chat").status_code == 200
    assert _post(sidecar, "/v1/text", CHATS[0], "chat").status_code == 200

    # A configuration change is picked up from the file.
    config_file.write_text(yaml.safe_dump({**config, "cache": {"ttl_s": 1800.0}}))
    _sidecar_metric(metrics_address, 'voicelane_config_reloads_total{result="applied"}')

    # More distinct requests at once than the token bucket and the queue admit.
    burst = _in_parallel([text(f"Meddelande nummer {i} i en skur.", "chat") for i in range(30)])
    refusals = {r.json()["error"]["code"] for r in burst if r.status_code == 429}
    assert "rate_limited" in refusals, refusals

    # Sustained pressure blocks the guardian: new model work gets 503 until it eases.
    pressure = requests.post(
        sidecar + "/v1/test/pressure",
        json={"cpu_percent": 99, "memory_percent": 99, "run_checks": 5, "advance_s": 5},
        timeout=10,
    ).json()
    assert pressure["guardian"]["blocked"] is True
    assert _post(sidecar, "/v1/text", "Behöver modellen nu.", "chat").status_code == 503
    prometheus.wait_for('ALERTS{alertname="VoiceLaneGuardianBlocking", alertstate="pending"}')
    eased = requests.post(
        sidecar + "/v1/test/pressure",
        json={"cpu_percent": 5, "memory_percent": 5, "run_checks": 1},
        timeout=10,
    ).json()
    assert eased["guardian"]["blocked"] is False

    # The fast tier dies: short chats fail over to deep, and the tier turns unhealthy.
    fast_sim.kill()
    failover = _in_parallel([text(f"Kort fråga {i} efter felet.", "chat") for i in range(3)])
    assert [r.status_code for r in failover] == [200] * 3
    prometheus.wait_for('voicelane_failovers_total{from_tier="fast", to_tier="deep"}')
    prometheus.wait_for('ALERTS{alertname="VoiceLaneUpstreamTierDown", tier="fast"}')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    required_binary("prometheus", "/usr/bin/prometheus")
    workdir = tmp_path_factory.mktemp("prometheus-scrape")
    log_dir = workdir / "logs"
    log_dir.mkdir()
    notes: list[str] = []
    with contextlib.ExitStack() as processes:
        fast, fast_sim = _start_sim(processes, log_dir, "sim-fast")
        deep_sim, _ = _start_sim(processes, log_dir, "sim-deep")
        deep = _start_gate(processes, log_dir, deep_sim)
        config_file = workdir / "sidecar.yaml"
        sidecar, metrics_address, config = _start_sidecar(processes, log_dir, config_file, fast, deep)
        operator = None
        if (ROOT / "operator" / "main.py").exists():
            # The API is asked for only here, so without an operator no control plane starts.
            kube: KubeTarget = request.getfixturevalue("kube")
            operator = _start_operator(processes, log_dir, kube, SCRAPE_LABELS["namespace"])
        else:
            notes.append("operator/main.py is missing: only the sidecar is scraped")
        prometheus = _start_prometheus(
            processes,
            log_dir,
            workdir,
            metrics_address,
            deep.removeprefix("http://"),
            operator.metrics_address if operator else None,
        )
        prometheus.wait_for('up{job="voicelane-sidecar"} == 1')
        prometheus.wait_for('up{job="voicelane-gate"} == 1')
        if operator is not None:
            # The lane comes once Prometheus scrapes the operator, so its reconcile is seen counting.
            prometheus.wait_for('up{job="voicelane-operator"} == 1')
            operator.create_lane(SCRAPE_LABELS["lane"], SCRAPE_LABELS["namespace"])
            prometheus.wait_for('voicelane_operator_reconciles_total{result="applied"} > 0')
        _generate_load(sidecar, fast, metrics_address, config_file, config, fast_sim, prometheus)
        # The recorded series exist once the rules have run over the scraped load.
        prometheus.wait_for("namespace_lane_request_class:voicelane_ttfa_within_target:ratio_rate5m")
        prometheus.wait_for("voicelane_ttfa_alerts_total")
        # Two more scrapes after the load, so the final state of every gauge is in.
        prometheus.wait_for(f'timestamp(up{{job="voicelane-sidecar"}}) > {time.time() + 2:.3f}')
        yield Stack(prometheus, operator is not None, notes)


# ----- expressions -------------------------------------------------------------------------------


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
@pytest.mark.parametrize("query", panel_queries(), ids=lambda query: query.name)
def test_every_dashboard_query_returns_data(stack: Stack, query: PanelQuery, selection: str) -> None:
    if query.is_operator and not stack.operator_scraped:
        pytest.skip("; ".join(stack.notes))
    expr = expand(query.expr, SELECTIONS[selection])
    assert "$" not in expr, f"an unexpanded variable is left in {expr}"
    body = stack.prometheus.query(expr)
    assert body["status"] == "success", f"{query.name}: {body.get('error')}\n{expr}"
    result = body["data"]["result"]
    assert result, f"{query.name} returns nothing with {selection} selected:\n{expr}"
    assert _finite(result), f"{query.name} returns only NaN with {selection} selected:\n{expr}\n{result}"


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.get("alert") or rule["record"])
def test_every_rule_expression_parses_on_prometheus(stack: Stack, rule: dict[str, Any]) -> None:
    body = stack.prometheus.query(rule["expr"])
    assert body["status"] == "success", f"{body.get('error')}\n{rule['expr']}"


def test_every_rule_evaluates_without_errors(stack: Stack) -> None:
    groups = stack.prometheus.api("/api/v1/rules")["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == len(load_rules())
    failing = {rule["name"]: rule.get("lastError") for rule in loaded if rule["health"] != "ok"}
    assert not failing


def test_recording_rules_produce_per_class_series(stack: Stack) -> None:
    for window in ("5m", "30m", "1h", "6h", "3d"):
        ratios = stack.prometheus.series(
            f"namespace_lane_request_class:voicelane_ttfa_within_target:ratio_rate{window}"
        )
        assert {s["metric"]["request_class"] for s in ratios} >= {"chat", "notification", "email"}
        assert all(s["metric"]["lane"] == "demo" and s["metric"]["namespace"] == "test" for s in ratios)
    quantiles = stack.prometheus.series("namespace_lane_request_class:voicelane_ttfa_seconds:quantile_rate5m")
    assert {s["metric"]["quantile"] for s in quantiles} == {"0.5", "0.95", "0.99"}


def test_the_lanes_own_targets_are_what_the_rules_compare_with(stack: Stack) -> None:
    # The sidecar runs with a notification target of its own; chat keeps the default.
    result = stack.prometheus.query("namespace_lane_request_class:voicelane_ttfa_target_seconds:max")["data"]["result"]
    targets = {sample["metric"]["request_class"]: float(sample["value"][1]) for sample in result}
    assert targets["notification"] == NOTIFICATION_TARGET_S
    assert targets["chat"] == 3.0
    assert {sample["metric"]["lane"] for sample in result} == {"demo"}


@pytest.mark.parametrize("variable", ["cluster", "namespace", "lane", "pod"])
def test_template_variables_offer_the_scrape_labels(stack: Stack, variable: str) -> None:
    # What Grafana's label_values(voicelane_guardian_blocked, <label>) asks Prometheus. Nothing for
    # `cluster` here (see ALL_CLUSTERS): the variable is then "All" alone.
    response = requests.get(
        f"{stack.prometheus.url}/api/v1/label/{variable}/values",
        params={"match[]": "voicelane_guardian_blocked"},
        timeout=10,
    ).json()
    assert response["data"] == ([SCRAPE_LABELS[variable]] if variable in SCRAPE_LABELS else [])


# ----- alerts the load trips ---------------------------------------------------------------------


def _alerts(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    alerts = stack.prometheus.api("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname]


def test_consecutive_slow_notifications_fire_an_alert(stack: Stack) -> None:
    (alert,) = [
        a for a in _alerts(stack, "VoiceLaneConsecutiveSlowRequests") if a["labels"]["request_class"] == "notification"
    ]
    assert alert["state"] == "firing"
    assert alert["labels"]["lane"] == "demo"
    assert alert["annotations"]["runbook_url"].endswith("docs/runbooks.md#voicelaneconsecutiveslowrequests")


def test_notifications_all_over_target_start_every_burn_rate_alert(stack: Stack) -> None:
    for alertname in (
        "VoiceLaneTTFABudgetBurnFast",
        "VoiceLaneTTFABudgetBurnMedium",
        "VoiceLaneTTFABudgetBurnSlow",
    ):
        classes = {a["labels"]["request_class"] for a in _alerts(stack, alertname)}
        assert "notification" in classes, alertname


def test_guardian_blocking_and_the_dead_tier_were_seen_by_their_alerts(stack: Stack) -> None:
    seen = stack.prometheus.series('count by (alertname, tier) (count_over_time(ALERTS{lane="demo"}[5m]))')
    names = {(s["metric"]["alertname"], s["metric"].get("tier")) for s in seen}
    assert ("VoiceLaneGuardianBlocking", None) in names
    assert ("VoiceLaneUpstreamTierDown", "fast") in names
