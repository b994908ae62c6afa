"""The alert rules pass promtool, every alert is unit-tested both ways and documented, and the
dashboards are well-formed Grafana JSON with the panels, variables and filters users rely on."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from typing import Any

import pytest
import yaml

from tests.integration.observability_files import (
    DASHBOARDS,
    RULES,
    RUNBOOKS,
    alert_rules,
    load_dashboard,
    load_rules,
    panel_queries,
    panels,
    promtool_test_files,
    required_binary,
)

RUNBOOK_BASE = "https://github.com/voicelane/voicelane/blob/main/docs/runbooks.md#"
SEVERITIES = {"critical", "warning"}
# The SRE workbook's (long window, short window, burn factor) triples.
BURN_RATE_ALERTS = {
    "VoiceLaneTTFABudgetBurnFast": ("1h", "5m", "14.4"),
    "VoiceLaneTTFABudgetBurnMedium": ("6h", "30m", "6"),
    "VoiceLaneTTFABudgetBurnSlow": ("3d", "6h", "1"),
}
# Sidecar defaults (sidecar/config.py TTFATargets): the rules and dashboards must agree with them.


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = required_binary("promtool", "/usr/bin/promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


# ----- promtool ----------------------------------------------------------------------------------


@pytest.mark.tools
def test_rule_file_passes_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.tools
def test_promtool_unit_tests_pass() -> None:
    files = promtool_test_files()
    assert files, "no tests/promtool/*.test.yaml found"
    result = _promtool("test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_tests() -> dict[str, list[list[Any]]]:
    """For each alert name, the expected alert lists of every alert_rule_test that checks it."""
    expectations: dict[str, list[list[Any]]] = defaultdict(list)
    for path in promtool_test_files():
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in document["tests"]:
            for check in test.get("alert_rule_test", []):
                expectations[check["alertname"]].append(check.get("exp_alerts") or [])
    return expectations


@pytest.mark.parametrize("alert", [rule["alert"] for rule in alert_rules()])
def test_every_alert_is_unit_tested_firing_and_silent(alert: str) -> None:
    checks = _alert_tests()[alert]
    assert any(checks), f"{alert}: no promtool test expects it to fire"
    assert any(not expected for expected in checks), f"{alert}: no promtool test expects it to stay silent"


def test_every_recording_rule_is_evaluated_in_a_unit_test() -> None:
    tested_exprs = []
    for path in promtool_test_files():
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in document["tests"]:
            tested_exprs += [check["expr"] for check in test.get("promql_expr_test", []) if check.get("exp_samples")]
    untested = {
        rule["record"]
        for rule in load_rules()
        if "record" in rule and not any(re.search(re.escape(rule["record"]) + r"\b", e) for e in tested_exprs)
    }
    assert not untested, f"recording rules no promql_expr_test checks with samples: {sorted(untested)}"


# ----- alert metadata and runbooks ---------------------------------------------------------------


def _runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in RUNBOOKS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert len(annotations["description"].strip()) > len(annotations["summary"])
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()
    assert rule["alert"].lower() in _runbook_anchors(), f"docs/runbooks.md has no section '## {rule['alert']}'"


def test_runbook_has_no_section_for_an_alert_that_does_not_exist() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    sections = set(re.findall(r"^## (VoiceLane\w+)$", RUNBOOKS.read_text(encoding="utf-8"), re.MULTILINE))
    assert sections == alerts


def _constant(record: str, **labels: str) -> float:
    for rule in load_rules():
        if rule.get("record") == record and rule.get("labels", {}) == labels:
            match = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"].strip())
            assert match, f"{record} is not a constant: {rule['expr']}"
            return float(match.group(1))
    raise AssertionError(f"no recording rule {record} {labels}")


@pytest.mark.parametrize("alert", sorted(BURN_RATE_ALERTS))
def test_burn_rate_alerts_use_the_documented_objective_windows_and_factor(alert: str) -> None:
    long_window, short_window, factor = BURN_RATE_ALERTS[alert]
    objective = _constant("voicelane:ttfa_slo_objective:ratio")
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == alert]
    thresholds = re.findall(r"> \(([\d.]+) \* \(1 - ([\d.]+)\)\)", rule["expr"])
    assert thresholds == [(factor, str(objective))] * 2, rule["expr"]
    windows = re.findall(r"ratio_rate(\w+)\)", rule["expr"])
    assert sorted(windows) == sorted([long_window, short_window])


def test_no_rule_compares_with_a_target_of_its_own() -> None:
    # Targets are each lane's (spec.policy.ttfa), exported by its sidecars: a number in a rule would
    # hold one lane to another's promise. The SLO objective is the one documented constant.
    for rule in alert_rules() + [rule for rule in load_rules() if "record" in rule]:
        constants = re.findall(r"vector\(([\d.]+)\)", rule["expr"])
        assert constants in ([], ["0.99"]), (rule.get("alert") or rule.get("record"), rule["expr"])
    (p95,) = [rule for rule in alert_rules() if rule["alert"] == "VoiceLaneTTFAP95OverTarget"]
    assert "voicelane_ttfa_target_seconds" in p95["expr"]
    assert "on (namespace, lane, request_class)" in p95["expr"]


# ----- dashboards --------------------------------------------------------------------------------

EXPECTED_PANELS = {
    "VoiceLane / Time to first audio": {
        "Chat: time to first audio against the lane's target",
        "Notification: time to first audio against the lane's target",
        "Email TL;DR: time to first audio against the lane's target",
        "Within target (time range)",
        "Share within target by class",
        "p95 by class",
        "TTFA distribution",
        "Mean time per stage",
        "Queue wait by priority",
        "Model time to first token by tier",
        "TTS first byte by class",
        "Fallbacks by class and reason",
        "Error budget burn rate",
    },
    "VoiceLane / Lane health": {
        "Requests by endpoint and outcome",
        "Error ratio by endpoint",
        "Admission decisions by reason",
        "Guardian state",
        "Queue depth by priority",
        "Queue wait by priority",
        "Single-flight: share joining a running request",
        "Cache hit ratio",
        "Tier health",
        "Circuits",
        "Failovers",
        "Reconciles by result",
        "Reconcile errors",
        "Reconcile duration",
        "VoiceLanes by condition",
    },
}
TARGET_PANELS = {
    "Chat: time to first audio against the lane's target": 'request_class="chat"',
    "Notification: time to first audio against the lane's target": 'request_class="notification"',
    "Email TL;DR: time to first audio against the lane's target": 'request_class=~"email|email_tldr"',
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NARROWING = ("cluster", "namespace", "lane", "pod")
CLUSTER, NAMESPACE, LANE, POD = (f'{name}=~"${name}"' for name in NARROWING)


@pytest.fixture(params=DASHBOARDS, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


def test_dashboard_has_the_expected_panels(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in panels(dashboard)}
    assert EXPECTED_PANELS[dashboard["title"]] <= titles
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"].startswith("voicelane-")


def test_dashboard_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    everything = dashboard["panels"]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in everything:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_variables_are_datasource_cluster_namespace_lane_pod(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", *NARROWING]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for position, name in enumerate(NARROWING):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"
        query = variable["query"]["query"]
        assert query.startswith("label_values(voicelane_guardian_blocked")
        assert query.endswith(f", {name})")
        # Each variable offers only what the ones before it leave: a lane of the chosen namespace.
        for earlier in NARROWING[:position]:
            assert f'{earlier}=~"${earlier}"' in query, (name, query)


def test_every_panel_queries_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_per_class_panels_draw_each_lanes_own_target(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["title"] not in TARGET_PANELS:
            continue
        (target,) = [t for t in panel["targets"] if t["legendFormat"].startswith("target ")]
        assert "voicelane_ttfa_target_seconds" in target["expr"]
        assert TARGET_PANELS[panel["title"]] in target["expr"]  # the same class as the panel's latencies
        assert "{{lane}}" in target["legendFormat"]  # one line per lane: lanes promise different targets
        defaults = panel["fieldConfig"]["defaults"]
        assert [step["value"] for step in defaults["thresholds"]["steps"]] == [None]  # no number of its own
        (override,) = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byRegexp", "options": "^target "}


SELECTOR = re.compile(r"(?<![\w:])([a-z_]*:?voicelane[\w:]*)(\{[^}]*\})?")


@pytest.mark.parametrize("query", panel_queries(), ids=lambda query: query.name)
def test_series_in_panels_are_filtered_by_cluster_namespace_lane_and_pod(query: Any) -> None:
    for match in SELECTOR.finditer(query.expr):
        name, matchers = match.group(1), match.group(2) or ""
        if name.startswith(("voicelane_operator_", "voicelane:")):
            # The operator runs in its own namespace (dashboards/README.md); constants are per cluster.
            needed: tuple[str, ...] = (CLUSTER,)
        elif ":" in name or name.startswith("voicelane_gate_"):
            # Recorded series are per lane, not per pod; the gate runs in the tier pods, not the app pods
            # the pod variable lists.
            needed = (CLUSTER, NAMESPACE, LANE)
        else:
            needed = (CLUSTER, NAMESPACE, LANE, POD)
        missing = [f for f in needed if f not in matchers]
        assert not missing, f"{name} in {query.name} lacks {missing}"
