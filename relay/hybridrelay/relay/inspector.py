"""The HTTP inspector: recent HTTP-mode requests of chosen hybrid connections (issue 14).

Off by default; an operator turns it on per hybrid connection
(``PUT /$mgmt/v1/hybridconnections/{name}/inspector``, :mod:`.mgmt.inspector`). While
it is on, every HTTP-mode request to that entity that this node answers is kept in a
ring of ``inspector_requests`` records, newest first out of ``GET``: method, target,
status, timing, both header blocks and the first ``inspector_body_size`` bytes of
both bodies. Memory stays bounded under a flood: at most ``max_inspected_hcs`` rings,
each of fixed length, each record capped (bodies at the body cap, header blocks at
:data:`HEADER_BLOCK_LIMIT`); a request in flight holds one capped capture.

Secrets never enter a record: ``Authorization``, ``ServiceBusAuthorization``,
``Proxy-Authorization``, ``sb-hc-token``, ``Cookie`` and ``Set-Cookie`` values are
replaced by :data:`REDACTED`, the ``sb-hc-token`` query parameter too, and anything
that looks like a SAS signature (``sig=...``) in a header, the target or a body.

This module is plain state (no I/O): the HTTP glue is :func:`inspect_http`, which
wraps the HTTP-mode handler; ``http_mode`` only hands it the inline request body and
the streamed response chunks (:class:`Capture`).
"""

from __future__ import annotations

import asyncio
import collections
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from aiohttp import web

from hybridrelay.errors import HybridRelayError, QuotaExceededError
from hybridrelay.relay.state import HC_NAME, STATE

__all__ = [
    "CAPTURE",
    "HEADER_BLOCK_LIMIT",
    "INSPECTOR",
    "REDACTED",
    "REPLAY_HEADER",
    "Capture",
    "CapturedBody",
    "Inspector",
    "Record",
    "inspect_http",
    "redact_headers",
    "redact_target",
]

REDACTED: Final = "[redacted]"
# The header a replay carries (a nonce only this node knows): its record says which
# request it replays. A sender cannot forge the link: an unknown nonce is ignored.
REPLAY_HEADER: Final = "X-HybridRelay-Replay"
# Characters of one recorded header block (names and values); the rest is cut. Request
# headers are at most 32 KiB on the wire (HC), a response's at most 64 KiB.
HEADER_BLOCK_LIMIT: Final = 16 * 1024

_SECRET_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "servicebusauthorization",
        "sb-hc-token",
        "cookie",
        "set-cookie",
    }
)
_SECRET_QUERY: Final = frozenset({"sb-hc-token"})
# A SAS signature wherever it appears: "sig=<value>" up to a separator, also with the
# "=" percent-encoded once or twice (a SAS URL inside another URL's query, or inside
# that), and right after another escape ("SharedAccessSignature%20sig%3D...": the
# signature first), where "sig" follows a word character and \b would not match.
_SIG_START: Final = (
    r"(?i)((?:(?<![a-z0-9_])|(?<=%[0-9a-f]{2})|(?<=%25[0-9a-f]{2}))sig(?:=|%3d|%253d))"
)
_SIG_VALUE: Final = r"(?:(?!%26|%2526)[^&\s,;\"'<>])+"
_SIG_TEXT: Final = re.compile(_SIG_START + _SIG_VALUE)
_SIG_BYTES: Final = re.compile((_SIG_START + _SIG_VALUE).encode())


def _redact_text(text: str) -> str:
    return _SIG_TEXT.sub(lambda m: m.group(1) + REDACTED, text)


def redact_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Header pairs with secrets replaced, cut at :data:`HEADER_BLOCK_LIMIT` characters."""
    out: list[tuple[str, str]] = []
    room = HEADER_BLOCK_LIMIT
    for name, value in headers:
        clean = REDACTED if name.lower() in _SECRET_HEADERS else _redact_text(value)
        room -= len(name) + len(clean)
        if room < 0:
            out.append(("X-Inspector-Truncated", "the rest of the header block was not kept"))
            break
        out.append((name, clean))
    return tuple(out)


def redact_target(target: str) -> str:
    """The request target (path and query, still encoded) with its secrets replaced."""
    path, mark, query = target.partition("?")
    if mark:
        parts = []
        for part in query.split("&"):
            name = part.partition("=")[0]
            parts.append(f"{name}={REDACTED}" if name.lower() in _SECRET_QUERY else part)
        query = "&".join(parts)
    return _redact_text(path + mark + query)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapturedBody:
    """The first bytes of a body: ``size`` is the whole body's (None: unknown)."""

    data: bytes = b""
    size: int | None = 0
    complete: bool = True  # ``data`` is the whole body (redaction aside)


