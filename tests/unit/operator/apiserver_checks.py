"""A fast offline pre-check of what the API server does with a custom resource before storing it.

Applies the CRD's structural defaults, validates against its openAPIV3Schema
(OpenAPI v3.0 is JSON Schema draft 4 plus extensions, which jsonschema's draft 4
validator ignores), and evaluates every `x-kubernetes-validations` CEL rule with
cel-python, typing values by the schema as Kubernetes does (a `number` is a double
even when written as 4). Errors are placed where the API server reports them: a
missing property at the property, a rule's failure at its `fieldPath`. The real
API server stays the judge: tests/integration/test_crd_apiserver.py shows that it
refuses every invalid sample at the same field as this pre-check.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
from celpy import celtypes
from kubernetes.utils.quantity import parse_quantity


@dataclass(frozen=True)
class Violation:
    path: str  # e.g. spec.fast.env[0]; the object itself is <root>
    message: str


def expectations(sample: Path) -> dict[str, str]:
    """The `# expect-KEY: value` header of an invalid sample: how the API server refuses it (rule, path, ...)."""
    return dict(re.findall(r"^# expect-([a-z]+): (.*)$", sample.read_text(encoding="utf-8"), re.MULTILINE))


def join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill absent properties that have a default, depth first, like the API server."""
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default_in_place(sub, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for item in value.values():
                _default_in_place(additional, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(schema["items"], item)


def schema_errors(schema: dict[str, Any], value: Any) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft4Validator(schema)
    return sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path))


def error_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path = join(path, part)
    if error.validator == "required":
        # Kubernetes names the missing property itself (`spec.deep.model: Required value`); jsonschema
        # places the error on the object and names the property only in its message.
        missing = re.fullmatch(r"'(.+)' is a required property", error.message)
        assert missing is not None, error.message
        path = join(path, missing.group(1))
    return path or "<root>"


def _quantity(text: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(parse_quantity(str(text))))


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        parse_quantity(str(text))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare_to(left: Any, right: Any) -> celtypes.IntType:
    return celtypes.IntType((left > right) - (left < right))


# The part of Kubernetes' CEL quantity library the CRD's rules use: isQuantity, quantity and compareTo.
KUBERNETES_CEL_FUNCTIONS = {"isQuantity": _is_quantity, "quantity": _quantity, "compareTo": _compare_to}


@functools.cache
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=KUBERNETES_CEL_FUNCTIONS)


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    if value is None:
        return None
    kind = schema.get("type")
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer" and isinstance(value, int):  # a value of the wrong type is the schema's to refuse
        return celtypes.IntType(value)
    if kind == "object" and isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        converted = {}
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else {})
            converted[celtypes.StringType(key)] = to_cel(sub, item)
        return celtypes.MapType(converted)
    if kind == "array" and isinstance(value, list):
        return celtypes.ListType([to_cel(schema.get("items", {}), item) for item in value])
    return celpy.json_to_cel(value)


def cel_violations(schema: dict[str, Any], value: Any, path: str = "") -> list[Violation]:
    """Every CEL rule that fails, at every level of the (defaulted) value."""
    found: list[Violation] = []
    for validation in schema.get("x-kubernetes-validations", []):
        reported_at = path
        for part in validation.get("fieldPath", "").split(".")[1:]:
            reported_at = join(reported_at, part)
        reported_at = reported_at or "<root>"
        try:
            result = _program(validation["rule"]).evaluate({"self": to_cel(schema, value)})
        except celpy.CELEvalError as exc:
            found.append(Violation(reported_at, f"evaluation error: {exc}"))
            continue
        if isinstance(result, celpy.CELEvalError):
            found.append(Violation(reported_at, f"evaluation error: {result}"))
        elif not result:
            found.append(Violation(reported_at, validation["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += cel_violations(sub, value[name], join(path, name))
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, item in value.items():
                found += cel_violations(additional, item, join(path, key))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += cel_violations(schema["items"], item, join(path, index))
    return found


def admit(schema: dict[str, Any], obj: Any) -> tuple[Any, list[jsonschema.ValidationError], list[Violation]]:
    """Default, then validate: the stored object, schema errors and CEL violations."""
    defaulted = apply_defaults(schema, obj)
    return defaulted, schema_errors(schema, defaulted), cel_violations(schema, defaulted)
