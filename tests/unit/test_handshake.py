"""Server side of the WebSocket opening handshake on header mappings (RFC 6455 §4.2)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from hybridrelay.errors import ProtocolError
from hybridrelay.relay.handshake import ClientHandshake, accept_headers, parse_client_handshake

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(**overrides: str | None) -> CIMultiDict[str]:
    base: dict[str, str | None] = {
        "Host": "relay.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": RFC_KEY,
    }
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return CIMultiDict((k, v) for k, v in base.items() if v is not None)


def test_valid_request() -> None:
    hs = parse_client_handshake("GET", request())
    assert hs == ClientHandshake(key=RFC_KEY, protocols=())
    headers = accept_headers(hs, None)
    assert headers == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": RFC_ACCEPT,
    }


def test_header_names_and_tokens_are_case_insensitive() -> None:
    headers = CIMultiDict(
        [
            ("upgrade", "WebSocket"),
            ("CONNECTION", "keep-alive, UPGRADE"),
            ("sec-websocket-version", " 13 "),
            ("SEC-WEBSOCKET-KEY", f" {RFC_KEY} "),
        ]
    )
    hs = parse_client_handshake("GET", headers)
    assert hs.key == RFC_KEY
    assert accept_headers(hs, None)["Sec-WebSocket-Accept"] == RFC_ACCEPT


def test_upgrade_in_a_token_list() -> None:
    hs = parse_client_handshake("GET", request(Upgrade="foo/1, websocket"))
    assert hs.key == RFC_KEY


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "get", "CONNECT"])
def test_non_get_is_refused(method: str) -> None:
    with pytest.raises(ProtocolError, match="GET"):
        parse_client_handshake(method, request())


@pytest.mark.parametrize("value", [None, "", "http/2", "websockets", "web socket"])
def test_missing_or_invalid_upgrade(value: str | None) -> None:
    with pytest.raises(ProtocolError, match="web-socket"):
        parse_client_handshake("GET", request(Upgrade=value))


@pytest.mark.parametrize("value", [None, "", "keep-alive", "close", "upgraded"])
def test_missing_or_invalid_connection(value: str | None) -> None:
    with pytest.raises(ProtocolError, match="Connection"):
        parse_client_handshake("GET", request(Connection=value))


@pytest.mark.parametrize("value", [None, "", "8", "12", "14", "13, 8", "thirteen"])
def test_missing_or_invalid_version(value: str | None) -> None:
    with pytest.raises(ProtocolError, match="Version"):
        parse_client_handshake("GET", request(Sec_WebSocket_Version=value))


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",  # trailing garbage
        "c2hvcnQ=",  # base64, but 5 bytes
        "dGhlIHNhbXBsZSBub25jZSE=",  # 17 bytes
        "dGhlIHNhbXBsZSBub25j ZQ==",  # inner space
    ],
)
def test_missing_or_invalid_key(value: str | None) -> None:
    with pytest.raises(ProtocolError, match="Sec-WebSocket-Key"):
        parse_client_handshake("GET", request(Sec_WebSocket_Key=value))


def test_protocol_error_is_a_400() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_handshake("POST", request())
    assert info.value.http_status == 400


def test_single_protocol_header_with_a_list() -> None:
    hs = parse_client_handshake("GET", request(Sec_WebSocket_Protocol="mqtt, wamp.2.json ,,x"))
    assert hs.protocols == ("mqtt", "wamp.2.json", "x")


def test_multiple_protocol_headers_are_merged_in_order() -> None:
    headers = request()
    headers.add("Sec-WebSocket-Protocol", "mqtt, mqttv3.1")
    headers.add("sec-websocket-protocol", "chat")
    headers.add("SEC-WEBSOCKET-PROTOCOL", " v2.bin , v1.bin")
    hs = parse_client_handshake("GET", headers)
    assert hs.protocols == ("mqtt", "mqttv3.1", "chat", "v2.bin", "v1.bin")


def test_plain_mapping_works_for_a_single_protocol_header() -> None:
    headers = dict(request())
    headers["Sec-WebSocket-Protocol"] = "a, b"
    hs = parse_client_handshake("GET", headers)
    assert hs.protocols == ("a", "b")


def test_empty_protocol_header_offers_nothing() -> None:
    hs = parse_client_handshake("GET", request(Sec_WebSocket_Protocol=""))
    assert hs.protocols == ()


def test_accept_echoes_an_offered_protocol() -> None:
    hs = ClientHandshake(key=RFC_KEY, protocols=("mqtt", "chat"))
    headers = accept_headers(hs, "chat")
    assert headers["Sec-WebSocket-Protocol"] == "chat"
    assert headers["Sec-WebSocket-Accept"] == RFC_ACCEPT


@pytest.mark.parametrize("protocol", [None, "wamp", "", "mqtt,chat"])
def test_accept_does_not_echo_a_protocol_that_was_not_offered(protocol: str | None) -> None:
    hs = ClientHandshake(key=RFC_KEY, protocols=("mqtt", "chat"))
    assert "Sec-WebSocket-Protocol" not in accept_headers(hs, protocol)


def test_accept_without_offers_never_echoes() -> None:
    hs = ClientHandshake(key=RFC_KEY, protocols=())
    assert "Sec-WebSocket-Protocol" not in accept_headers(hs, "mqtt")


def test_accept_never_negotiates_extensions() -> None:
    headers = request(Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits")
    hs = parse_client_handshake("GET", headers)
    assert not any(k.lower() == "sec-websocket-extensions" for k in accept_headers(hs, None))


def test_accept_for_another_key() -> None:
    # Computed independently: base64(sha1("x3JJHMbDL1EzLkh9GBhXDw==" + GUID)).
    hs = ClientHandshake(key="x3JJHMbDL1EzLkh9GBhXDw==", protocols=())
    assert accept_headers(hs, None)["Sec-WebSocket-Accept"] == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="
