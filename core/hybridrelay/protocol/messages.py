"""Control-channel messages (HC §3): frozen dataclasses and the one codec for them.

Each message on a control channel (and the request/response header on an HTTP-mode
rendezvous socket) is one text frame holding one JSON object with exactly one key:
``accept``, ``request``, ``response`` or ``renewToken``. :func:`encode` and
:func:`decode` are the only places that know the camelCase wire names; the rest of the
code works with the snake_case dataclasses and ``match`` on :data:`Message`.

Decoding is strict about shape and types (a field of the wrong type is an error naming
the field) and tolerant of unknown fields, as NET's DataContract reader is (HC §3).
Encoding refuses messages that a Microsoft client would misread: an inline ``request``
without ``method`` and ``body``, and an ``accept`` without ``Sec-WebSocket-Key``.

Every HTTP-mode request costs one encode and one decode on each side, so both go through
orjson when it is installed (a C extension: 5-10 times the stdlib's speed on these
messages) and fall back to the stdlib codec for anything orjson would write or read
differently. The text on the wire is the same either way, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Final, NoReturn, TypeAlias, assert_never

from hybridrelay.errors import InvalidMessageError, PayloadTooBigError, UnknownMessageKindError
from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT

# The fast codec, or None (not on PyPy): the stdlib codec does it all then.
_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - a CPython install has it (pyproject.toml)
    _orjson = None

__all__ = [
    "Accept",
    "Message",
    "RemoteEndpoint",
    "RenewToken",
    "Request",
    "Response",
    "decode",
    "encode",
    "kind_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteEndpoint:
    """The sender's address as the relay saw it (``remoteEndpoint``, HC §3.1)."""

    address: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Relay to listener: a WebSocket sender waits at ``address`` (HC §3.1).

    Attributes:
        address: The rendezvous address the listener dials to accept (or reject).
        id: The tracking id: the sender's ``sb-hc-id`` or one the relay made up.
        connect_headers: The sender's handshake headers; must hold ``Sec-WebSocket-Key``.
        remote_endpoint: The sender's IP and port, when known.
    """

    address: str
    id: str
    connect_headers: Mapping[str, str]
    remote_endpoint: RemoteEndpoint | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Relay to listener: an HTTP-mode request (HC §3.2).

    The inline form carries ``request_target``, ``method`` and an explicit ``body`` (a
    binary body message follows iff it is True). The rendezvous-only form carries only
    ``address`` and ``id``: the listener dials ``address`` and receives the inline form
    there.

    Attributes:
        address: The rendezvous address (always present, HC §3.2).
        id: The request id a :class:`Response` refers to.
        request_target: Origin-form target including the entity, relay parameters removed.
        method: The HTTP method.
        remote_endpoint: The sender's IP and port, when known.
        request_headers: The forwarded headers.
        body: Whether a binary body message follows.
    """

    address: str
    id: str
    request_target: str | None = None
    method: str | None = None
    remote_endpoint: RemoteEndpoint | None = None
    request_headers: Mapping[str, str] | None = None
    body: bool | None = None

    @property
    def inline(self) -> bool:
        """True for the inline form, False for the rendezvous-only form."""
        return self.method is not None and self.body is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """Listener to relay: the answer to a :class:`Request` (HC §3.3).

    Attributes:
        request_id: The ``id`` of the request answered.
        status_code: The HTTP status, 100..999 (clients send a number, DOC a string).
        status_description: The reason phrase, or None for the standard one.
        response_headers: The headers to send to the HTTP sender.
        body: Whether a binary body message follows.
    """

    request_id: str
    status_code: int
    status_description: str | None = None
    response_headers: Mapping[str, str] = field(default_factory=dict)
    body: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewToken:
    """Listener to relay: replace the control channel's token (HC §3.4)."""

    token: str


Message: TypeAlias = Accept | Request | Response | RenewToken

_Obj: TypeAlias = dict[str, Any]  # a decoded JSON object, validated field by field below


