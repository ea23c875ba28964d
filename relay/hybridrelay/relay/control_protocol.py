"""The relay's side of the control channel (HC §3, §4), sans-I/O.

:class:`RelayControl` is fed each whole message a listener sends on its control
channel (text: one JSON control message; binary: the body of the inline response just
before it) and returns what it means as events. Nothing here touches a socket, a clock
or the relay's pending requests: relay/control.py reads the WebSocket, acts on the
events (matches a response to the request it answers, renews the token, closes the
channel) and sends what the relay has to say, so the rules below are tested with
messages alone (tests/unit/test_relay_control.py). WebSocket matters (ping/pong, the
close handshake, ``max_control_message_size``, closed 1009) belong to the connection
underneath. The listener's side is listener/hybridrelay/listener/control_protocol.py.

The rules decided here, once:

- **Adjacency** (HC §4). A ``response`` with ``body: true`` is followed by one binary
  message, its body: :class:`ResponseReceived` carries both, so the sender gets a
  Content-Length answer. A text message in its place makes the response
  :class:`ResponseBodyMissing` (the glue answers that sender 502) and is then read as
  the next control message. A response whose content cannot go on an HTTP connection
  (a 101, a header that would split the sender's response) is
  :class:`ResponseInvalid` once its body, if any, has come: that request fails, the
  channel carries on.
- **Bad messages.** The relay closes a listener's channel on its first bad control
  message (the listener is the slower to give up, since its channel carries every
  sender's requests; the relay's remedy for a broken listener is to let it redial):
  text that is not a ``renewToken`` or ``response`` (not JSON, a field missing, over
  HC's 64 KiB, an ``accept`` or ``request``, a kind HC §3 does not name) is
  :class:`BadMessage` followed by :class:`CloseChannel` with the error's code (1002;
  1009 over 64 KiB, counted as ``control_message_limit``). After CloseChannel every
  further message is ignored.
- **Stray bodies.** A binary message with no response before it is dropped: an empty
  one silently (hyco-https sends one after each ``body: false`` response), a non-empty
  one reported as :class:`BadMessage` (``stray_body``) without closing, as the relay
  always has: nothing the relay sends depends on it.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple, TypeAlias

from hybridrelay.errors import HybridRelayError, InvalidMessageError, PayloadTooBigError
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import RenewToken, Response, decode, kind_of

__all__ = [
    "BadMessage",
    "BadMessageKind",
    "CloseChannel",
    "ControlEvent",
    "RelayControl",
    "RenewTokenReceived",
    "ResponseBodyMissing",
    "ResponseInvalid",
    "ResponseReceived",
]

_REASON_LIMIT: Final = 120  # characters of a close reason (a close frame holds 123 bytes)

BadMessageKind: TypeAlias = Literal[
    "too_big",  # a text message over 64 KiB (HC §3)
    "invalid",  # not JSON, not one single-key object, a field missing or mistyped
    "not_for_relay",  # an accept or request: messages the relay sends
    "stray_body",  # a non-empty binary message with no response before it
]


class RenewTokenReceived(NamedTuple):
    """The listener hands over a fresh token (HC §3.4)."""

    token: str


class ResponseReceived(NamedTuple):
    """A listener's answer to an HTTP-mode request (HC §3.3).

    ``body`` is the binary message that followed a ``body: true`` response, else None.
    """

    response: Response
    body: bytes | None


class ResponseBodyMissing(NamedTuple):
    """A response said ``body: true`` but a text message came next (HC §4)."""

    response: Response


class ResponseInvalid(NamedTuple):
    """A well-formed response the relay must not pass to an HTTP sender; its body is dropped."""

    response: Response
    reason: str


class BadMessage(NamedTuple):
    """A message dropped under the bad-message policy (module docstring)."""

    kind: BadMessageKind
    reason: str


class CloseChannel(NamedTuple):
    """The policy gave up on this channel: close it with ``code``.

    ``limit`` names the limit the message broke (docs/security.md), to be counted.
    """

    code: CloseCode
    reason: str
    limit: str | None


# NamedTuples, as the listener side's: a response is one event per HTTP-mode request.
ControlEvent: TypeAlias = (
    RenewTokenReceived
    | ResponseReceived
    | ResponseBodyMissing
    | ResponseInvalid
    | BadMessage
    | CloseChannel
)


class RelayControl:
    """The state of one control channel as the relay reads it."""

    __slots__ = ("_body_of", "_invalid", "closed")

    def __init__(self) -> None:
        self._body_of: Response | None = None  # a response whose body comes next
        self._invalid = ""  # why that response may not reach its sender ("": it may)
        self.closed: CloseChannel | None = None

    def receive(self, message: str | bytes) -> list[ControlEvent]:
        """Take the next whole message off the channel; return what it means."""
        if self.closed is not None:
            return []
        if (response := self._body_of) is not None:
            self._body_of = None
            if isinstance(message, bytes):
                if self._invalid:
                    return [ResponseInvalid(response, self._invalid)]
                return [ResponseReceived(response, message)]
            events: list[ControlEvent] = [ResponseBodyMissing(response)]
            return self._text(message, events)
        if isinstance(message, str):
            return self._text(message, [])
        if not message:
            return []  # hyco-https's empty body after a body:false response
        return [BadMessage("stray_body", f"{len(message)}-byte binary message without a response")]

    def _text(self, text: str, events: list[ControlEvent]) -> list[ControlEvent]:
        """Read one text message; its events are appended to ``events``, returned."""
        try:
            message = decode(text)
        except HybridRelayError as exc:
            kind: BadMessageKind = "too_big" if isinstance(exc, PayloadTooBigError) else "invalid"
            return self._close(events, kind, str(exc), CloseCode(exc.close_code), exc.limit)
        if isinstance(message, Response):  # first: the HTTP-mode path is the hot one
            invalid = _invalid(message)
            if message.body:
                self._body_of = message
                self._invalid = invalid
            elif invalid:
                events.append(ResponseInvalid(message, invalid))
            else:
                events.append(ResponseReceived(message, None))
        elif isinstance(message, RenewToken):
            events.append(RenewTokenReceived(message.token))
        else:
            reason = f"{kind_of(message)}: listeners may only send renewToken and response"
            return self._close(events, "not_for_relay", reason, CloseCode.PROTOCOL_ERROR, None)
        return events

    def _close(
        self,
        events: list[ControlEvent],
        kind: BadMessageKind,
        reason: str,
        code: CloseCode,
        limit: str | None,
    ) -> list[ControlEvent]:
        events.append(BadMessage(kind, reason))
        self.closed = CloseChannel(code, reason[:_REASON_LIMIT], limit)
        events.append(self.closed)
        return events


def _invalid(response: Response) -> str:
    """Why ``response`` cannot go on an HTTP connection, or ``""``."""
    try:
        check_response(response)
    except InvalidMessageError as exc:
        return str(exc)
    return ""
