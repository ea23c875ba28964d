"""The relay's control-channel protocol, driven with messages only (no socket, no clock).

What a listener's messages mean (a response and its adjacent body, HC §4; renewToken),
and the relay's bad-message policy: the first bad text message closes the channel with
its error's code, a stray body is reported and dropped, an empty one ignored.
"""

from __future__ import annotations

import json

import pytest

from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT, CloseCode
from hybridrelay.protocol.messages import Accept, RenewToken, Request, Response, encode
from hybridrelay.relay.control_protocol import (
    BadMessage,
    CloseChannel,
    ControlEvent,
    RelayControl,
    RenewTokenReceived,
    ResponseBodyMissing,
    ResponseInvalid,
    ResponseReceived,
)

ADDRESS = "wss://relay/$hc/hyco?sb-hc-action=request&sb-hc-id=1&sb-hc-rdv=k"
WITH_BODY = Response(request_id="r1", status_code=200, body=True)
NO_BODY = Response(request_id="r2", status_code=204, body=False)
RENEW = RenewToken(token="SharedAccessSignature sr=x&sig=y&se=1&skn=k")


def _feed(control: RelayControl, *messages: str | bytes) -> list[ControlEvent]:
    return [event for message in messages for event in control.receive(message)]


# ------------------------------------------------------------------ good messages


def test_a_response_without_body_is_reported_at_once() -> None:
    assert RelayControl().receive(encode(NO_BODY)) == [ResponseReceived(NO_BODY, None)]


def test_a_response_with_body_waits_for_its_body_and_carries_it() -> None:
    control = RelayControl()
    assert control.receive(encode(WITH_BODY)) == []
    assert control.receive(b"hello") == [ResponseReceived(WITH_BODY, b"hello")]


def test_an_empty_body_message_is_the_body_of_a_body_true_response() -> None:
    control = RelayControl()
    assert _feed(control, encode(WITH_BODY), b"") == [ResponseReceived(WITH_BODY, b"")]


def test_renew_token_is_reported_with_its_token() -> None:
    assert RelayControl().receive(encode(RENEW)) == [RenewTokenReceived(RENEW.token)]


def test_messages_keep_their_order() -> None:
    events = _feed(RelayControl(), encode(WITH_BODY), b"x", encode(RENEW), encode(NO_BODY))
    assert events == [
        ResponseReceived(WITH_BODY, b"x"),
        RenewTokenReceived(RENEW.token),
        ResponseReceived(NO_BODY, None),
    ]


# ------------------------------------------------------------------ adjacency (HC §4)


def test_a_text_message_where_the_body_belongs_misses_the_body_and_is_then_read() -> None:
    events = _feed(RelayControl(), encode(WITH_BODY), encode(NO_BODY))
    assert events == [ResponseBodyMissing(WITH_BODY), ResponseReceived(NO_BODY, None)]


def test_an_empty_binary_message_with_no_response_before_it_is_ignored() -> None:
    # hyco-https sends one after each body:false response.
    control = RelayControl()
    assert _feed(control, encode(NO_BODY), b"") == [ResponseReceived(NO_BODY, None)]
    assert control.closed is None


def test_a_stray_body_is_reported_and_dropped_without_closing() -> None:
    control = RelayControl()
    events = control.receive(b"stray")
    assert [type(event) for event in events] == [BadMessage]
    assert events[0].kind == "stray_body"  # type: ignore[union-attr]
    assert control.closed is None
    assert control.receive(encode(NO_BODY)) == [ResponseReceived(NO_BODY, None)]


# ------------------------------------------------------------------ responses the relay refuses


@pytest.mark.parametrize(
    "response",
    [
        Response(request_id="r", status_code=101, body=False),
        Response(request_id="r", status_code=200, response_headers={"a b": "c"}, body=False),
        Response(request_id="r", status_code=200, response_headers={"a": "x\r\ny"}, body=False),
    ],
)
def test_a_response_that_cannot_go_on_http_is_invalid_and_the_channel_carries_on(
    response: Response,
) -> None:
    control = RelayControl()
    (event,) = control.receive(encode(response))
    assert isinstance(event, ResponseInvalid)
    assert event.response == response
    assert event.reason
    assert control.closed is None


def test_an_invalid_response_with_body_is_reported_once_its_body_came() -> None:
    response = Response(request_id="r", status_code=101, body=True)
    control = RelayControl()
    assert control.receive(encode(response)) == []
    (event,) = control.receive(b"body")
    assert isinstance(event, ResponseInvalid)
    assert event.response == response
    assert control.receive(encode(NO_BODY)) == [ResponseReceived(NO_BODY, None)]


# ------------------------------------------------------------------ bad messages close


def _closes(control: RelayControl, message: str) -> tuple[BadMessage, CloseChannel]:
    bad, close = control.receive(message)
    assert isinstance(bad, BadMessage)
    assert isinstance(close, CloseChannel)
    assert control.closed == close
    return bad, close


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"response": {"statusCode": 200}}),  # requestId missing
        json.dumps({"renewToken": {}, "response": {}}),  # two keys
        json.dumps({"fancyNewKind": {}}),  # a kind HC §3 does not name
    ],
)
def test_an_invalid_text_message_closes_1002(text: str) -> None:
    bad, close = _closes(RelayControl(), text)
    assert bad.kind == "invalid"
    assert close.code == CloseCode.PROTOCOL_ERROR
    assert close.limit is None
    assert close.reason


@pytest.mark.parametrize(
    "message",
    [
        Accept(address=ADDRESS, id="a1", connect_headers={"Sec-WebSocket-Key": "k"}),
        Request(address=ADDRESS, id="q1", request_target="/", method="GET", body=False),
    ],
)
def test_a_message_the_relay_sends_closes_1002(message: Accept | Request) -> None:
    bad, close = _closes(RelayControl(), encode(message))
    assert bad.kind == "not_for_relay"
    assert close.code == CloseCode.PROTOCOL_ERROR
    assert "listeners may only send renewToken and response" in close.reason


def test_a_text_message_over_64_kib_closes_1009_counted_as_control_message_limit() -> None:
    text = json.dumps({"renewToken": {"token": "t" * CONTROL_MESSAGE_LIMIT}})
    bad, close = _closes(RelayControl(), text)
    assert bad.kind == "too_big"
    assert close.code == CloseCode.MESSAGE_TOO_BIG
    assert close.limit == "control_message_limit"


def test_a_close_reason_fits_a_close_frame() -> None:
    _, close = _closes(RelayControl(), "x" * 5000)
    assert len(close.reason.encode()) <= 123


def test_after_the_close_every_message_is_ignored() -> None:
    control = RelayControl()
    _closes(control, "not json")
    assert _feed(control, encode(NO_BODY), encode(RENEW), b"body", "again not json") == []


def test_a_bad_message_where_a_body_belongs_misses_the_body_then_closes() -> None:
    control = RelayControl()
    control.receive(encode(WITH_BODY))
    events = control.receive("not json")
    assert [type(event) for event in events] == [ResponseBodyMissing, BadMessage, CloseChannel]
