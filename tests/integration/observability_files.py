"""Where the dashboards, the rule file and their unit tests live, and how tests read them.

Shared by the static checks (test_alert_rules.py) and the live Prometheus test
(test_prometheus_scrape.py), so both look at the same expressions in the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "charts" / "voicelane" / "dashboards"
DASHBOARDS = (DASHBOARD_DIR / "voicelane-ttfa.json", DASHBOARD_DIR / "voicelane-lane.json")
RULES = ROOT / "charts" / "voicelane" / "rules" / "voicelane-rules.yaml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel, as Grafana would send it before variable expansion."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"

    @property
    def is_operator(self) -> bool:
        return "voicelane_operator_" in self.expr


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including panels nested in collapsed rows; rows themselves are skipped."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARDS:
        board = load_dashboard(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(board["title"], panel["title"], target["refId"], target["expr"]))
    return queries


def expand(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's variable expansion for the variables these dashboards use (`$x` and `${x}`).

    Longest names first, so `$__range` is not mistaken for a variable called `$__r`.
    """
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def load_rules() -> list[dict[str, Any]]:
    """Every rule of every group, each with its group's name under `group`."""
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [{**rule, "group": group["name"]} for group in document["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def promtool_test_files() -> list[Path]:
    return sorted(PROMTOOL_TESTS.glob("*.test.yaml"))


def required_binary(name: str, *candidates: str) -> str:
    """Path of an external tool; skip without it locally, fail without it in CI (which must install it)."""
    for candidate in (*candidates, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = f"{name} is not installed (Debian package 'prometheus'; scripts/setup installs it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
