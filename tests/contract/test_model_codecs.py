"""The JSON codecs of hybrid connections, rules and CA certificates: exact documents, round
trips and the field each refusal names (the management API answers 400 with that text)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hybridrelay.errors import ValidationError
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.mgmt.openapi import build_openapi
from hybridrelay.relay.store.certificates import CaCertificate
from hybridrelay.relay.store.models import HYBRID_CONNECTION, Device, HybridConnection, Rule

HC = HybridConnection(
    name="a/b",
    requires_client_authorization=False,
    http=True,
    max_listeners=7,
    request_timeout=12.5,
    user_metadata="héllo",
    created_at=1_700_000_000.25,
    updated_at=1_700_000_100.0,
    config_owned=True,
    etag="e1",
    status="disabled",
)
RULE = Rule(
    name="r.1",
    primary_key="p" * 44,
    secondary_key="s" * 44,
    rights=Rights.SEND | Rights.LISTEN,
    config_owned=True,
)
CERT = CaCertificate(
    name="ca-1",
    pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    thumbprint="AB" * 32,
    subject="CN=root",
    not_after=1_900_000_000.0,
    is_verified=True,
    verification_code="CODE",
    etag="e2",
    created=1_700_000_000.5,
)


def _through_json(doc: dict[str, object]) -> object:
    return json.loads(json.dumps(doc))


def test_hybrid_connection_document_is_exact() -> None:
    assert list(HC.to_json().items()) == [
        ("name", "a/b"),
        ("status", "disabled"),
        ("requiresClientAuthorization", False),
        ("http", True),
        ("maxListeners", 7),
        ("requestTimeout", 12.5),
        ("userMetadata", "héllo"),
        ("createdAt", "2023-11-14T22:13:20.250000Z"),
        ("updatedAt", "2023-11-14T22:15:00.000000Z"),
        ("configOwned", True),
        ("etag", "e1"),
    ]
    assert HybridConnection.from_json(_through_json(HC.to_json())) == HC


def test_hybrid_connection_defaults_fill_what_is_absent_or_null() -> None:
    assert HybridConnection.from_json({"name": "x"}) == HybridConnection(name="x")
    nulls = {"name": "x", "http": None, "requestTimeout": None, "userMetadata": None}
    assert HybridConnection.from_json({**nulls, "etag": None}) == HybridConnection(name="x")
    assert HybridConnection.from_json({"name": "body"}, name="path").name == "path"
    never = {"name": "x", "createdAt": "0001-01-01T00:00:00Z", "updatedAt": None}
    assert HybridConnection.from_json(never).created_at is None


def test_rule_document_is_exact() -> None:
    assert list(RULE.to_json().items()) == [
        ("name", "r.1"),
        ("rights", ["Listen", "Send"]),
        ("configOwned", True),
        ("primaryKey", "p" * 44),
        ("secondaryKey", "s" * 44),
    ]
    assert list(RULE.to_json(include_keys=False)) == ["name", "rights", "configOwned"]
    assert Rule.from_json(_through_json(RULE.to_json())) == RULE
    no_secondary = {"name": "r", "primaryKey": "k", "rights": ["Manage"]}
    assert Rule.from_json(no_secondary) == Rule(
        name="r", primary_key="k", secondary_key=None, rights=Rights.MANAGE
    )


def test_ca_certificate_document_is_exact() -> None:
    assert list(CERT.to_json().items()) == [
        ("name", "ca-1"),
        ("certificate", CERT.pem),
        ("thumbprint", "AB" * 32),
        ("subject", "CN=root"),
        ("expiry", "2030-03-17T17:46:40.000000Z"),
        ("isVerified", True),
        ("verificationCode", "CODE"),
        ("etag", "e2"),
        ("created", "2023-11-14T22:13:20.500000Z"),
    ]
    assert CaCertificate.from_json(_through_json(CERT.to_json())) == CERT
    bare = CaCertificate(name="c", pem="P", thumbprint="T", subject="", not_after=1.0)
    assert CaCertificate.from_json(_through_json(bare.to_json())) == bare


_TIME = "2030-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ([], "hybridConnection", "must be a JSON object"),
        ({}, "name", "must be a string"),
        ({"name": 1}, "name", "must be a string"),
        ({"name": ""}, "name", "must be 1 to 260 characters"),
        (
            {"name": "a", "requiresClientAuthorization": "x"},
            "requiresClientAuthorization",
            "must be true or false",
        ),
        ({"name": "a", "http": 1}, "http", "must be true or false"),
        ({"name": "a", "maxListeners": True}, "maxListeners", "must be an integer"),
        ({"name": "a", "maxListeners": 1.5}, "maxListeners", "must be an integer"),
        ({"name": "a", "maxListeners": 0}, "maxListeners", "must be between 1 and 10000"),
        ({"name": "a", "maxListeners": 10001}, "maxListeners", "must be between 1 and 10000"),
        ({"name": "a", "requestTimeout": "1"}, "requestTimeout", "must be a number"),
        ({"name": "a", "requestTimeout": True}, "requestTimeout", "must be a number"),
        (
            {"name": "a", "requestTimeout": 0.01},
            "requestTimeout",
            "must be between 0.1 and 3600 seconds",
        ),
        (
            {"name": "a", "requestTimeout": 3601},
            "requestTimeout",
            "must be between 0.1 and 3600 seconds",
        ),
        ({"name": "a", "userMetadata": 5}, "userMetadata", "must be a string"),
        ({"name": "a", "userMetadata": "é" * 513}, "userMetadata", "at most 1024 bytes of UTF-8"),
        ({"name": "a", "createdAt": 5}, "createdAt", "must be an ISO 8601 time"),
        ({"name": "a", "updatedAt": "x"}, "updatedAt", "must be an ISO 8601 time"),
        (
            {"name": "a", "createdAt": "2020-01-01T00:00:00"},
            "createdAt",
            "must carry a time zone (Z)",
        ),
        ({"name": "a", "configOwned": None}, "configOwned", "must be true or false"),
        ({"name": "a", "etag": 5}, "etag", "must be a string"),
        ({"name": "a", "status": "x"}, "status", "must be 'enabled' or 'disabled'"),
        ({"name": "a", "status": None}, "status", "must be 'enabled' or 'disabled'"),
    ],
)
def test_invalid_hybrid_connections_name_the_field(doc: object, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HybridConnection.from_json(doc)
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {message}")


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        (5, "rule", "must be a JSON object"),
        ({}, "name", "must be a string"),
        (
            {"name": "-x"},
            "name",
            "rule names are 1-256 letters, digits, '.', '_' and '-', starting alphanumeric",
        ),
        ({"name": "r", "rights": ["Send"]}, "primaryKey", "must be a string"),
        (
            {"name": "r", "primaryKey": "k"},
            "rights",
            "must list at least one of Listen, Send, Manage",
        ),
        (
            {"name": "r", "primaryKey": "k", "rights": []},
            "rights",
            "must list at least one of Listen, Send, Manage",
        ),
        (
            {"name": "r", "primaryKey": "k", "rights": ["x"]},
            "rights",
            "unknown right 'x' (expected Listen, Send or Manage)",
        ),
        (
            {"name": "r", "primaryKey": "k", "rights": "Listen"},
            "rights",
            "must be a list of strings",
        ),
        ({"name": "r", "primaryKey": "k", "rights": [1]}, "rights[0]", "must be a string"),
        (
            {"name": "r", "primaryKey": "k", "rights": ["Send"], "secondaryKey": 1},
            "secondaryKey",
            "must be a string",
        ),
        (
            {"name": "r", "primaryKey": "k", "rights": ["Send"], "configOwned": "no"},
            "configOwned",
            "must be true or false",
        ),
    ],
)
def test_invalid_rules_name_the_field(doc: object, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Rule.from_json(doc)
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {message}")


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        (5, "certificate", "must be a JSON object"),
        (
            {"name": "a", "certificate": "p", "thumbprint": "t", "expiry": "x"},
            "expiry",
            "must be an ISO 8601 time",
        ),
        (
            {"name": "a b", "certificate": "p", "thumbprint": "t", "expiry": _TIME},
            "name",
            "1 to 128 characters of letters, digits, '.', '_', '-'",
        ),
        (
            {"name": "a", "certificate": "p", "thumbprint": "t", "expiry": _TIME, "created": 3},
            "created",
            "must be an ISO 8601 time",
        ),
    ],
)
def test_invalid_certificate_records_name_the_field(doc: object, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CaCertificate.from_json(doc)
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {message}")


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"name": "a", "certificate": "p", "thumbprint": "t"},
        {"name": 1, "certificate": "p", "thumbprint": "t", "expiry": _TIME},
        {"name": "a", "certificate": None, "thumbprint": "t", "expiry": _TIME},
    ],
)
def test_incomplete_certificate_records_are_refused(doc: object) -> None:
    with pytest.raises(ValidationError):
        CaCertificate.from_json(doc)


_BAD_CHAR = (
    "invalid character ' ' (U+0020) at position 1; allowed: ASCII letters, digits and "
    "-.+%_#*?!(),:=@$'"
)


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ([], "device", "must be a JSON object"),
        ({}, "deviceId", "must be a string"),
        ({"deviceId": 7}, "deviceId", "must be a string"),
        ({"deviceId": ""}, "deviceId", "must not be empty"),
        ({"deviceId": "a b"}, "deviceId", _BAD_CHAR),
        ({"deviceId": "x" * 129}, "deviceId", "at most 128 characters (got 129)"),
        ({"deviceId": "d", "generationId": 5}, "generationId", "must be a string"),
        ({"deviceId": "d", "etag": 5}, "etag", "must be a string"),
        ({"deviceId": "d", "status": "paused"}, "status", "must be enabled or disabled"),
        ({"deviceId": "d", "status": 5}, "status", "must be a string"),
        ({"deviceId": "d", "status": None}, "status", "must be a string"),
        ({"deviceId": "d", "statusReason": 5}, "statusReason", "must be a string"),
        ({"deviceId": "d", "statusReason": "x" * 129}, "statusReason", "at most 128 characters"),
        (
            {"deviceId": "d", "statusUpdateTime": "y"},
            "statusUpdateTime",
            "must be an ISO 8601 time",
        ),
        (
            {"deviceId": "d", "connectionState": "maybe"},
            "connectionState",
            "must be Connected or Disconnected",
        ),
        ({"deviceId": "d", "connectionState": 5}, "connectionState", "must be a string"),
        (
            {"deviceId": "d", "connectionStateUpdatedTime": 1},
            "connectionStateUpdatedTime",
            "must be an ISO 8601 time",
        ),
        (
            {"deviceId": "d", "lastActivityTime": "2023-01-01T00:00:00"},
            "lastActivityTime",
            "must carry a time zone (Z)",
        ),
        ({"deviceId": "d", "authentication": 5}, "authentication", "must be a JSON object"),
        ({"deviceId": "d", "grants": [1]}, "grants", "must be a JSON object"),
        ({"deviceId": "d", "grants": {"send": "x"}}, "grants.send", "must be a list of strings"),
        ({"deviceId": "d", "grants": {"listen": [1]}}, "grants.listen[0]", "must be a string"),
        (
            {"deviceId": "d", "grants": {"listen": ["a b"]}},
            "grants.listen[0]",
            "a hybrid connection name or pattern: letters, digits, '.', '_', '-', '/', '*' and "
            "'?', at most 260 characters",
        ),
        ({"deviceId": "d", "grants": {"send": ["a"] * 101}}, "grants.send", "at most 100 entries"),
        (
            {"deviceId": "d", "checkInIntervalSeconds": 1.5},
            "checkInIntervalSeconds",
            "must be a whole number of seconds",
        ),
        (
            {"deviceId": "d", "checkInIntervalSeconds": True},
            "checkInIntervalSeconds",
            "must be a whole number of seconds",
        ),
        (
            {"deviceId": "d", "checkInIntervalSeconds": 0},
            "checkInIntervalSeconds",
            "must be between 1 and 31622400",
        ),
        (
            {"deviceId": "d", "checkInIntervalSeconds": 31622401},
            "checkInIntervalSeconds",
            "must be between 1 and 31622400",
        ),
    ],
)
def test_invalid_devices_name_the_field(doc: object, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Device.from_json(doc)
    assert (caught.value.field, caught.value.reason) == (field, message)


def test_device_nulls_take_the_defaults_and_the_path_names_the_device() -> None:
    nulls = {"authentication": None, "grants": None, "etag": None, "generationId": None}
    assert Device.from_json({"deviceId": "d", **nulls}) == Device(device_id="d")
    assert Device.from_json({}, device_id="d") == Device(device_id="d")
    assert Device.from_json({"deviceId": None}, device_id="d") == Device(device_id="d")
    assert Device.from_json({"connectionState": "CONNECTED"}, device_id="d").connection_state == (
        "connected"
    )
    with pytest.raises(ValidationError) as caught:
        Device.from_json({"deviceId": "x"}, device_id="y")
    assert caught.value.reason == "does not match the deviceId in the path"
    with pytest.raises(ValidationError) as caught:
        Device.from_json({}, device_id="a b")
    assert (caught.value.field, caught.value.reason) == ("deviceId", _BAD_CHAR)


def test_the_documented_bounds_are_the_ones_the_decoder_keeps() -> None:
    document: Any = build_openapi()
    properties = document["components"]["schemas"]["HybridConnectionInput"]["properties"]
    bounded = [f for f in HYBRID_CONNECTION.fields if f.minimum is not None and f.settable]
    assert {f.name for f in bounded} == {"maxListeners", "requestTimeout"}
    for f in bounded:
        low, high = f.minimum, f.maximum
        assert low is not None
        assert high is not None
        assert (properties[f.name]["minimum"], properties[f.name]["maximum"]) == (low, high)
        for inside in (low, high):
            HybridConnection.from_json({"name": "a", f.name: inside})
        for outside in (low - 0.01, high + 1):
            with pytest.raises(ValidationError) as caught:
                HybridConnection.from_json({"name": "a", f.name: outside})
            assert caught.value.field == f.name
    assert set(properties) == set(HYBRID_CONNECTION.settable())
