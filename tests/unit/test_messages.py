"""Control-channel messages: exact wire JSON, the client-compatibility rules and strict decoding."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import pytest
from hypothesis import given, settings, strategies as st
from multidict import istr

from hybridrelay.errors import InvalidMessageError, PayloadTooBigError
from hybridrelay.protocol import messages
from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT
from hybridrelay.protocol.messages import (
    Accept,
    Message,
    RemoteEndpoint,
    RenewToken,
    Request,
    Response,
    decode,
    encode,
    kind_of,
)

ADDRESS = "wss://relay/$hc/hyco?sb-hc-action=accept&sb-hc-id=1&sb-hc-rdv=k"
KEY_HEADERS = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-App": "v"}
ENDPOINT = RemoteEndpoint(address="10.0.0.1", port=1234)

ACCEPT = Accept(address=ADDRESS, id="1", connect_headers=KEY_HEADERS, remote_endpoint=ENDPOINT)
INLINE = Request(
    address=ADDRESS,
    id="2",
    request_target="/hyco/abc?x=1",
    method="POST",
    remote_endpoint=ENDPOINT,
    request_headers={"Content-Type": "application/json"},
    body=True,
)
RENDEZVOUS_ONLY = Request(address=ADDRESS, id="3")
RESPONSE = Response(
    request_id="2",
    status_code=200,
    status_description="OK",
    response_headers={"content-type": "text/plain"},
    body=True,
)
RENEW = RenewToken(token="SharedAccessSignature sr=x&sig=y&se=1&skn=r")

ALL: list[Message] = [ACCEPT, INLINE, RENDEZVOUS_ONLY, RESPONSE, RENEW]


# ---------------------------------------------------------------- encode


def test_encode_accept() -> None:
    assert encode(ACCEPT) == (
        '{"accept":{"address":"' + ADDRESS + '","id":"1","connectHeaders":'
        '{"Sec-WebSocket-Key":"dGhlIHNhbXBsZSBub25jZQ==","X-App":"v"},'
        '"remoteEndpoint":{"address":"10.0.0.1","port":1234}}}'
    )


def test_encode_accept_without_endpoint_and_lower_case_key() -> None:
    message = Accept(address="a", id="1", connect_headers={"sec-websocket-key": "k"})
    assert (
        encode(message)
        == '{"accept":{"address":"a","id":"1","connectHeaders":{"sec-websocket-key":"k"}}}'
    )


def test_encode_accept_needs_websocket_key() -> None:
    with pytest.raises(InvalidMessageError, match="Sec-WebSocket-Key"):
        encode(Accept(address="a", id="1", connect_headers={"Host": "h"}))


def test_encode_inline_request() -> None:
    assert encode(INLINE) == (
        '{"request":{"address":"' + ADDRESS + '","id":"2","requestTarget":"/hyco/abc?x=1",'
        '"method":"POST","remoteEndpoint":{"address":"10.0.0.1","port":1234},'
        '"requestHeaders":{"Content-Type":"application/json"},"body":true}}'
    )


def test_encode_inline_request_minimal_keeps_explicit_false_body() -> None:
    message = Request(address="a", id="1", request_target="/h", method="GET", body=False)
    assert encode(message) == (
        '{"request":{"address":"a","id":"1","requestTarget":"/h","method":"GET","body":false}}'
    )
    assert message.inline


def test_encode_rendezvous_only_request() -> None:
    assert encode(RENDEZVOUS_ONLY) == '{"request":{"address":"' + ADDRESS + '","id":"3"}}'
    assert not RENDEZVOUS_ONLY.inline


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            Request(address="a", id="1", request_target="/h", method="GET"),
            "needs both method and body",
        ),
        (
            Request(address="a", id="1", request_target="/h", body=False),
            "needs both method and body",
        ),
        (Request(address="a", id="1", method="GET", body=False), "needs requestTarget"),
        (Request(address="a", id="1", request_target="/h"), "carries only address and id"),
        (Request(address="a", id="1", request_headers={}), "carries only address and id"),
        (Request(address="a", id="1", remote_endpoint=ENDPOINT), "carries only address and id"),
    ],
)
def test_encode_refuses_half_requests(message: Request, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=reason):
        encode(message)


def test_request_inline_property() -> None:
    assert INLINE.inline
    assert not Request(address="a", id="1", method="GET").inline
    assert not Request(address="a", id="1", body=True).inline


def test_encode_response() -> None:
    assert encode(RESPONSE) == (
        '{"response":{"requestId":"2","statusCode":200,"statusDescription":"OK",'
        '"responseHeaders":{"content-type":"text/plain"},"body":true}}'
    )


def test_encode_response_omits_missing_description() -> None:
    message = Response(request_id="9", status_code=204, body=False)
    assert encode(message) == (
        '{"response":{"requestId":"9","statusCode":204,"responseHeaders":{},"body":false}}'
    )


@pytest.mark.parametrize("code", [99, 1000, -1])
def test_encode_response_status_range(code: int) -> None:
    with pytest.raises(InvalidMessageError, match="statusCode"):
        encode(Response(request_id="1", status_code=code, body=False))


def test_encode_renew_token() -> None:
    assert encode(RENEW) == '{"renewToken":{"token":"SharedAccessSignature sr=x&sig=y&se=1&skn=r"}}'


def test_encode_is_ascii() -> None:
    text = encode(RenewToken(token="été\u2028"))
    assert text.isascii()
    assert decode(text) == RenewToken(token="été\u2028")


def test_encode_refuses_oversized_messages() -> None:
    headers = {"Sec-WebSocket-Key": "k", "X-Big": "x" * CONTROL_MESSAGE_LIMIT}
    with pytest.raises(PayloadTooBigError, match="accept message is over 64 KiB"):
        encode(Accept(address="a", id="1", connect_headers=headers))


def test_encode_at_the_limit() -> None:
    overhead = len(encode(RenewToken(token="")))
    text = encode(RenewToken(token="x" * (CONTROL_MESSAGE_LIMIT - overhead)))
    assert len(text) == CONTROL_MESSAGE_LIMIT
    assert decode(text) == RenewToken(token="x" * (CONTROL_MESSAGE_LIMIT - overhead))


@pytest.mark.parametrize(
    ("message", "kind"),
    [(ACCEPT, "accept"), (INLINE, "request"), (RESPONSE, "response"), (RENEW, "renewToken")],
)
def test_kind_of(message: Message, kind: str) -> None:
    assert kind_of(message) == kind
    assert list(json.loads(encode(message))) == [kind]


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RENEW.token = "x"  # type: ignore[misc]  # proving the dataclass is frozen


# ---------------------------------------------------------------- decode


@pytest.mark.parametrize("message", ALL)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message
    assert decode(encode(message).encode()) == message


def test_decode_tolerates_unknown_fields() -> None:
    text = '{"renewToken":{"token":"t","future":{"x":[1,2]}}}'
    assert decode(text) == RenewToken(token="t")


def test_decode_accept_from_the_doc() -> None:
    text = json.dumps(
        {
            "accept": {
                "address": ADDRESS,
                "id": "1",
                "connectHeaders": {"Host": "h", "Sec-WebSocket-Version": "13"},
                "remoteEndpoint": {"address": "::1", "port": 0},
            }
        }
    )
    message = decode(text)
    assert isinstance(message, Accept)
    assert message.connect_headers == {"Host": "h", "Sec-WebSocket-Version": "13"}
    assert message.remote_endpoint == RemoteEndpoint(address="::1", port=0)


def test_decode_request_forms() -> None:
    rendezvous = decode('{"request":{"address":"a","id":"1"}}')
    assert rendezvous == Request(address="a", id="1")
    nulls = decode(
        '{"request":{"address":"a","id":"1","method":null,"body":null,'
        '"requestHeaders":null,"remoteEndpoint":null,"requestTarget":null}}'
    )
    assert nulls == Request(address="a", id="1")
    inline = decode(
        '{"request":{"address":"a","id":"1","requestTarget":"/h","method":"GET","body":false}}'
    )
    assert isinstance(inline, Request)
    assert inline.inline


@pytest.mark.parametrize(
    ("raw", "code"), [("200", 200), ('"200"', 200), ('"999"', 999), ("100", 100)]
)
def test_decode_status_code_number_or_string(raw: str, code: int) -> None:
    message = decode('{"response":{"requestId":"1","statusCode":' + raw + ',"body":false}}')
    assert message == Response(request_id="1", status_code=code, body=False)


def test_decode_response_defaults() -> None:
    message = decode(
        '{"response":{"requestId":"1","statusCode":201,"statusDescription":null,'
        '"responseHeaders":null,"body":true}}'
    )
    assert message == Response(request_id="1", status_code=201, body=True)


def test_decode_numeric_header_values() -> None:
    message = decode(
        '{"response":{"requestId":"1","statusCode":200,"responseHeaders":{"x-count":5},"body":false}}'
    )
    assert isinstance(message, Response)
    assert message.response_headers == {"x-count": "5"}


def test_decode_size_limits() -> None:
    with pytest.raises(PayloadTooBigError):
        decode("x" * (CONTROL_MESSAGE_LIMIT + 1))
    with pytest.raises(PayloadTooBigError):
        decode(b"x" * (CONTROL_MESSAGE_LIMIT + 1))
    # Fewer characters than the limit, but more UTF-8 bytes.
    with pytest.raises(PayloadTooBigError):
        decode('{"renewToken":{"token":"' + "é" * 40000 + '"}}')


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("hello", "not valid JSON"),
        ('{"renewToken":{"token":"t"}} x', "not valid JSON"),
        ("[" * 60000, "not valid JSON"),
        ('{"response":{"requestId":"1","statusCode":' + "9" * 5000 + "}}", "not valid JSON"),
        ('{"response":{"requestId":"1","statusCode":NaN,"body":true}}', "JSON constant NaN"),
        (
            '{"response":{"requestId":"1","statusCode":Infinity,"body":true}}',
            "JSON constant Infinity",
        ),
        ("[]", "exactly one key"),
        ("1", "exactly one key"),
        ('"accept"', "exactly one key"),
        ("null", "exactly one key"),
        ("{}", "exactly one key"),
        ('{"renewToken":{"token":"t"},"accept":{}}', "exactly one key"),
        (
            '{"renewToken":{"token":"t"},"renewToken":{"token":"u"}}',
            "duplicate JSON key 'renewToken'",
        ),
        ('{"renewToken":{"token":"t","token":"u"}}', "duplicate JSON key 'token'"),
        ('{"ping":{}}', "unknown message kind 'ping'"),
        ('{"Accept":{}}', "unknown message kind 'Accept'"),
        ('{"accept":1}', "accept must be a JSON object"),
        ('{"request":[]}', "request must be a JSON object"),
        ('{"renewToken":null}', "renewToken must be a JSON object"),
    ],
)
def test_decode_shape_errors(text: str | bytes, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=reason):
        decode(text)


def test_unknown_kind_is_cut_in_the_message() -> None:
    with pytest.raises(InvalidMessageError) as info:
        decode('{"' + "k" * 1000 + '":{}}')
    assert len(str(info.value)) < 100


GOOD_ACCEPT = {"address": "a", "id": "1", "connectHeaders": {"Sec-WebSocket-Key": "k"}}
GOOD_REQUEST = {"address": "a", "id": "1"}
GOOD_RESPONSE = {"requestId": "1", "statusCode": 200, "body": False}
_DROP = object()


def _with(base: Mapping[str, object], **changes: object) -> dict[str, object]:
    result = dict(base)
    for name, value in changes.items():
        if value is _DROP:
            del result[name]
        else:
            result[name] = value
    return result


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        ("accept", _with(GOOD_ACCEPT, address=_DROP), "accept.address is missing"),
        ("accept", _with(GOOD_ACCEPT, address=None), "accept.address is missing"),
        ("accept", _with(GOOD_ACCEPT, address=1), "accept.address must be a string"),
        ("accept", _with(GOOD_ACCEPT, id=_DROP), "accept.id is missing"),
        ("accept", _with(GOOD_ACCEPT, id=7), "accept.id must be a string"),
        ("accept", _with(GOOD_ACCEPT, connectHeaders=_DROP), "accept.connectHeaders is missing"),
        (
            "accept",
            _with(GOOD_ACCEPT, connectHeaders=[]),
            "accept.connectHeaders must be an object",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, connectHeaders={"a": ["x"]}),
            "accept.connectHeaders\\['a'\\] must",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, connectHeaders={"a": True}),
            "accept.connectHeaders\\['a'\\] must",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, connectHeaders={"a": 1.5}),
            "accept.connectHeaders\\['a'\\] must",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, connectHeaders={"a": None}),
            "accept.connectHeaders\\['a'\\] must",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint="x"),
            "accept.remoteEndpoint must be an object",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"port": 1}),
            "accept.remoteEndpoint.address is missing",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"address": 1, "port": 1}),
            "accept.remoteEndpoint.address must be a string",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"address": "a"}),
            "accept.remoteEndpoint.port is missing",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"address": "a", "port": "80"}),
            "accept.remoteEndpoint.port must be an integer",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"address": "a", "port": True}),
            "accept.remoteEndpoint.port must be an integer",
        ),
        (
            "accept",
            _with(GOOD_ACCEPT, remoteEndpoint={"address": "a", "port": 65536}),
            "accept.remoteEndpoint.port must be an integer",
        ),
        (
            "request",
            _with(GOOD_REQUEST, remoteEndpoint={"address": "a", "port": -1}),
            "request.remoteEndpoint.port must be an integer",
        ),
        ("request", _with(GOOD_REQUEST, address=_DROP), "request.address is missing"),
        ("request", _with(GOOD_REQUEST, id=_DROP), "request.id is missing"),
        ("request", _with(GOOD_REQUEST, method=1), "request.method must be a string"),
        (
            "request",
            _with(GOOD_REQUEST, requestTarget=[]),
            "request.requestTarget must be a string",
        ),
        ("request", _with(GOOD_REQUEST, body="true"), "request.body must be a boolean"),
        ("request", _with(GOOD_REQUEST, body=1), "request.body must be a boolean"),
        (
            "request",
            _with(GOOD_REQUEST, requestHeaders="x"),
            "request.requestHeaders must be an object",
        ),
        ("response", _with(GOOD_RESPONSE, requestId=_DROP), "response.requestId is missing"),
        ("response", _with(GOOD_RESPONSE, statusCode=_DROP), "response.statusCode is missing"),
        ("response", _with(GOOD_RESPONSE, statusCode=None), "response.statusCode is missing"),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode="abc"),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode=" 200"),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode="2000"),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode="\u0662\u0660\u0660"),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode="99"),
            "response.statusCode must be an integer",
        ),
        ("response", _with(GOOD_RESPONSE, statusCode=99), "response.statusCode must be an integer"),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode=1000),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode=200.0),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusCode=True),
            "response.statusCode must be an integer",
        ),
        (
            "response",
            _with(GOOD_RESPONSE, statusDescription=1),
            "response.statusDescription must be",
        ),
        ("response", _with(GOOD_RESPONSE, responseHeaders=[]), "response.responseHeaders must be"),
        ("response", _with(GOOD_RESPONSE, body=_DROP), "response.body is missing"),
        ("response", _with(GOOD_RESPONSE, body=None), "response.body is missing"),
        ("response", _with(GOOD_RESPONSE, body="false"), "response.body must be a boolean"),
        ("renewToken", {}, "renewToken.token is missing"),
        ("renewToken", {"token": 5}, "renewToken.token must be a string"),
    ],
)
def test_decode_field_errors_name_the_field(
    kind: str, body: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidMessageError, match=reason):
        decode(json.dumps({kind: body}))


def test_exports() -> None:
    for name in messages.__all__:
        assert hasattr(messages, name), name


# ---------------------------------------------------------------- the fast codec (orjson)

_TEXTS = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)


def _stdlib_text(message: Message) -> str:
    """What the stdlib codec alone writes for a message: the wire format of record."""
    return messages._ENCODER.encode(json.loads(encode(message)))


def test_orjson_is_the_fast_path() -> None:
    # A runtime dependency on CPython; without it the stdlib codec serves alone.
    assert messages._orjson is not None


@settings(max_examples=300, deadline=None)
@given(name=_TEXTS, value=_TEXTS, target=_TEXTS, code=st.integers(100, 999))
def test_fast_codec_writes_and_reads_what_the_stdlib_does(
    name: str, value: str, target: str, code: int
) -> None:
    request = dataclasses.replace(INLINE, request_target=target, request_headers={name: value})
    response = dataclasses.replace(RESPONSE, status_code=code, response_headers={name: value})
    for message in (request, response):
        fast = encode(message)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(messages, "_orjson", None)
            slow = encode(message)
            assert decode(slow) == message
        assert fast == slow
        assert fast.isascii()
        assert decode(fast) == message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # orjson alone would keep the last value of these; the stdlib decoder refuses.
        ('{"response":{"requestId":"1","requestId":"2","statusCode":200,"body":true}}', "dup"),
        ('{"request":{"address":"a","id":"1","requestHeaders":{"X":"1","X":"2"}}}', "dup"),
        # orjson reads a big integer as a float; the stdlib as the integer it is.
        ('{"response":{"requestId":"1","statusCode":2' + "0" * 30 + ',"body":true}}', "100"),
    ],
)
def test_fast_decode_leaves_non_canonical_text_to_the_stdlib(text: str, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=reason):
        decode(text)


class _NoStdlib:
    def encode(self, obj: object) -> str:
        raise AssertionError(f"the stdlib encoder was used for {obj!r:.60}")


def test_usual_messages_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp's header names are istr (a str subclass): still the fast path.
    headers = {istr("Host"): "relay", istr("X-Count"): "5", "Accept": "*/*"}
    request = dataclasses.replace(INLINE, request_headers=headers)
    response = dataclasses.replace(RESPONSE, response_headers=headers)
    expected = [_stdlib_text(m) for m in (request, response)]
    monkeypatch.setattr(messages, "_ENCODER", _NoStdlib())
    assert [encode(m) for m in (request, response)] == expected
    assert '"Host":"relay"' in expected[0]


def test_fast_decode_reads_spaced_and_escaped_json() -> None:
    text = '{ "response" : { "requestId" : "\u0031", "statusCode" : 200, "body" : false } }'
    assert decode(text) == Response(request_id="1", status_code=200, body=False)