def _body(data: bytes, size: int | None, complete: bool) -> CapturedBody:
    redacted = _SIG_BYTES.sub(lambda m: m.group(1) + REDACTED.encode(), data)
    return CapturedBody(data=redacted, size=size, complete=complete)


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One inspected request, redacted; what the API and the page show."""

    id: str
    hybrid_connection: str
    method: str
    target: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: CapturedBody
    status: int | None  # None: the sender went away before an answer
    response_headers: tuple[tuple[str, str], ...]
    response_body: CapturedBody
    received_at: float  # wall clock (seconds since the epoch)
    answered_at: float  # when the answer was complete (or the request failed)
    error: str | None  # the relay's refusal or failure, when the listener did not answer
    replay_of: str | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.answered_at - self.received_at)


class _BodyTap:
    """Keeps the first ``limit`` bytes of a body fed in chunks, and counts all of them."""

    __slots__ = ("_limit", "_parts", "kept", "size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self.kept = 0
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self._limit - self.kept
        if room > 0 and chunk:
            piece = chunk[:room]
            self._parts.append(piece)
            self.kept += len(piece)

    def body(self) -> CapturedBody:
        return _body(b"".join(self._parts), self.size, self.size == self.kept)


@dataclass(eq=False, slots=True)
class Capture:
    """What ``http_mode`` hands over while one request runs (only when the inspector is on).

    ``wanted`` says whether the request's entity is inspected; it is asked once, when the
    first body arrives (the entity is known by then), so requests to other entities cost
    no copy.
    """

    body_limit: int
    wanted: Callable[[], bool] = lambda: True
    request_body: CapturedBody | None = None  # None: streamed to the listener, not kept
    response: _BodyTap | None = None
    _decided: bool | None = None

    def keeps(self) -> bool:
        """Whether this request is recorded (decided once: a half-seen one never is)."""
        if self._decided is None:
            self._decided = self.wanted()
        return self._decided

    def request_body_read(self, body: bytes | None) -> None:
        """The inline body read whole (None or b"": no body)."""
        if self.keeps():
            data = body or b""
            limit = self.body_limit
            self.request_body = _body(data[:limit], len(data), len(data) <= limit)

    def response_chunk(self, chunk: bytes) -> None:
        """A chunk of a streamed response body, as it goes to the sender."""
        if not self.keeps():
            return
        if self.response is None:
            self.response = _BodyTap(self.body_limit)
        self.response.feed(chunk)


@dataclass(eq=False, slots=True)
class _Ring:
    records: collections.deque[Record]


@dataclass(eq=False)
class Inspector:
    """The rings of the inspected hybrid connections of this node (keys: casefolded names)."""

    capacity: int  # records per hybrid connection
    body_limit: int  # bytes of each body kept
    max_rings: int  # hybrid connections inspected at once
    _rings: dict[str, _Ring] = field(default_factory=dict)
    # nonce -> (casefolded entity, replayed record id): only a request to the replayed
    # record's own entity may be its replay, and only the first one.
    _replays: dict[str, tuple[str, str]] = field(default_factory=dict)
    _replay_done: dict[str, asyncio.Future[Record]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self._rings)

    def enabled(self, hc_name: str) -> bool:
        return hc_name.casefold() in self._rings

    def enable(self, hc_name: str) -> None:
        key = hc_name.casefold()
        if key in self._rings:
            return
        if len(self._rings) >= self.max_rings:
            raise QuotaExceededError(
                f"the inspector is on for {self.max_rings} hybrid connections already",
                limit="max_inspected_hcs",
            )
        self._rings[key] = _Ring(collections.deque(maxlen=self.capacity))

    def disable(self, hc_name: str) -> None:
        """Turn the inspector off and forget what it recorded."""
        self._rings.pop(hc_name.casefold(), None)

    def recorded(self, hc_name: str) -> list[Record]:
        """Newest first."""
        ring = self._rings.get(hc_name.casefold())
        return list(reversed(ring.records)) if ring is not None else []

    def find(self, hc_name: str, record_id: str) -> Record | None:
        ring = self._rings.get(hc_name.casefold())
        if ring is None:
            return None
        return next((r for r in ring.records if r.id == record_id), None)

    def expect_replay(self, replayed: Record) -> tuple[str, asyncio.Future[Record]]:
        """A nonce for a replay's :data:`REPLAY_HEADER` and the future of its record."""
        nonce = secrets.token_urlsafe(18)
        self._replays[nonce] = (replayed.hybrid_connection.casefold(), replayed.id)
        done: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._replay_done[nonce] = done
        return nonce, done

    def replay_over(self, nonce: str) -> None:
        self._replays.pop(nonce, None)
        self._replay_done.pop(nonce, None)

    def add(self, record: Record, nonce: str | None = None) -> Record | None:
        """Keep ``record`` (linked to its replayed one by ``nonce``); None if not inspected."""
        ring = self._rings.get(record.hybrid_connection.casefold())
        if ring is None:
            return None
        replay_of, done = self._claim(record, nonce)
        if replay_of is not None:
            record = _with_replay_of(record, replay_of)
        ring.records.append(record)  # the deque drops the oldest at capacity
        if done is not None and not done.done():
            done.set_result(record)
        return record

    def _claim(
        self, record: Record, nonce: str | None
    ) -> tuple[str | None, asyncio.Future[Record] | None]:
        """The record id ``record`` replays and the replay's future, for a live ``nonce``
        handed out for ``record``'s own entity; else (None, None).

        The nonce is used up: a second request with it (the relay strips it from what
        listeners see, but a caller could still learn it) links to nothing.
        """
        expected = self._replays.get(nonce) if nonce else None
        if nonce is None or expected is None:
            return None, None
        hc_key, record_id = expected
        if hc_key != record.hybrid_connection.casefold():
            return None, None
        del self._replays[nonce]
        return record_id, self._replay_done.get(nonce)


