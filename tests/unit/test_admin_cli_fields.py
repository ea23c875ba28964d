"""The admin CLI spells the management API's field names as the schema declares them.

The CLI is a client of the HTTP API and imports no relay code, so it keeps its own
spellings; this test holds them to the OpenAPI document that the stored resources'
declarations generate (relay/store/schema.py), so a renamed field cannot drift.
"""

from __future__ import annotations

from typing import Any

from hybridrelay.cli import _parser
from hybridrelay.client.admin_cli import _COLUMNS, _device_changes, _hc_body
from hybridrelay.relay.mgmt.openapi import build_openapi

_SCHEMAS: dict[str, Any] = build_openapi()["components"]["schemas"]  # type: ignore[index]
_RESOURCE = {
    "hc": "HybridConnection",
    "rule": "Rule",
    "device": "Device",
    "nodes": "Node",
    "inspector": "InspectedRequestSummary",
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved: dict[str, Any] = _SCHEMAS[ref.rsplit("/", 1)[-1]]
        return resolved
    return schema


def _has_path(schema_name: str, dotted: str) -> bool:
    schema = _SCHEMAS[schema_name]
    for part in dotted.split("."):
        properties = _resolve(schema).get("properties", {})
        if part not in properties:
            return False
        schema = properties[part]
    return True


def test_table_columns_are_fields_of_the_documents() -> None:
    assert set(_COLUMNS) == set(_RESOURCE)
    for group, columns in _COLUMNS.items():
        missing = [c for c in columns if not _has_path(_RESOURCE[group], c)]
        assert not missing, f"{group}: {missing} not in {_RESOURCE[group]}"


def test_hybrid_connection_options_send_input_fields() -> None:
    args = _parser().parse_args(
        [
            "admin",
            "hc",
            "create",
            "x",
            "--no-client-auth",
            "--http",
            "yes",
            "--max-listeners",
            "3",
            "--request-timeout",
            "5",
            "--metadata",
            "m",
        ]
    )
    body = _hc_body(args)
    assert len(body) == 5
    assert set(body) <= set(_SCHEMAS["HybridConnectionInput"]["properties"])


def test_device_options_send_input_fields() -> None:
    args = _parser().parse_args(
        [
            "admin",
            "device",
            "update",
            "d",
            "--grant-listen",
            "a",
            "--grant-send",
            "b",
            "--auth",
            "x509-thumbprint",
            "--primary-thumbprint",
            "AB" * 20,
        ]
    )
    changes = _device_changes(args, {})
    assert set(changes) == {"grants", "authentication"}
    assert set(changes) <= set(_SCHEMAS["DeviceInput"]["properties"])
    grants = changes["grants"]
    assert isinstance(grants, dict)
    assert all(_has_path("Grants", key) for key in grants)
    authentication = changes["authentication"]
    assert isinstance(authentication, dict)
    assert all(_has_path("Authentication", key) for key in authentication)
    thumbprints = authentication["x509Thumbprint"]
    assert isinstance(thumbprints, dict)
    assert all(_has_path("Authentication", f"x509Thumbprint.{key}") for key in thumbprints)
