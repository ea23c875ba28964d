"""The sans-I/O client opening handshake (protocol/handshake.py), bytes only."""

from __future__ import annotations

import pytest

from hybridrelay import errors
from hybridrelay.protocol.connection import BytesMessage, Connection, Role
from hybridrelay.protocol.frames import encode_frame
from hybridrelay.protocol.handshake import Accepted, ClientHandshake, accept_value

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def response(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def switching(key: str = KEY, *extra: str) -> bytes:
    return response(
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_value(key)}",
        *extra,
    )


def test_request_carries_key_subprotocols_and_extra_headers() -> None:
    hs = ClientHandshake(
        "relay.example:8443",
        "/$hc/a?sb-hc-action=listen",
        subprotocols=["p1", "p2"],
        headers={"ServiceBusAuthorization": "SharedAccessSignature x", "Host": "other"},
        key=KEY,
    )
    assert hs.request == (
        b"GET /$hc/a?sb-hc-action=listen HTTP/1.1\r\n"
        b"Host: other\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: p1, p2\r\n"
        b"ServiceBusAuthorization: SharedAccessSignature x\r\n\r\n"
    )
    assert accept_value(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def test_random_key_per_handshake() -> None:
    assert ClientHandshake("h", "/").key != ClientHandshake("h", "/").key


@pytest.mark.parametrize(
    "headers",
    [{"Sec-WebSocket-Key": "x"}, {"Bad Name": "x"}, {"X-A": "a\r\nInjected: 1"}],
)
def test_reserved_or_invalid_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="header"):
        ClientHandshake("h", "/", headers=headers)


def test_accepted_byte_by_byte_hands_leftover_frames_to_the_connection() -> None:
    hs = ClientHandshake("h", "/", subprotocols=["p1"], key=KEY)
    frame = encode_frame(fin=True, opcode=2, payload=b"early")
    data = switching(KEY, "Sec-WebSocket-Protocol: p1") + frame
    result = None
    for i in range(len(data)):
        result = hs.receive_data(data[i : i + 1])
        if result is not None:
            break
    assert isinstance(result, Accepted)
    assert result.subprotocol == "p1"
    assert result.headers["upgrade"] == "websocket"
    rest = result.leftover + data[i + 1 :]
    assert Connection(Role.CLIENT).receive_data(rest) == [BytesMessage(b"early")]


def test_head_and_frames_in_one_read() -> None:
    hs = ClientHandshake("h", "/", key=KEY)
    frame = encode_frame(fin=True, opcode=2, payload=b"x")
    result = hs.receive_data(switching() + frame)
    assert result is not None
    assert result.leftover == frame
    assert result.subprotocol is None
    with pytest.raises(RuntimeError):
        hs.receive_data(b"more")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("Sec-WebSocket-Protocol: p9",), "not offered"),
        (("Sec-WebSocket-Extensions: permessage-deflate",), "extension"),
    ],
)
def test_bad_101_is_a_protocol_error(extra: tuple[str, ...], match: str) -> None:
    hs = ClientHandshake("h", "/", subprotocols=["p1"], key=KEY)
    with pytest.raises(errors.ProtocolError, match=match):
        hs.receive_data(switching(KEY, *extra))


def test_wrong_accept_key_is_a_protocol_error() -> None:
    hs = ClientHandshake("h", "/")  # a random key: the example's accept value is wrong
    with pytest.raises(errors.ProtocolError, match="Sec-WebSocket-Accept"):
        hs.receive_data(switching(KEY))


def test_malformed_status_line() -> None:
    with pytest.raises(errors.ProtocolError, match="status line"):
        ClientHandshake("h", "/").receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_refusal_carries_status_headers_and_body() -> None:
    hs = ClientHandshake("h", "/")
    body = b'{"error":"no listener"}'
    data = response(
        "HTTP/1.1 404 Not Found",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        body=body,
    )
    assert hs.receive_data(data[:-5]) is None
    assert hs.refused
    with pytest.raises(errors.HandshakeError) as info:
        hs.receive_data(data[-5:])
    assert info.value.status == 404
    assert info.value.reason == "Not Found"
    assert info.value.body == body.decode()
    assert info.value.headers["content-type"] == "application/json"


def test_refusal_body_is_capped_and_chunked_bodies_are_decoded() -> None:
    hs = ClientHandshake("h", "/", max_error_body=10)
    with pytest.raises(errors.HandshakeError) as info:
        hs.receive_data(response("HTTP/1.1 401 Unauthorized", body=b"y" * 50))
    assert info.value.body == "y" * 10
    hs = ClientHandshake("h", "/")
    chunked = response(
        "HTTP/1.1 403 Forbidden", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"
    )
    with pytest.raises(errors.HandshakeError) as info:
        hs.receive_data(chunked)
    assert info.value.status == 403
    assert info.value.body == "hello"


def test_refusal_without_length_ends_at_eof_or_when_the_glue_gives_up() -> None:
    hs = ClientHandshake("h", "/")
    assert hs.receive_data(response("HTTP/1.1 503 Service Unavailable", body=b"busy")) is None
    with pytest.raises(errors.HandshakeError) as info:
        hs.receive_eof()
    assert info.value.status == 503
    assert info.value.body == "busy"
    hs = ClientHandshake("h", "/")
    hs.receive_data(response("HTTP/1.1 410 Gone", body=b"gone"))
    refusal = hs.refusal()
    assert refusal.status == 410
    assert refusal.body == "gone"


def test_eof_before_the_head_is_1006() -> None:
    hs = ClientHandshake("h", "/")
    hs.receive_data(b"HTTP/1.1 101")
    with pytest.raises(errors.ConnectionClosedError) as info:
        hs.receive_eof()
    assert info.value.code == 1006


def test_head_over_the_cap_is_refused_without_waiting_for_its_end() -> None:
    hs = ClientHandshake("h", "/", max_head=1024)
    hs.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n")
    with pytest.raises(errors.PayloadTooBigError):
        hs.receive_data(b"X-Pad: " + b"a" * 2000)
    hs = ClientHandshake("h", "/", max_head=64)
    with pytest.raises(errors.PayloadTooBigError):  # complete, but too long
        hs.receive_data(switching(hs.key))