def kind_of(message: Message) -> str:
    """Return the wire key of a message: ``accept``, ``request``, ``response`` or ``renewToken``.

    Args:
        message: Any control-channel message.

    Returns:
        The single top-level JSON key the message is sent under.
    """
    match message:
        case Accept():
            return "accept"
        case Request():
            return "request"
        case Response():
            return "response"
        case RenewToken():
            return "renewToken"
        case _:  # pragma: no cover - exhaustive; mypy checks it
            assert_never(message)


# ----------------------------------------------------------------------------- encode


def _endpoint_obj(endpoint: RemoteEndpoint) -> _Obj:
    return {"address": endpoint.address, "port": endpoint.port}


def _put(obj: _Obj, name: str, value: object) -> None:
    if value is not None:
        obj[name] = value


# One encoder for every message: json.dumps() with non-default separators builds a new
# JSONEncoder per call. ensure_ascii stays on: the text is pure ASCII (see encode()).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def _encode_accept(message: Accept) -> _Obj:
    # HC §3.1: hyco-ws/hyco-https crash on an accept whose connectHeaders lack the key.
    if not any(name.lower() == "sec-websocket-key" for name in message.connect_headers):
        raise InvalidMessageError("accept.connectHeaders lacks Sec-WebSocket-Key")
    obj: _Obj = {
        "address": message.address,
        "id": message.id,
        "connectHeaders": dict(message.connect_headers),
    }
    if message.remote_endpoint is not None:
        obj["remoteEndpoint"] = _endpoint_obj(message.remote_endpoint)
    return obj


def _encode_request(message: Request) -> _Obj:
    # HC §3.2: hyco-https tells the forms apart by `method`, NET/JAVA by `body`, so an
    # inline request carries both and a rendezvous-only request neither.
    if message.method is None and message.body is None:
        extras = (message.request_target, message.remote_endpoint, message.request_headers)
        if any(value is not None for value in extras):
            raise InvalidMessageError("a rendezvous-only request carries only address and id")
    elif message.method is None or message.body is None:
        raise InvalidMessageError("an inline request needs both method and body")
    elif message.request_target is None:
        raise InvalidMessageError("an inline request needs requestTarget")
    obj: _Obj = {"address": message.address, "id": message.id}
    _put(obj, "requestTarget", message.request_target)
    _put(obj, "method", message.method)
    if message.remote_endpoint is not None:
        obj["remoteEndpoint"] = _endpoint_obj(message.remote_endpoint)
    if message.request_headers is not None:
        obj["requestHeaders"] = dict(message.request_headers)
    _put(obj, "body", message.body)
    return obj


def _encode_response(message: Response) -> _Obj:
    if not 100 <= message.status_code <= 999:
        raise InvalidMessageError("response.statusCode is not in 100..999")
    obj: _Obj = {"requestId": message.request_id, "statusCode": message.status_code}
    _put(obj, "statusDescription", message.status_description)
    obj["responseHeaders"] = dict(message.response_headers)
    obj["body"] = message.body
    return obj


def _dumps(obj: _Obj) -> str:
    if _orjson is not None:
        try:
            # NON_STR_KEYS: header names are often str subclasses (multidict's istr),
            # which orjson otherwise refuses as keys; they are written as text.
            raw: bytes = _orjson.dumps(obj, option=_orjson.OPT_NON_STR_KEYS)
        except TypeError:  # a lone surrogate: the stdlib escapes it
            pass
        else:
            # orjson writes non-ASCII and DEL raw, the stdlib escapes them; only
            # those texts differ, and they take the stdlib's path.
            if raw.isascii() and b"\x7f" not in raw:
                return raw.decode("ascii")
    return _ENCODER.encode(obj)


