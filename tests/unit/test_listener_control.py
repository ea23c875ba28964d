"""The listener's control-channel protocol, driven with messages only (no socket, no clock).

What the relay's messages mean (adjacency of a request and its body, HC §4), what the
listener sends back (renewToken, an inline response or none), and the bad-message
policy: dropped and reported once per kind, unknown kinds tolerated, 1008 after too
many in a row, 1002 at once for a body with no request.
"""

from __future__ import annotations

import json

import pytest

from hybridrelay.listener.control_protocol import (
    DEFAULT_MAX_BAD_MESSAGES,
    AcceptReceived,
    BadMessage,
    CloseChannel,
    ControlEvent,
    ListenerControl,
    RequestBodyMissing,
    RequestReceived,
    inline_response,
    renew_token_message,
    renewal_delay,
)
from hybridrelay.protocol.codes import INLINE_BODY_LIMIT, CloseCode
from hybridrelay.protocol.messages import (
    Accept,
    RenewToken,
    Request,
    Response,
    decode,
    encode,
)

ADDRESS = "wss://relay/$hc/hyco?sb-hc-action=request&sb-hc-id=1&sb-hc-rdv=k"
ACCEPT = Accept(address=ADDRESS, id="a1", connect_headers={"Sec-WebSocket-Key": "k"})
WITH_BODY = Request(address=ADDRESS, id="r1", request_target="/hyco/", method="POST", body=True)
NO_BODY = Request(address=ADDRESS, id="r2", request_target="/hyco/", method="GET", body=False)
RENDEZVOUS_ONLY = Request(address=ADDRESS, id="r3")
HEADER = encode(Response(request_id="r1", status_code=200, body=True))


def _feed(control: ListenerControl, *messages: str | bytes) -> list[ControlEvent]:
    return [event for message in messages for event in control.receive(message)]


def _bad_kinds(events: list[ControlEvent]) -> list[str]:
    return [event.kind for event in events if isinstance(event, BadMessage)]


# ------------------------------------------------------------------ good messages


def test_an_accept_is_reported() -> None:
    assert ListenerControl().receive(encode(ACCEPT)) == [AcceptReceived(ACCEPT)]


def test_an_inline_request_is_reported_with_the_body_message_after_it() -> None:
    control = ListenerControl()
    assert control.receive(encode(WITH_BODY)) == []  # its body comes next (HC §4)
    assert control.receive(b"payload") == [RequestReceived(WITH_BODY, b"payload")]


def test_an_inline_request_with_an_empty_body_message_gets_that_empty_body() -> None:
    assert _feed(ListenerControl(), encode(WITH_BODY), b"") == [RequestReceived(WITH_BODY, b"")]


@pytest.mark.parametrize("request_", [NO_BODY, RENDEZVOUS_ONLY], ids=["body-false", "rendezvous"])
def test_a_request_without_an_inline_body_is_reported_at_once(request_: Request) -> None:
    assert ListenerControl().receive(encode(request_)) == [RequestReceived(request_, None)]


def test_a_text_message_where_a_body_belonged_is_read_as_the_next_message() -> None:
    events = _feed(ListenerControl(), encode(WITH_BODY), encode(ACCEPT))
    assert events[0] == RequestBodyMissing(WITH_BODY)
    assert _bad_kinds(events) == ["body_missing"]
    assert events[-1] == AcceptReceived(ACCEPT)


def test_a_text_body_mid_stream_does_not_lose_the_request_after_it() -> None:
    events = _feed(ListenerControl(), encode(WITH_BODY), encode(WITH_BODY), b"second")
    assert events[0] == RequestBodyMissing(WITH_BODY)
    assert events[-1] == RequestReceived(WITH_BODY, b"second")


# ------------------------------------------------------------------ bad messages


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("not json", "invalid"),
        ('{"accept": {"address": "x"}}', "invalid"),  # fields missing
        ('{"accept": {}, "request": {}}', "invalid"),  # two keys
        ("[1]", "invalid"),
        ('{"accept": "x' + "y" * (64 * 1024) + '"}', "too_big"),
        ('{"somethingNew": {"x": 1}}', "unknown_kind"),
        (encode(Response(request_id="r", status_code=200, body=False)), "not_for_listener"),
        (encode(RenewToken(token="t")), "not_for_listener"),
        (b"", "stray_body"),
    ],
)
def test_a_bad_message_is_dropped_and_reported_with_its_kind(
    message: str | bytes, kind: str
) -> None:
    control = ListenerControl()
    (event,) = control.receive(message)
    assert isinstance(event, BadMessage)
    assert (event.kind, event.first) == (kind, True)
    assert control.bad_counts == {kind: 1}
    assert control.closed is None
    # The channel goes on: the next good message is read as usual.
    assert control.receive(encode(ACCEPT)) == [AcceptReceived(ACCEPT)]


def test_only_the_first_of_each_kind_is_marked_first() -> None:
    control = ListenerControl()
    events = _feed(control, "x", "y", '{"new": {}}', "z", '{"new": {}}')
    firsts = [(event.kind, event.first) for event in events if isinstance(event, BadMessage)]
    assert firsts == [
        ("invalid", True),
        ("invalid", False),
        ("unknown_kind", True),
        ("invalid", False),
        ("unknown_kind", False),
    ]
    assert control.bad_counts == {"invalid": 3, "unknown_kind": 2}


