"""The CRD admits the sample lane and rejects each invalid one with its rule's message, offline.

Every file in samples-invalid/ states in its header how the API server rejects it:
`expect-rule: cel` with the CEL rule's message, or `expect-rule: schema` with the
failing OpenAPI keyword; `expect-path` is the field the error names. These tests are
the fast pre-check (jsonschema and cel-python, no cluster); the API server's own
verdict on the same headers is tests/integration/test_crd_apiserver.py. The renderer
must refuse the same lanes at the same field, so offline review and the cluster agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.operator.apiserver_checks import admit, error_path, expectations
from tests.unit.operator.conftest import INVALID_SAMPLES, LANE_UID, SAMPLE_PATH
from voicelane.operator import api
from voicelane.operator.api import SpecError
from voicelane.operator.render import render_children


def all_validations(schema: dict[str, Any]) -> list[dict[str, str]]:
    found = list(schema.get("x-kubernetes-validations", []))
    for sub in schema.get("properties", {}).values():
        found += all_validations(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += all_validations(schema[key])
    return found


def test_sample_lane_is_admitted(crd_schema: dict[str, Any]) -> None:
    lane = yaml.safe_load(SAMPLE_PATH.read_text(encoding="utf-8"))
    _, errors, violations = admit(crd_schema, lane)
    assert [error.message for error in errors] == []
    assert violations == []


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=lambda p: p.stem)
def test_invalid_sample_is_rejected_by_the_precheck(crd_schema: dict[str, Any], path: Path) -> None:
    expected = expectations(path)
    _, errors, violations = admit(crd_schema, yaml.safe_load(path.read_text(encoding="utf-8")))
    if expected["rule"] == "cel":
        assert errors == []
        assert [(v.path, v.message) for v in violations] == [(expected["path"], expected["message"])]
    else:
        assert violations == []
        assert [(error_path(e), e.validator) for e in errors] == [(expected["path"], expected["keyword"])]


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=lambda p: p.stem)
def test_invalid_sample_is_refused_by_the_renderer(path: Path) -> None:
    expected = expectations(path)
    lane = yaml.safe_load(path.read_text(encoding="utf-8"))
    lane["metadata"]["uid"] = LANE_UID
    with pytest.raises(SpecError) as raised:
        render_children(lane)
    assert any(problem.startswith(expected["path"]) for problem in raised.value.problems), raised.value.problems


def test_every_cel_rule_has_an_invalid_sample(crd_schema: dict[str, Any]) -> None:
    messages = {validation["message"] for validation in all_validations(crd_schema)}
    sampled = {expectations(path).get("message") for path in INVALID_SAMPLES}
    assert messages - sampled == set()


def test_every_rule_of_the_models_is_in_the_crd(crd_schema: dict[str, Any]) -> None:
    in_crd = all_validations(crd_schema)
    models = [value for value in vars(api).values() if isinstance(value, type) and issubclass(value, api.SpecModel)]
    rules = [rule for model in models for rule in model.cel_rules] + [api.LANE_NAME_RULE]
    assert len(rules) >= 14
    for rule in rules:
        assert rule.as_validation() in in_crd, rule.message
