"""The listener's side of the control channel (HC §3, §4), sans-I/O.

:class:`ListenerControl` is fed each whole message the relay sends on a control
channel (text: one JSON control message; binary: the body of the inline request just
before it) and returns what it means as events; :func:`renew_token_message` and
:func:`inline_response` give the messages the listener sends. Nothing here touches a
socket or reads a clock (:func:`renewal_delay` takes ``now``): listener/agent.py reads
the WebSocket, acts on the events and sends what this module builds, so the rules below
are tested with messages alone (tests/unit/test_listener_control.py). WebSocket matters
(ping/pong, the close handshake, the ``max_message_size`` cap, closed 1009) belong to
the connection underneath, not to this layer.

The rules decided here, once:

- **Adjacency** (HC §4). An inline request with ``body: true`` is followed by one
  binary message, its body: :class:`RequestReceived` carries both. A text message in
  its place makes the request :class:`RequestBodyMissing` (the agent answers it 400)
  and is then read as the next control message.
- **Inline or rendezvous** for a response: :func:`inline_response`, which asks
  :func:`~hybridrelay.protocol.codes.fits_inline` (the only place the size rule lives).
- **Renewal schedule**: :func:`renewal_delay`.
- **Bad messages.** The relay closes a listener's channel on its first bad message;
  the listener is slower to give up, since its channel carries the requests of every
  sender and a bad message costs one request at most. So:

  1. A bad message is dropped and reported as :class:`BadMessage` with its kind
     (:data:`BadMessageKind`) and ``first``: True for the first of its kind on this
     channel. The agent logs that one as a warning and the rest at debug level, so a
     relay repeating itself cannot flood the log; ``reason`` is at most 200 characters
     and quotes (``repr``) any text of the relay's it repeats.
  2. A well-formed message of a kind HC §3 does not name (``unknown_kind``: a newer
     relay's) is dropped like the others but never counts towards closing.
  3. ``max_bad_messages`` bad messages in a row, with no accept or request (with its
     body, if it has one) between them, end the channel: :class:`CloseChannel` with
     1008. A broken or hostile relay is then redialled with backoff, the one remedy a
     listener has.
  4. A non-empty binary message with no inline request before it ends the channel at
     once with 1002: the messages are out of step, so no later body can be trusted to
     belong to the request before it. An empty one has nothing to misplace and is a
     bad message (``stray_body``) like the others.

  After :class:`CloseChannel` every further message is ignored.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple, TypeAlias

from hybridrelay.errors import InvalidMessageError, PayloadTooBigError, UnknownMessageKindError
from hybridrelay.protocol.codes import CloseCode, fits_inline
from hybridrelay.protocol.messages import Accept, RenewToken, Request, decode, encode

__all__ = [
    "DEFAULT_MAX_BAD_MESSAGES",
    "AcceptReceived",
    "BadMessage",
    "BadMessageKind",
    "CloseChannel",
    "ControlEvent",
    "ListenerControl",
    "RequestBodyMissing",
    "RequestReceived",
    "inline_response",
    "renew_token_message",
    "renewal_delay",
]

DEFAULT_MAX_BAD_MESSAGES: Final = 16  # in a row; agent.toml max_bad_control_messages
_REASON_LIMIT: Final = 200  # characters of a BadMessage's reason

BadMessageKind: TypeAlias = Literal[
    "too_big",  # a text message over 64 KiB (HC §3)
    "invalid",  # not JSON, not one single-key object, a field missing or mistyped
    "unknown_kind",  # well-formed, of a kind HC §3 does not name (never counted)
    "not_for_listener",  # a response or renewToken: messages listeners send
    "body_missing",  # a text message where an inline request's body belonged
    "stray_body",  # an empty binary message with no inline request before it
]


class AcceptReceived(NamedTuple):
    """A WebSocket sender waits at ``accept.address`` (HC §3.1)."""

    accept: Accept


class RequestReceived(NamedTuple):
    """An HTTP-mode request (HC §3.2).

    ``body`` is the inline body message when the request has one, else None (no body,
    or a rendezvous-only request whose request and body wait on the rendezvous socket).
    """

    request: Request
    body: bytes | None


class RequestBodyMissing(NamedTuple):
    """An inline request said ``body: true`` but a text message came next (HC §4)."""

    request: Request


class BadMessage(NamedTuple):
    """A message dropped under the bad-message policy (module docstring)."""

    kind: BadMessageKind
    reason: str
    first: bool  # the first of its kind on this channel: worth a warning


class CloseChannel(NamedTuple):
    """The policy gave up on this channel: close it with ``code`` and dial anew."""

    code: CloseCode
    reason: str


# Events are NamedTuples (as aiohttp's WSMessage kinds are): immutable, and about half
# the cost of a frozen dataclass to build, which the HTTP-mode request path pays once
# per request.
ControlEvent: TypeAlias = (
    AcceptReceived | RequestReceived | RequestBodyMissing | BadMessage | CloseChannel
)


class ListenerControl:
    """The state of one control channel as the listener reads it.

    Args:
        max_bad_messages: Bad messages in a row after which the channel is closed 1008.
    """

    def __init__(self, *, max_bad_messages: int = DEFAULT_MAX_BAD_MESSAGES) -> None:
        if max_bad_messages < 1:
            raise ValueError("max_bad_messages must be at least 1")
        self._max_bad = max_bad_messages
        self._body_of: Request | None = None  # an inline request whose body comes next
        self._bad_in_a_row = 0
        self.bad_counts: dict[BadMessageKind, int] = {}  # dropped on this channel, by kind
        self.closed: CloseChannel | None = None

    def receive(self, message: str | bytes) -> list[ControlEvent]:
        """Take the next whole message off the channel; return what it means."""
        if (request := self._body_of) is not None:
            self._body_of = None
            return self._after_request(request, message)
        if self.closed is not None:
            return []
        if isinstance(message, str):
            return self._text(message, [])
        events: list[ControlEvent] = []
        if message:
            self._close(events, CloseCode.PROTOCOL_ERROR, "binary message without a request")
        else:
            self._bad(events, "stray_body", "empty binary message without a request")
        return events

    def _after_request(self, request: Request, message: str | bytes) -> list[ControlEvent]:
        """The message after an inline request with ``body: true``: its body, or not."""
        if isinstance(message, bytes):
            self._bad_in_a_row = 0
            return [RequestReceived(request, message)]
        events: list[ControlEvent] = [RequestBodyMissing(request)]
        reason = f"request {request.id[:40]!r} came without its body"
        if self._bad(events, "body_missing", reason):
            self._text(message, events)
        return events

    def _text(self, text: str, events: list[ControlEvent]) -> list[ControlEvent]:
        """Read one text message; its events are appended to ``events``, returned."""
        try:
            message = decode(text)
        except UnknownMessageKindError as exc:
            self._report(events, "unknown_kind", str(exc))
            return events
        except PayloadTooBigError as exc:
            self._bad(events, "too_big", str(exc))
            return events
        except InvalidMessageError as exc:
            self._bad(events, "invalid", str(exc))
            return events
        if isinstance(message, Request):  # first: the HTTP-mode path is the hot one
            if message.body and message.inline:
                self._body_of = message  # good once its body has come too
            else:
                self._bad_in_a_row = 0
                events.append(RequestReceived(message, None))
        elif isinstance(message, Accept):
            self._bad_in_a_row = 0
            events.append(AcceptReceived(message))
        else:
            kind = "response" if not isinstance(message, RenewToken) else "renewToken"
            self._bad(events, "not_for_listener", f"a {kind} message comes from listeners")
        return events

    def _report(self, events: list[ControlEvent], kind: BadMessageKind, reason: str) -> None:
        count = self.bad_counts.get(kind, 0) + 1
        self.bad_counts[kind] = count
        events.append(BadMessage(kind, reason[:_REASON_LIMIT], first=count == 1))

    def _bad(self, events: list[ControlEvent], kind: BadMessageKind, reason: str) -> bool:
        """Count a bad message; False when that was one too many (the channel closes)."""
        self._report(events, kind, reason)
        self._bad_in_a_row += 1
        if self._bad_in_a_row < self._max_bad:
            return True
        reason = f"{self._bad_in_a_row} bad control messages in a row"
        self._close(events, CloseCode.POLICY_VIOLATION, reason)
        return False

    def _close(self, events: list[ControlEvent], code: CloseCode, reason: str) -> None:
        self.closed = CloseChannel(code, reason)
        events.append(self.closed)


def renew_token_message(token: str) -> str:
    """The ``renewToken`` message that hands the relay ``token`` (HC §3.4)."""
    return encode(RenewToken(token=token))


def renewal_delay(expiry: float, now: float) -> float:
    """Seconds until a token expiring at ``expiry`` should be renewed.

    When a quarter of its lifetime is left and at least 30 s before it expires, but
    never sooner than 1 s from now (an expired token is renewed at a calm pace).
    """
    lifetime = max(expiry - now, 0.0)
    return max(min(lifetime * 0.75, lifetime - 30.0), 1.0)


def inline_response(
    request: Request, header: str, body: bytes | None
) -> tuple[str] | tuple[str, bytes] | None:
    """The control-channel messages answering ``request``, or None for a rendezvous socket.

    A response goes inline (HC §4) only when the request came inline (a rendezvous-only
    request is answered on its own socket) and the body's size is known and
    :func:`~hybridrelay.protocol.codes.fits_inline`. The header and a non-empty body are
    two messages that must go out adjacent, in one write; an empty body is no message
    (the header says ``body: false``).

    Args:
        request: The request answered.
        header: The encoded ``response`` message.
        body: The whole body, or None when it is streamed (size not known up front).
    """
    if not request.inline or body is None or not fits_inline(len(body)):
        return None
    return (header, body) if body else (header,)
