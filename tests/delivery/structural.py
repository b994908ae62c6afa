"""Structural expectations for the custom resources the chart renders, which kubernetes-validate cannot check.

kubernetes-validate carries the schemas of the built-in kinds only. Rather than vendor the CRDs of the
prometheus-operator (ServiceMonitor, PodMonitor, PrometheusRule, monitoring.coreos.com/v1) and of
cert-manager (Certificate, Issuer, cert-manager.io/v1), each kind is held here to a small hand-written
JSON Schema of the fields the chart writes, taken from those projects' API references: the types, the
required fields and the allowed values, with unknown fields refused so that a misspelt field fails.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

CUSTOM_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")

_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _STRING_MAP, "annotations": _STRING_MAP},
    "additionalProperties": False,
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": _STRING,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": _STRING},
                },
            },
        },
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STRING}},
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": _STRING,
        "targetLabel": _STRING,
        "regex": _STRING,
        "modulus": {"type": "integer"},
        "replacement": _STRING,
        "action": {
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ]
        },
    },
}
_ENDPOINT_FIELDS = {
    "port": _STRING,
    "path": _STRING,
    "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": _RELABEL},
    "metricRelabelings": {"type": "array", "items": _RELABEL},
}
_ENDPOINT = {"type": "object", "additionalProperties": False, "properties": _ENDPOINT_FIELDS}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "oneOf": [{"required": ["record", "expr"]}, {"required": ["alert", "expr"]}],
    "properties": {
        "record": _STRING,
        "alert": _STRING,
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": _STRING, "kind": _STRING, "group": _STRING},
}


def _resource(kind: str, api_version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _resource(
        "ServiceMonitor",
        "monitoring.coreos.com/v1",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "jobLabel": _STRING,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        },
    ),
    "PodMonitor": _resource(
        "PodMonitor",
        "monitoring.coreos.com/v1",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "jobLabel": _STRING,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        },
    ),
    "PrometheusRule": _resource(
        "PrometheusRule",
        "monitoring.coreos.com/v1",
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _STRING,
                            "interval": _DURATION,
                            "limit": {"type": "integer"},
                            "rules": {"type": "array", "items": _RULE},
                        },
                    },
                }
            },
        },
    ),
    "Certificate": _resource(
        "Certificate",
        "cert-manager.io/v1",
        {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "additionalProperties": False,
            "properties": {
                "secretName": _STRING,
                "commonName": _STRING,
                "dnsNames": {"type": "array", "minItems": 1, "items": _STRING},
                "duration": _STRING,
                "renewBefore": _STRING,
                "issuerRef": _ISSUER_REF,
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    },
                },
            },
        },
    ),
    "Issuer": _resource(
        "Issuer",
        "cert-manager.io/v1",
        {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {"selfSigned": {"type": "object"}, "ca": {"type": "object"}},
        },
    ),
}


def is_custom_resource(document: dict[str, Any]) -> bool:
    return str(document.get("apiVersion", "")).startswith(CUSTOM_GROUPS)


def problems(document: dict[str, Any]) -> list[str]:
    schema = SCHEMAS.get(str(document.get("kind")))
    if schema is None:
        return [f"no structural expectation for {document.get('apiVersion')} {document.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


_IANA_SERVICE_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")


def is_iana_service_name(name: str) -> bool:
    """A valid Kubernetes port name: at most 15 characters, a-z 0-9 and inner single hyphens, a letter."""
    return bool(_IANA_SERVICE_NAME.match(name))