def test_the_reason_is_capped_and_quotes_what_the_relay_wrote() -> None:
    kind = "\x1b[31m" + "k" * 500
    (event,) = ListenerControl().receive(json.dumps({kind: {}}))
    assert isinstance(event, BadMessage)
    assert len(event.reason) <= 200
    assert "\x1b" not in event.reason
    assert "\\x1b" in event.reason


def test_too_many_bad_messages_in_a_row_close_the_channel_1008() -> None:
    control = ListenerControl(max_bad_messages=3)
    events = _feed(control, "bad", "bad")
    assert not any(isinstance(event, CloseChannel) for event in events)
    events = control.receive("bad")
    assert events[-1] == CloseChannel(CloseCode.POLICY_VIOLATION, "3 bad control messages in a row")
    assert control.closed == events[-1]
    # Closed: nothing more is read off the channel.
    assert control.receive(encode(ACCEPT)) == []


def test_a_good_message_between_bad_ones_starts_the_count_again() -> None:
    control = ListenerControl(max_bad_messages=2)
    events = _feed(control, "bad", encode(ACCEPT), "bad", encode(NO_BODY), "bad")
    assert not any(isinstance(event, CloseChannel) for event in events)
    assert control.bad_counts == {"invalid": 3}


def test_a_request_with_its_body_counts_as_good() -> None:
    control = ListenerControl(max_bad_messages=2)
    events = _feed(control, "bad", encode(WITH_BODY), b"x", "bad")
    assert control.closed is None
    assert RequestReceived(WITH_BODY, b"x") in events


def test_unknown_kinds_never_close_the_channel() -> None:
    """A newer relay's message kinds are tolerated (forward compatibility)."""
    control = ListenerControl(max_bad_messages=2)
    events = _feed(control, *['{"later": {}}'] * 10)
    assert control.closed is None
    assert _bad_kinds(events) == ["unknown_kind"] * 10


def test_unknown_kinds_do_not_reset_the_count_either() -> None:
    control = ListenerControl(max_bad_messages=2)
    events = _feed(control, "bad", '{"later": {}}', "bad")
    assert isinstance(events[-1], CloseChannel)


def test_a_missing_body_counts_and_can_be_the_one_too_many() -> None:
    control = ListenerControl(max_bad_messages=2)
    events = _feed(control, "bad", encode(WITH_BODY), encode(ACCEPT))
    # The missing body was the second bad message: the accept after it is not read.
    assert events[1:] == [
        RequestBodyMissing(WITH_BODY),
        BadMessage("body_missing", "request 'r1' came without its body", first=True),
        CloseChannel(CloseCode.POLICY_VIOLATION, "2 bad control messages in a row"),
    ]


def test_a_body_without_a_request_closes_the_channel_1002_at_once() -> None:
    control = ListenerControl()
    assert control.receive(b"orphan") == [
        CloseChannel(CloseCode.PROTOCOL_ERROR, "binary message without a request")
    ]
    assert control.receive(encode(ACCEPT)) == []


def test_a_second_binary_after_a_body_is_a_body_without_a_request() -> None:
    events = _feed(ListenerControl(), encode(WITH_BODY), b"body", b"extra")
    assert events == [
        RequestReceived(WITH_BODY, b"body"),
        CloseChannel(CloseCode.PROTOCOL_ERROR, "binary message without a request"),
    ]


def test_the_limit_must_be_positive() -> None:
    assert DEFAULT_MAX_BAD_MESSAGES >= 1
    with pytest.raises(ValueError, match="at least 1"):
        ListenerControl(max_bad_messages=0)


# ------------------------------------------------------------------ what the listener sends


def test_renew_token_message_is_a_renew_token() -> None:
    assert decode(renew_token_message("SharedAccessSignature sr=x")) == RenewToken(
        token="SharedAccessSignature sr=x"
    )


@pytest.mark.parametrize(
    ("expiry", "now", "delay"),
    [
        (3600.0, 0.0, 2700.0),  # a quarter of the lifetime left
        (100.0, 0.0, 70.0),  # at least 30 s before expiry
        (20.0, 0.0, 1.0),  # never sooner than 1 s
        (0.0, 50.0, 1.0),  # expired already
    ],
)
def test_renewal_delay(expiry: float, now: float, delay: float) -> None:
    assert renewal_delay(expiry, now) == delay


def test_a_small_response_goes_inline_header_then_body() -> None:
    assert inline_response(WITH_BODY, HEADER, b"hi") == (HEADER, b"hi")


def test_an_empty_body_is_no_message() -> None:
    assert inline_response(WITH_BODY, HEADER, b"") == (HEADER,)


def test_a_body_at_the_limit_goes_inline_and_one_byte_more_does_not() -> None:
    at_limit = b"x" * INLINE_BODY_LIMIT
    assert inline_response(WITH_BODY, HEADER, at_limit) == (HEADER, at_limit)
    assert inline_response(WITH_BODY, HEADER, at_limit + b"x") is None


def test_a_streamed_body_goes_over_rendezvous() -> None:
    assert inline_response(WITH_BODY, HEADER, None) is None


def test_a_rendezvous_only_request_is_answered_on_its_own_socket() -> None:
    assert inline_response(RENDEZVOUS_ONLY, HEADER, b"hi") is None
