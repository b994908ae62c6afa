"""The VoiceLane CustomResourceDefinition, generated from the typed API in `api.py`.

`build_crd()` turns the pydantic JSON schema of the spec and status into a
Kubernetes structural schema: references inlined, optional fields as absent
rather than null, JSON-Schema-2020 keywords rewritten into their OpenAPI v3.0
forms, free-form objects marked `x-kubernetes-preserve-unknown-fields`, and each
model's CEL rules carried as `x-kubernetes-validations`. Any keyword the
conversion does not know is an error, so a constraint can never be dropped
silently.

`python -m voicelane.operator.crd --write` refreshes the committed copies in
manifests/ and the Helm chart; a test fails when they are stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from voicelane.operator.api import (
    CRD_NAME,
    GROUP,
    KIND,
    LANE_NAME_RULE,
    PLURAL,
    SINGULAR,
    VERSION,
    VoiceLaneSpec,
    VoiceLaneStatus,
)

# Where the committed copies live, relative to the repository root.
CRD_COPIES: tuple[str, ...] = (
    "manifests/crd/voicelanes.voicelane.dev.yaml",
    "charts/voicelane/crds/voicelanes.voicelane.dev.yaml",
)

YAML_HEADER = (
    "# The VoiceLane CustomResourceDefinition. Generated from operator/api.py (voicelane.operator.api) by\n"
    "# `python -m voicelane.operator.crd --write`; do not edit by hand.\n"
)

_STRUCTURAL_KEYS = frozenset(
    {
        "type",
        "description",
        "default",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "format",
        "nullable",
        "anyOf",
    }
)
# Dropped on purpose: titles repeat the property name; `additionalProperties: false`
# is not allowed beside `properties` in a CRD (unknown fields are pruned instead).
_DROPPED_KEYS = frozenset({"title"})


class SchemaConversionError(ValueError):
    """The pydantic schema uses something a structural schema cannot express."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and collapse `anyOf` with null; siblings of a `$ref` win over the target."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs), **node}
    options = node.get("anyOf")
    if options is not None and not node.get("x-kubernetes-int-or-string"):
        non_null = [option for option in options if option != {"type": "null"}]
        if len(non_null) != len(options) and node.get("default", ...) is None:
            # An optional field is simply absent in Kubernetes, never null.
            del node["default"]
        if len(non_null) != 1:
            raise SchemaConversionError(f"cannot express anyOf {options!r} structurally")
        del node["anyOf"]
        node = {**_resolve(non_null[0], defs), **node}
    return node


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    validations: list[dict[str, str]] = list(node.pop("x-kubernetes-validations", []))

    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if isinstance(node.get("exclusiveMaximum"), int | float) and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True

    key_names = node.pop("propertyNames", None)
    if key_names is not None:
        allowed = _resolve(key_names, defs).get("enum")
        if not allowed:
            raise SchemaConversionError(f"{path}: only enum-keyed maps are supported")
        listed = ", ".join(f"'{key}'" for key in allowed)
        validations.append(
            {"rule": f"self.all(k, k in [{listed}])", "message": f"keys must be one of: {', '.join(allowed)}"}
        )
        # Bounded so the API server's CEL cost estimate stays small.
        node.setdefault("maxProperties", len(allowed))

    additional = node.pop("additionalProperties", None)
    if additional is True or additional == {}:
        if "properties" in node:
            raise SchemaConversionError(f"{path}: open objects with fixed properties are not supported")
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(additional, dict):
        out["additionalProperties"] = _structural(additional, defs, f"{path}[*]")

    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out["properties"] = {name: _structural(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs, f"{path}[]")
        elif key == "default":
            default = _structural_default(value, node)
            if default is not None:
                out["default"] = default
        elif key in _STRUCTURAL_KEYS or key.startswith("x-kubernetes-"):
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaConversionError(f"{path}: the keyword {key!r} has no structural equivalent")

    if "type" not in out and not (
        out.get("x-kubernetes-int-or-string") or out.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaConversionError(f"{path}: every node of a structural schema needs a type")
    if validations:
        out["x-kubernetes-validations"] = validations
    return out


def _structural_default(value: Any, node: dict[str, Any]) -> Any:
    """The default a CRD should carry, or None for none.

    Objects with fixed properties default to `{}` so that their own fields'
    defaults apply (Kubernetes defaults nested fields only inside an existing
    object). Lists and maps get no default: the sidecar's built-in collections
    (phrases, patterns, prompts) apply when they are omitted, and a CRD default
    would copy them into every stored lane.
    """
    if value is None or isinstance(value, list):
        return None
    if isinstance(value, dict):
        if "properties" in node and not node.get("required"):
            return {}
        return None
    return value


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural openAPIV3Schema of a pydantic model (by its camelCase aliases)."""
    generated = model.model_json_schema(by_alias=True, mode="validation")
    defs = generated.pop("$defs", {})
    return _structural(generated, defs, model.__name__)


def printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Whether both tiers serve with their models loaded.",
        },
        {"name": "Fast model", "type": "string", "jsonPath": ".spec.fast.model"},
        {"name": "Deep model", "type": "string", "jsonPath": ".spec.deep.model"},
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of VoiceLane."""
    spec_schema = structural_schema(VoiceLaneSpec)
    status_schema = structural_schema(VoiceLaneStatus)
    root: dict[str, Any] = {
        "type": "object",
        "description": "A VoiceLane: warm, reserved fast and deep Ollama tiers and the policy of their sidecars.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Declaring metadata.name lets the name rule report its failures at that field (its fieldPath).
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [LANE_NAME_RULE.as_validation()],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "voicelane", "app.kubernetes.io/part-of": "voicelane"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": ["vl"],
                "categories": ["voice"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the committed YAML text."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, allow_unicode=True, width=120)
    return YAML_HEADER + body


def write_copies(root: Path) -> list[Path]:
    text = crd_yaml()
    written = []
    for relative in CRD_COPIES:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicelane.operator.crd", description="Print or write the VoiceLane CRD."
    )
    parser.add_argument("--write", action="store_true", help=f"Write the committed copies ({', '.join(CRD_COPIES)}).")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        help="Repository root for --write (default: current directory).",
    )
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(crd_yaml())
        return 0
    if not (args.root / "pyproject.toml").is_file():
        print(f"{args.root}: not the repository root (no pyproject.toml); pass --root", file=sys.stderr)
        return 2
    for path in write_copies(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