def encode(message: Message) -> str:
    """Serialise a message as one single-key JSON object (HC §3).

    Fields that are None are left out; names are the exact camelCase of HC §3;
    separators are compact and non-ASCII is escaped, so the text is pure ASCII.

    Args:
        message: The message to send.

    Returns:
        The text to send as one WebSocket text frame.

    Raises:
        InvalidMessageError: The message would be misread by Microsoft's clients: an
            accept without ``Sec-WebSocket-Key``, a request that is neither a complete
            inline form nor a bare rendezvous-only form, or a status code outside 100..999.
        PayloadTooBigError: The text is over ``CONTROL_MESSAGE_LIMIT`` (HC §3).
    """
    match message:
        case Accept():
            body = _encode_accept(message)
        case Request():
            body = _encode_request(message)
        case Response():
            body = _encode_response(message)
        case RenewToken():
            body = {"token": message.token}
        case _:  # pragma: no cover - exhaustive; mypy checks it
            assert_never(message)
    text = _dumps({kind_of(message): body})
    if len(text) > CONTROL_MESSAGE_LIMIT:  # ASCII only, so characters are bytes
        raise PayloadTooBigError(
            f"{kind_of(message)} message is over 64 KiB", limit="control_message_limit"
        )
    return text


# ----------------------------------------------------------------------------- decode


def _missing(kind: str, name: str) -> InvalidMessageError:
    return InvalidMessageError(f"{kind}.{name} is missing")


def _wrong(kind: str, name: str, expected: str) -> InvalidMessageError:
    return InvalidMessageError(f"{kind}.{name} must be {expected}")


def _req_str(obj: _Obj, kind: str, name: str, *, where: str = "") -> str:
    value = obj.get(name)
    if value is None:
        raise _missing(kind, where + name)
    if not isinstance(value, str):
        raise _wrong(kind, where + name, "a string")
    return value


def _opt_str(obj: _Obj, kind: str, name: str) -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _wrong(kind, name, "a string")


def _opt_bool(obj: _Obj, kind: str, name: str) -> bool | None:
    value = obj.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong(kind, name, "a boolean")


def _req_bool(obj: _Obj, kind: str, name: str) -> bool:
    value = _opt_bool(obj, kind, name)
    if value is None:
        raise _missing(kind, name)
    return value


_STR_ONLY: Final = frozenset({str})


def _opt_headers(obj: _Obj, kind: str, name: str) -> dict[str, str] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(kind, name, "an object of strings")
    if set(map(type, value.values())) <= _STR_ONLY:
        return value  # the usual: all strings, in a dict just decoded and no one else's
    headers: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, str):
            headers[key] = item
        elif isinstance(item, int) and not isinstance(item, bool):
            # hyco-https copies header values as the app set them; setHeader("X", 5)
            # arrives as a JSON number.
            headers[key] = str(item)
        else:
            raise _wrong(kind, f"{name}[{key[:40]!r}]", "a string")
    return headers


