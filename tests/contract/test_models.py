"""The store's records and their JSON codecs (IoT Hub identity registry field names)."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace

import pytest

from hybridrelay.errors import ValidationError
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.store.models import (
    Authentication,
    Device,
    Grants,
    HybridConnection,
    Rule,
    SymmetricKey,
    X509Thumbprint,
    format_time,
    parse_time,
)
from hybridrelay.relay.store.records import (
    Minter,
    decode_continuation,
    encode_continuation,
    etag_matches,
)

KEY_A = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
KEY_B = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="

DEVICE = Device(
    device_id="dev:1@site",
    generation_id="636423465617612271",
    etag="AAAAAAAAAAE=",
    status="disabled",
    status_reason="lost in transit",
    status_update_time=1_700_000_000.123456,
    connection_state="connected",
    connection_state_updated_time=1_700_000_100.5,
    last_activity_time=None,
    authentication=Authentication(
        symmetric_key=SymmetricKey(primary_key=KEY_A, secondary_key=KEY_B)
    ),
    grants=Grants(listen=("sensors/*",), send=("commands", "alerts/??")),
)


@pytest.mark.parametrize(
    "module",
    [
        "hybridrelay.relay.store.base",
        "hybridrelay.relay.store.models",
        "hybridrelay.relay.store.records",
        "hybridrelay.relay.store.checks",
        "hybridrelay.relay.store.events",
        "hybridrelay.relay.store.sqlite",
        "hybridrelay.relay.store.sqlite.engine",
        "hybridrelay.relay.store.sqlite.hybrid_connections",
        "hybridrelay.relay.store.sqlite.devices",
        "hybridrelay.relay.store.sqlite.certificates",
        "hybridrelay.relay.store.redis",
        "hybridrelay.relay.store.redis.engine",
        "hybridrelay.relay.store.redis.hybrid_connections",
        "hybridrelay.relay.store.redis.devices",
        "hybridrelay.relay.store.redis.certificates",
        "hybridrelay.relay.store.redis_adapter",
    ],
)
def test_all_is_declared_and_complete(module: str) -> None:
    loaded = importlib.import_module(module)
    assert loaded.__all__
    for name in loaded.__all__:
        assert hasattr(loaded, name), f"{module}.__all__ names missing {name}"


def test_device_json_uses_the_iot_hub_field_names() -> None:
    doc = DEVICE.to_json()
    assert list(doc) == [
        "deviceId",
        "generationId",
        "etag",
        "status",
        "statusReason",
        "statusUpdateTime",
        "connectionState",
        "connectionStateUpdatedTime",
        "lastActivityTime",
        "authentication",
        "grants",
        "checkInIntervalSeconds",
    ]
    assert doc["checkInIntervalSeconds"] is None
    assert doc["connectionState"] == "Connected"
    assert doc["statusUpdateTime"] == "2023-11-14T22:13:20.123456Z"
    assert doc["lastActivityTime"] == "0001-01-01T00:00:00Z"
    assert doc["authentication"] == {
        "type": "sas",
        "symmetricKey": {"primaryKey": KEY_A, "secondaryKey": KEY_B},
        "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
    }
    assert doc["grants"] == {"listen": ["sensors/*"], "send": ["commands", "alerts/??"]}


def test_device_json_round_trips() -> None:
    text = json.dumps(DEVICE.to_json())
    assert Device.from_json(json.loads(text)) == DEVICE
    x509 = replace(
        DEVICE,
        authentication=Authentication(
            type="selfSigned", x509_thumbprint=X509Thumbprint(primary_thumbprint="ab" * 32)
        ),
    )
    assert Device.from_json(json.loads(json.dumps(x509.to_json()))) == x509


def test_device_from_json_tolerates_iot_hub_extras_and_fills_defaults() -> None:
    device = Device.from_json(
        {
            "deviceId": "d1",
            "capabilities": {"iotEdge": False},
            "cloudToDeviceMessageCount": 0,
            "connectionState": "Disconnected",
            "lastActivityTime": "2023-01-01T12:34:56.1234567Z",
        }
    )
    assert device.status == "enabled"
    assert device.authentication == Authentication()
    assert device.last_activity_time == parse_time("x", "2023-01-01T12:34:56.123456Z")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"deviceId": "d", "status": "paused"}, "status"),
        ({"deviceId": "d", "statusReason": "x" * 129}, "statusReason"),
        ({"deviceId": "d", "connectionState": "maybe"}, "connectionState"),
        ({"deviceId": 7}, "deviceId"),
        ({"deviceId": "d", "authentication": {"type": "password"}}, "authentication.type"),
        (
            {"deviceId": "d", "authentication": {"symmetricKey": {"primaryKey": KEY_A}}},
            "authentication.symmetricKey",
        ),
        (
            {
                "deviceId": "d",
                "authentication": {"symmetricKey": {"primaryKey": "bm90", "secondaryKey": KEY_B}},
            },
            "authentication.symmetricKey.primaryKey",
        ),
        (
            {
                "deviceId": "d",
                "authentication": {"symmetricKey": {"primaryKey": "!!", "secondaryKey": KEY_B}},
            },
            "authentication.symmetricKey.primaryKey",
        ),
        (
            {"deviceId": "d", "authentication": {"type": "selfSigned"}},
            "authentication.x509Thumbprint",
        ),
        (
            {
                "deviceId": "d",
                "authentication": {
                    "type": "selfSigned",
                    "x509Thumbprint": {"primaryThumbprint": "xyz"},
                },
            },
            "authentication.x509Thumbprint.primaryThumbprint",
        ),
        (
            {
                "deviceId": "d",
                "authentication": {
                    "type": "certificateAuthority",
                    "symmetricKey": {"primaryKey": KEY_A, "secondaryKey": KEY_B},
                },
            },
            "authentication.symmetricKey",
        ),
        ({"deviceId": "d", "grants": {"listen": ["bad name"]}}, "grants.listen[0]"),
        ({"deviceId": "d", "grants": {"send": "not-a-list"}}, "grants.send"),
        ({"deviceId": "d", "statusUpdateTime": "yesterday"}, "statusUpdateTime"),
        ({"deviceId": "d", "statusUpdateTime": "2023-01-01T00:00:00"}, "statusUpdateTime"),
        ([], "device"),
    ],
)
def test_invalid_device_documents_name_the_field(doc: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Device.from_json(doc)
    assert caught.value.field == field


def test_device_id_in_the_path_must_match_the_body() -> None:
    assert Device.from_json({}, device_id="from-path").device_id == "from-path"
    with pytest.raises(ValidationError):
        Device.from_json({"deviceId": "other"}, device_id="from-path")


def test_grants_match_names_and_patterns_case_insensitively() -> None:
    grants = Grants(listen=("Sensors/*", "exact"), send=("cmd-?",))
    assert grants.allows("sensors/temp/1", Rights.LISTEN)
    assert grants.allows("EXACT", Rights.LISTEN)
    assert not grants.allows("exact", Rights.SEND)
    assert grants.allows("cmd-1", Rights.SEND)
    assert not grants.allows("cmd-12", Rights.SEND)
    assert not grants.allows("other", Rights.LISTEN | Rights.SEND)


def test_secrets_stay_out_of_repr() -> None:
    keys = SymmetricKey(primary_key=KEY_A, secondary_key=KEY_B)
    rule = Rule(name="r", primary_key="p" * 20, secondary_key="s" * 20, rights=Rights.SEND)
    assert KEY_A not in repr(keys)
    assert KEY_A not in repr(
        Device(device_id="d", authentication=Authentication(symmetric_key=keys))
    )
    assert "p" * 20 not in repr(rule)


def test_rule_json_shows_keys_only_when_asked() -> None:
    rule = Rule(
        name="r", primary_key="p" * 20, secondary_key=None, rights=Rights.LISTEN | Rights.MANAGE
    )
    assert rule.to_json(include_keys=False) == {
        "name": "r",
        "rights": ["Listen", "Manage"],
        "configOwned": False,
    }
    assert Rule.from_json(rule.to_json()) == rule


def test_hybrid_connection_json_round_trips() -> None:
    hc = HybridConnection(
        name="a/b",
        http=False,
        max_listeners=3,
        request_timeout=2.5,
        user_metadata="meta",
        created_at=1_700_000_000.0,
        updated_at=1_700_000_001.5,
        etag="e",
    )
    doc = hc.to_json()
    assert doc["requiresClientAuthorization"] is True
    assert doc["createdAt"] == "2023-11-14T22:13:20.000000Z"
    assert HybridConnection.from_json(json.loads(json.dumps(doc))) == hc
    assert HybridConnection.from_json({}, name="from-path").name == "from-path"


def test_times_round_trip_at_microsecond_precision() -> None:
    minter = Minter(now=lambda: 1_700_000_000.1234567891, rng=bytes)
    t = minter.now()
    assert parse_time("t", format_time(t)) == t
    assert format_time(None) == "0001-01-01T00:00:00Z"
    assert parse_time("t", "0001-01-01T00:00:00Z") is None


def test_etag_matching_accepts_http_spellings() -> None:
    assert etag_matches("abc", "abc")
    assert etag_matches("abc", '"abc"')
    assert etag_matches("abc", 'W/"abc"')
    assert etag_matches("abc", "*")
    assert not etag_matches("abc", "abd")
    assert not etag_matches("abc", "")


@pytest.mark.parametrize("after", ["d00001", "Orders/EU", "'quoted'$"])
def test_continuation_tokens_round_trip(after: str) -> None:
    assert decode_continuation(encode_continuation(after)) == after


def test_minted_values_come_from_the_injected_source() -> None:
    minter = Minter(now=lambda: 5.0, rng=lambda n: b"\x01" * n)
    assert minter.generation_id() == minter.generation_id()
    assert len(minter.generation_id()) == 18
    assert minter.key() == "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