def _with_replay_of(record: Record, replay_of: str) -> Record:
    return replace(record, replay_of=replay_of)


INSPECTOR: Final = web.AppKey("hybridrelay_inspector", Inspector)
CAPTURE: Final = web.RequestKey("hybridrelay_inspector_capture", Capture)


async def inspect_http(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run the HTTP-mode ``handler``; record the exchange when its entity is inspected.

    Costs one dictionary check per request while no hybrid connection is inspected.
    """
    inspector = request.app.get(INSPECTOR)
    if inspector is None or not inspector.active:
        return await handler(request)
    state = request.app[STATE]

    def wanted() -> bool:
        hc_name = request.get(HC_NAME)
        return hc_name is not None and inspector.enabled(hc_name)

    capture = request[CAPTURE] = Capture(body_limit=inspector.body_limit, wanted=wanted)
    received = state.now()
    status: int | None = None
    error: str | None = None
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except HybridRelayError as exc:
        status, error = exc.http_status, str(exc)
        raise
    except web.HTTPException as exc:
        status, error = exc.status, exc.reason
        raise
    except asyncio.CancelledError:
        error = "the sender went away"
        raise
    finally:
        hc_name = request.get(HC_NAME)
        if hc_name is not None and inspector.enabled(hc_name) and capture.keeps():
            answered = state.now()
            inspector.add(
                _record(request, hc_name, capture, received, answered, status, error, response),
                request.headers.get(REPLAY_HEADER),
            )


def _record(
    request: web.Request,
    hc_name: str,
    capture: Capture,
    received: float,
    answered: float,
    status: int | None,
    error: str | None,
    response: web.StreamResponse | None,
) -> Record:
    request_body = capture.request_body
    if request_body is None:
        # Streamed to the listener (over 64 KiB or of unknown length): not kept.
        request_body = CapturedBody(size=request.content_length, complete=False)
        if not request.body_exists:
            request_body = CapturedBody()
    response_body = CapturedBody()
    if capture.response is not None:
        response_body = capture.response.body()
    elif isinstance(response, web.Response) and isinstance(response.body, bytes):
        whole = response.body
        response_body = _body(
            whole[: capture.body_limit], len(whole), len(whole) <= capture.body_limit
        )
    return Record(
        id=secrets.token_hex(8),
        hybrid_connection=hc_name,
        method=request.method,
        target=redact_target(request.raw_path),
        request_headers=redact_headers(request.headers.items()),
        request_body=request_body,
        status=status,
        response_headers=redact_headers(response.headers.items()) if response else (),
        response_body=response_body,
        received_at=received,
        answered_at=answered,
        error=error,
    )