def _opt_endpoint(obj: _Obj, kind: str) -> RemoteEndpoint | None:
    value = obj.get("remoteEndpoint")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(kind, "remoteEndpoint", "an object")
    address = _req_str(value, kind, "address", where="remoteEndpoint.")
    port = value.get("port")
    if port is None:
        raise _missing(kind, "remoteEndpoint.port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise _wrong(kind, "remoteEndpoint.port", "an integer in 0..65535")
    return RemoteEndpoint(address=address, port=port)


def _status_code(obj: _Obj) -> int:
    # HC §3.3: clients send a number, DOC's sample a string; accept both.
    value = obj.get("statusCode")
    if value is None:
        raise _missing("response", "statusCode")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 999:
        raise _wrong("response", "statusCode", "an integer in 100..999")
    return value


def _decode_accept(obj: _Obj) -> Accept:
    headers = _opt_headers(obj, "accept", "connectHeaders")
    if headers is None:
        raise _missing("accept", "connectHeaders")
    return Accept(
        address=_req_str(obj, "accept", "address"),
        id=_req_str(obj, "accept", "id"),
        connect_headers=headers,
        remote_endpoint=_opt_endpoint(obj, "accept"),
    )


def _decode_request(obj: _Obj) -> Request:
    return Request(
        address=_req_str(obj, "request", "address"),
        id=_req_str(obj, "request", "id"),
        request_target=_opt_str(obj, "request", "requestTarget"),
        method=_opt_str(obj, "request", "method"),
        remote_endpoint=_opt_endpoint(obj, "request"),
        request_headers=_opt_headers(obj, "request", "requestHeaders"),
        body=_opt_bool(obj, "request", "body"),
    )


def _decode_response(obj: _Obj) -> Response:
    return Response(
        request_id=_req_str(obj, "response", "requestId"),
        status_code=_status_code(obj),
        status_description=_opt_str(obj, "response", "statusDescription"),
        response_headers=_opt_headers(obj, "response", "responseHeaders") or {},
        body=_req_bool(obj, "response", "body"),
    )


def _decode_renew_token(obj: _Obj) -> RenewToken:
    return RenewToken(token=_req_str(obj, "renewToken", "token"))


# The one key -> decoder table (style §3.5, frp's msgTypeMap).
_DECODERS: Final[dict[str, Callable[[_Obj], Message]]] = {
    "accept": _decode_accept,
    "request": _decode_request,
    "response": _decode_response,
    "renewToken": _decode_renew_token,
}


def _unique_keys(pairs: list[tuple[str, Any]]) -> _Obj:
    obj: _Obj = dict(pairs)
    if len(obj) != len(pairs):
        # Two values for one name would be read differently by different peers.
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidMessageError(f"duplicate JSON key {key[:40]!r}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise InvalidMessageError(f"JSON constant {name} is not allowed")


# Built once: json.loads() with hooks builds a new JSONDecoder per call.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


def _loads_fast(text: str) -> Any:
    """orjson's reading of ``text`` when it is certainly the stdlib's, else None.

    orjson keeps the last of duplicate keys where the stdlib decoder refuses them, and
    reads some numbers differently. Writing the result back must give the text exactly:
    then the text is in orjson's own canonical form, which has no duplicate keys and no
    number orjson could misread (the usual case: every peer writes compact JSON).
    """
    if _orjson is None:  # pragma: no cover - not on PyPy
        return None
    raw = text.encode("utf-8", "surrogatepass")
    try:
        data = _orjson.loads(raw)
    except ValueError:  # not JSON, NaN, lone surrogates, too deep: the stdlib decides
        return None
    try:
        canonical = _orjson.dumps(data) == raw
    except TypeError:
        return None
    return data if canonical else None


def _loads(text: str) -> Any:
    data = _loads_fast(text)
    if data is not None:
        return data
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessageError("control message is not valid JSON") from exc


def decode(text: str | bytes) -> Message:
    """Parse one control-channel text frame (HC §3).

    The size is checked before parsing. The frame must hold one JSON object with
    exactly one key naming a known kind; unknown fields inside it are ignored, known
    fields are type-checked, and ``statusCode`` may be a number or a numeric string.

    Args:
        text: The frame payload, as text or as UTF-8 bytes.

    Returns:
        The decoded message.

    Raises:
        PayloadTooBigError: The payload is over ``CONTROL_MESSAGE_LIMIT`` bytes.
        UnknownMessageKindError: It is a single-key object of an unknown kind.
        InvalidMessageError: It is not UTF-8 or not JSON, not a single-key object, or a
            field is missing or of the wrong type (the message names it).
    """
    if len(text) > CONTROL_MESSAGE_LIMIT:
        raise PayloadTooBigError("control message is over 64 KiB", limit="control_message_limit")
    if isinstance(text, str):
        # Characters are bytes for ASCII text; only other text needs measuring as UTF-8.
        if not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > (
            CONTROL_MESSAGE_LIMIT
        ):
            raise PayloadTooBigError(
                "control message is over 64 KiB", limit="control_message_limit"
            )
    else:
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidMessageError("control message is not valid UTF-8") from exc
    data = _loads(text)
    if not isinstance(data, dict) or len(data) != 1:
        raise InvalidMessageError("control message must be a JSON object with exactly one key")
    ((kind, body),) = data.items()
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnknownMessageKindError(f"unknown message kind {kind[:40]!r}")
    if not isinstance(body, dict):
        raise InvalidMessageError(f"{kind} must be a JSON object")
    return decoder(body)
