"""values.yaml and values.schema.json: every field documented, the defaults valid, bad values refused clearly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.delivery.support import CHART, helm, run

SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema()["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def is_section(node: dict[str, Any]) -> bool:
    """A group of the chart's own fields, each documented on its own (rather than one documented field)."""
    properties: dict[str, Any] = resolve(node).get("properties") or {}
    return bool(properties) and all("description" in child for child in properties.values())


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line index of each mapping key of a block-style YAML file, by key path (lists are not entered)."""
    found: dict[tuple[str, ...], int] = {}
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found[tuple(key for _, key in stack)] = index
    return found


def documented_fields(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    fields = []
    for name, child in resolve(node).get("properties", {}).items():
        if is_section(child):
            fields += documented_fields(child, (*path, name))
        else:
            fields.append((*path, name))
    return fields


def test_the_defaults_meet_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.Draft7Validator(schema()).validate(yaml.safe_load(VALUES_PATH.read_text(encoding="utf-8")))


def test_every_field_has_a_default_and_a_comment_in_values_yaml() -> None:
    text = VALUES_PATH.read_text(encoding="utf-8")
    lines = text.splitlines()
    positions = key_lines(text)
    undocumented = []
    for field in documented_fields(schema()):
        index = positions.get(field)
        assert index is not None, f"{'.'.join(field)} has no default in values.yaml"
        if not lines[index - 1].lstrip().startswith("#"):
            undocumented.append(".".join(field))
    assert not undocumented, f"fields without a comment above them in values.yaml: {undocumented}"


def test_every_closed_section_refuses_unknown_keys() -> None:
    open_sections = []

    def walk(node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_sections.append(path or "<root>")
            for name, child in node["properties"].items():
                walk(child, f"{path}.{name}" if path else name)

    walk(schema(), "")
    assert not open_sections


# Each bad value, the flag that sets it, and what helm's error must point at.
BAD_VALUES: dict[str, tuple[list[str], str]] = {
    "wrong type": (["--set-string", "operator.replicas=one"], "at '/operator/replicas': got string, want integer"),
    "unknown top-level key": (["--set", "operatr.replicas=1"], "additional properties 'operatr' not allowed"),
    "unknown nested key": (["--set", "operator.image.tagg=1.0"], "additional properties 'tagg' not allowed"),
    "bad enum": (["--set", "operator.image.pullPolicy=Sometimes"], "at '/operator/image/pullPolicy'"),
    "negative replicas": (["--set", "operator.replicas=-1"], "at '/operator/replicas': minimum"),
    "unknown failure policy": (["--set", "webhook.failurePolicy=Retry"], "at '/webhook/failurePolicy'"),
    "port name longer than 15": (["--set", "podMonitor.port=voicelane-metrics"], "at '/podMonitor/port'"),
    "bad duration": (["--set", "serviceMonitor.interval=30sec"], "at '/serviceMonitor/interval'"),
    "bad quantity": (["--set", "operator.resources.limits.memory=lots"], "at '/operator/resources/limits/memory'"),
    "bad digest": (["--set", "operator.image.digest=latest"], "at '/operator/image/digest'"),
    "string for a map": (["--set", "commonLabels=team"], "at '/commonLabels'"),
    "webhook timeout above 30 s": (["--set", "webhook.timeoutSeconds=60"], "at '/webhook/timeoutSeconds'"),
    "webhook url over plain HTTP": (["--set", "webhook.url=http://10.0.0.5:9443/mutate-pods"], "at '/webhook/url'"),
    "webhook url with a query": (["--set", "webhook.url=https://10.0.0.5:9443/mutate-pods?x=1"], "at '/webhook/url'"),
    "caBundle not base64": (["--set", "webhook.caBundle=-----BEGIN CERTIFICATE-----"], "at '/webhook/caBundle'"),
    "webhook url with cert-manager": (
        ["--set", "webhook.url=https://10.0.0.5:9443/mutate-pods", "--set", "webhook.certManager.enabled=true"],
        "at '/webhook/certManager/enabled'",
    ),
}


@pytest.mark.tools
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_refused_with_its_path(case: str) -> None:
    flags, expected = BAD_VALUES[case]
    result = run([str(helm()), "template", "voicelane", str(CHART), *flags])
    assert result.returncode != 0, f"{case}: helm accepted {flags}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr, result.stderr


@pytest.mark.tools
def test_a_bad_values_file_is_refused_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("operator:\n  watchNamespaces: voice\n", encoding="utf-8")
    result = run([str(helm()), "template", "voicelane", str(CHART), "--values", str(bad)])
    assert result.returncode != 0
    assert "at '/operator/watchNamespaces': got string, want array" in result.stderr
