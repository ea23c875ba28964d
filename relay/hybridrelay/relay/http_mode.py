"""HTTP request/response mode (HC §2.6, §2.7, §2.10, §3.2-3.3, §4).

A plain HTTP request to ``/{entity}[/suffix]`` becomes a ``request`` for one
listener of that entity:

- **inline** on the control channel when the body is known and at most 64 KiB
  and the header block at most 32 KiB: the JSON header, then the body as one
  binary message, adjacent (the control channel's send lock keeps them so);
- **rendezvous-only** otherwise: the control channel only carries ``address``
  and ``id``; the listener dials that address and receives the full request
  there, with the body streamed from the sender as one fragmented message.

The response may come back on the control channel or on any rendezvous socket
the listener opens to the request's address, in any order across requests,
matched by ``requestId``; its body streams to the sender as it arrives, with
backpressure. A rendezvous socket is closed (1000) once its response is
complete (HC §4: treat every HTTP rendezvous as single use).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, NamedTuple, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from hybridrelay.errors import (
    BadGatewayError,
    EntityNotFoundError,
    HeadersTooLargeError,
    HybridRelayError,
    InvalidMessageError,
    MethodNotAllowedError,
    NoListenerError,
    PayloadTooBigError,
    ProtocolError,
    RendezvousError,
    RequestTimeoutError,
    UpstreamTimeoutError,
)
from hybridrelay.logs import RELAY
from hybridrelay.protocol.addresses import HcAddress, build_rendezvous_address, parse_http_target
from hybridrelay.protocol.codes import (
    CONTROL_MESSAGE_LIMIT,
    INLINE_HEADERS_LIMIT,
    CloseCode,
    fits_inline,
)
from hybridrelay.protocol.connection import (
    CloseReceived,
    Connection,
    Event,
    Failed,
    Frame,
    Hold,
    LimitReached,
    Role,
    State,
)
from hybridrelay.protocol.frames import Opcode
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import RemoteEndpoint, Request, Response, decode, encode
from hybridrelay.relay.dashboard.sessions import sets_dashboard_cookie
from hybridrelay.relay.devices import DEVICES
from hybridrelay.relay.dispatch import Compose, deliver_to_listener
from hybridrelay.relay.forwarded import add_forwarding_headers
from hybridrelay.relay.handshake import accept_headers, parse_client_handshake
from hybridrelay.relay.inspector import CAPTURE, REPLAY_HEADER
from hybridrelay.relay.peer import remote_endpoint
from hybridrelay.relay.pending import (
    PENDING,
    BodyPipe,
    ListenerHandle,
    PendingRequest,
    PendingWork,
)
from hybridrelay.relay.sender_auth import authorize_sender
from hybridrelay.relay.splice import take_over
from hybridrelay.relay.state import HC_NAME, STATE, RelayState
from hybridrelay.relay.store.models import ensure_enabled

__all__ = [
    "RELAYED",
    "MethodNotAllowedError",
    "drop_invented_headers",
    "handle_http",
    "handle_request_dial",
]

# Marks responses that carry a listener's answer (their headers are the listener's).
RELAYED: Final = web.ResponseKey("hybridrelay_relayed_headers", frozenset)

log = logging.getLogger(RELAY)

# RFC 9110 §7.6.1 connection-level fields, plus the proxy ones; never forwarded either way.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "close",
        "host",
        "content-length",
        # The relay answers "Expect: 100-continue" itself; the listener gets the whole body.
        "expect",
    }
)
_CHUNK: Final = 64 * 1024
_SET_COOKIE: Final = frozenset({"set-cookie", "set-cookie2"})
LIMIT_DASHBOARD_COOKIE: Final = "dashboard_cookie"


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    # Fields named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


# The inspector's replay nonce is the relay's own (it links a replay to its record): a
# listener that saw it could claim the replay with a request of its own.
_NOT_FORWARDED: Final = _HOP_BY_HOP | {"servicebusauthorization", REPLAY_HEADER.lower()}
_NOT_FORWARDED_AUTH: Final = _NOT_FORWARDED | {"authorization"}


def _request_headers(request: web.Request, *, drop_authorization: bool) -> dict[str, str]:
    """Sender headers for ``requestHeaders``: auth and hop-by-hop removed, repeats joined."""
    dropped = _NOT_FORWARDED_AUTH if drop_authorization else _NOT_FORWARDED
    if "Connection" in request.headers:
        dropped = dropped | _connection_tokens(request.headers)
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower() in dropped:
            continue
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _response_headers(
    response: Response, via: str, limit_hit: Callable[[str], None]
) -> tuple[CIMultiDict[str], frozenset[str]]:
    """The listener's headers for the sender (plus ``Via``) and their lower-case names.

    A ``Set-Cookie`` (or ``Set-Cookie2``) that would set the dashboard's session cookie is
    dropped and counted: cookies ignore ports, so where the dashboard shares the public
    URL's host name a listener could otherwise overwrite an operator's session.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    raw = response.response_headers or {}
    connection = raw.get("connection", raw.get("Connection"))
    named = {t.strip().lower() for t in connection.split(",")} if connection else frozenset[str]()
    sent = {"via"}
    upstream_via = None
    for name, value in raw.items():
        lowered = name.lower()
        if lowered == "via":
            if upstream_via is None:
                upstream_via = value
            continue
        if lowered in _HOP_BY_HOP or lowered in named:
            continue
        if lowered in _SET_COOKIE and sets_dashboard_cookie(value):
            limit_hit(LIMIT_DASHBOARD_COOKIE)
            continue
        headers.add(name, value)
        sent.add(lowered)
    headers["Via"] = f"{upstream_via}, {via}" if upstream_via else via
    return headers, frozenset(sent)


def _token(
    request: web.Request, query_token: str | None, requires_auth: bool
) -> tuple[str | None, bool]:
    """The sender's token and whether ``Authorization`` carried it (HC §2.7 order)."""
    if query_token:
        return query_token, False
    header = request.headers.get("ServiceBusAuthorization")
    if header:
        return header, False
    if requires_auth and "Authorization" in request.headers:
        return request.headers["Authorization"], True
    return None, False


def _header_block_size(request: web.Request) -> int:
    headers = request.headers  # "name: value\r\n" each, summed in C
    return sum(map(len, headers.keys())) + sum(map(len, headers.values())) + 4 * len(headers)


async def handle_http(request: web.Request) -> web.StreamResponse:
    """Relay one plain HTTP request to a listener and stream its response back."""
    app = request.app  # a property chain: read once
    state = app[STATE]
    if request.method == "CONNECT":
        raise MethodNotAllowedError("CONNECT is not relayed")
    if "upgrade" in _connection_tokens(request.headers):
        raise ProtocolError("WebSocket senders must use /$hc/{hybrid connection}")
    if _header_block_size(request) > INLINE_HEADERS_LIMIT:
        raise HeadersTooLargeError("request headers are over 32 KiB")
    raw_path, _, raw_query = request.raw_path.partition("?")
    target = parse_http_target(raw_path, raw_query)
    found = await state.store.resolve(target.path)
    if found is None:
        raise EntityNotFoundError("Endpoint does not exist.")
    hc, suffix = found
    ensure_enabled(hc)
    request[HC_NAME] = hc.name
    if hc.http is False:
        raise EntityNotFoundError("HTTP relaying is disabled for this hybrid connection")
    token, from_authorization = _token(request, target.token, hc.requires_client_authorization)
    principal, device = await authorize_sender(state, request, token, hc=hc, path=hc.name + suffix)
    if not await state.cluster.listener_count(hc.name):
        raise BadGatewayError("no listener is connected to this hybrid connection")

    length = request.content_length
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    has_body = bool(length) or chunked
    inline = fits_inline(length) or not has_body
    devices = app[DEVICES]
    try:
        await devices.request_started(principal, request, hc_name=hc.name, device=device)
        # A small body is read whole before any pending work exists for it: a sender
        # that stalls in its body holds no rendezvous slot and no listener's attention.
        body = await _read_inline_body(request, state) if inline and has_body else None
        if inline and (capture := request.get(CAPTURE)) is not None:
            capture.request_body_read(body)  # the HTTP inspector keeps its first bytes
        pending_work = app[PENDING]
        endpoint = remote_endpoint(request)
        with pending_work.share.hold(hc.name):
            return await _exchange(
                request,
                state,
                pending_work,
                hc_name=hc.name,
                response_timeout=hc.request_timeout or state.config.relay.request_timeout,
                message=_Message(
                    id=pending_work.tracking_ids.new(),  # no getrandom() per request
                    request_target=target.request_target,
                    method=request.method,
                    remote_endpoint=endpoint,
                    request_headers=add_forwarding_headers(
                        _request_headers(request, drop_authorization=from_authorization),
                        request,
                        endpoint,
                    ),
                    body=has_body,
                ),
                inline=inline,
                body=body,
            )
    finally:
        devices.request_finished(request)


async def _read_inline_body(request: web.Request, state: RelayState) -> bytes:
    """The whole (at most 64 KiB) body; 408 when the sender goes silent in it."""
    idle = state.config.relay.body_idle_timeout
    parts: list[bytes] = []
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            raise _body_stalled(idle) from exc
        except (RequestPayloadError, HttpProcessingError) as exc:
            raise ProtocolError("the request body is malformed") from exc
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _body_stalled(idle: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"the request body stalled for {idle:g} s", limit="body_idle_timeout"
    )


class _Message(NamedTuple):
    """The request message's fields but its address (known once the key exists)."""

    id: str
    request_target: str
    method: str
    remote_endpoint: RemoteEndpoint | None
    request_headers: dict[str, str]
    body: bool


# What a PendingRequest holds until its message, address and all, is built (one
# frozen dataclass per request, not two).
_NO_MESSAGE: Final = Request(address="", id="")


async def _exchange(
    request: web.Request,
    state: RelayState,
    work: PendingWork,
    *,
    hc_name: str,
    response_timeout: float,
    message: _Message,
    inline: bool,
    body: bytes | None,
) -> web.StreamResponse:
    """Hand the request to a listener and stream its response back (HC §3.2-3.3, §4)."""
    timeout = response_timeout
    request_id = message.id
    pending = PendingRequest(
        hc_name=hc_name,
        request_id=request_id,
        listener_id="",  # set when a listener is chosen
        message=_NO_MESSAGE,
        sender=request,
        inline=inline,
        body=BodyPipe(high=state.config.relay.stream_buffer_size),
    )
    # The key must outlive the whole exchange: a large response is uploaded at its end.
    key = state.cluster.add_pending(pending, ttl=timeout + 5.0)
    address = build_rendezvous_address(
        public_url=state.rendezvous_url,
        entity=hc_name,
        suffix="",
        app_query="",
        action="request",
        tracking_id=request_id,
        rendezvous_key=key,
    )
    pending.message = Request(
        address=address,
        id=request_id,
        request_target=message.request_target,
        method=message.method,
        remote_endpoint=message.remote_endpoint,
        request_headers=message.request_headers,
        body=message.body,
    )
    requests = work.requests
    requests[request_id] = pending
    started = asyncio.get_running_loop().time()
    handle: ListenerHandle | None = None

    try:
        if body is not None:
            pending.prefetched = body
        compose = _composer(state, pending, address, body)
        try:
            try:
                handle = await deliver_to_listener(state.cluster, hc_name, compose=compose)
            except PayloadTooBigError:
                # Escaped header text can outgrow the control channel's 64 KiB.
                pending.inline = False
                handle = await deliver_to_listener(state.cluster, hc_name, compose=compose)
        except NoListenerError as exc:
            raise BadGatewayError(str(exc)) from exc
        state.cluster.stream_started(handle)
        # One timer for every request's limit (hybridrelay.deadlines); at the limit the
        # header fails with TimeoutError, which only this can set.
        deadline = work.deadlines.arm(timeout, _no_answer, pending)
        try:
            response = await pending.header
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                "The request was routed to the listener but the listener did not respond "
                f"in the required time ({timeout:g} s).",
                limit="request_timeout",
            ) from exc
        finally:
            work.deadlines.disarm(deadline)
        state.metrics.http_seconds.observe(asyncio.get_running_loop().time() - started)
        return await _stream_response(request, pending, response, state, timeout)
    finally:
        state.cluster.discard_pending(key)
        requests.pop(request_id, None)
        if handle is not None:
            state.cluster.stream_ended(handle)
        if not (pending.header.done() and pending.body.finished):  # else a no-op
            pending.fail(BadGatewayError("request finished"))
        pending.closed = True
        if pending.sockets:  # inline exchanges have none
            for sock in list(pending.sockets):
                cast(HttpRendezvous, sock).shutdown()


def _no_answer(pending: PendingRequest) -> None:
    """request_timeout: the listener has not answered in time."""
    if not pending.header.done():
        pending.header.set_exception(TimeoutError())


def _composer(
    state: RelayState, pending: PendingRequest, address: str, body: bytes | None
) -> Compose:
    """Inline to a listener on this node when small; rendezvous-only otherwise.

    A listener on another node always gets the rendezvous-only form: it dials this
    node and takes the request (body streamed) there, so no payload crosses Redis.
    """

    def compose(candidate: ListenerHandle) -> tuple[Request, bytes | None]:
        pending.listener_id = candidate.listener_id
        if pending.inline and candidate.node_id == state.cluster.node_id:
            pending.delivered = True
            return pending.message, body
        pending.delivered = False
        return Request(address=address, id=pending.request_id), None

    return compose


async def _stream_response(
    request: web.Request,
    pending: PendingRequest,
    response: Response,
    state: RelayState,
    idle_timeout: float,
) -> web.StreamResponse:
    status = response.status_code
    reason = _reason(response.status_description)
    headers, sent = _response_headers(response, state.via, state.metrics.limit_hit)
    state.metrics.http_answered(pending.hc_name, status)
    whole = pending.body.take_all() if response.body else None
    if whole is not None:
        # The body came whole (inline, HC §4): answer with a Content-Length, not chunks.
        answer = web.Response(status=status, reason=reason, headers=headers, body=whole)
        answer[RELAYED] = sent
        return answer
    reply = web.StreamResponse(status=status, reason=reason, headers=headers)
    reply[RELAYED] = sent
    await reply.prepare(request)
    # A sender that stops reading its response holds the listener's stream and a pending
    # slot: it gets as long as a sender may pause in its own body, then it is cut.
    write_timeout = state.config.relay.body_idle_timeout
    capture = request.get(CAPTURE)  # the HTTP inspector's, when it is on for this entity
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await pending.body.read()
            except TimeoutError:
                # The listener paused in its body for the whole request timeout.
                state.metrics.limit_hit("request_timeout")
                raise
            if not chunk:
                break
            if capture is not None:
                capture.response_chunk(chunk)
            try:
                async with asyncio.timeout(write_timeout):
                    await reply.write(chunk)
            except TimeoutError:
                state.metrics.limit_hit("body_idle_timeout")
                raise
    except (HybridRelayError, TimeoutError) as exc:
        # Headers are out: the only honest signal left is a broken response (no final
        # chunk), never a silently truncated 200 (issue 3).
        log.warning(
            "http_response_broken",
            extra={"request_id": pending.request_id, "reason": str(exc) or type(exc).__name__},
        )
        if request.transport is not None:
            request.transport.abort()
        return reply
    await reply.write_eof()
    return reply


async def drop_invented_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: keep aiohttp from adding a Content-Type the listener never sent."""
    sent = response.get(RELAYED)
    if sent is not None and "content-type" not in sent:
        response.headers.popall("Content-Type", None)


def _reason(description: str | None) -> str | None:
    if not description:
        return None
    if description.isascii() and description.isprintable():  # "OK": nothing to replace
        clean = description.strip()
    else:
        clean = "".join(c if 32 <= ord(c) < 127 else " " for c in description).strip()
    return clean[:200] or None


# -- the listener's rendezvous socket for a request (sb-hc-action=request) -----------------


async def handle_request_dial(
    request: web.Request, state: RelayState, addr: HcAddress
) -> web.StreamResponse:
    """A listener dialled a request's address: hand it the request and/or take its response."""
    key = addr.rendezvous_key
    if not key:
        raise ProtocolError("a request dial needs the address the relay handed out")  # HC §2.6
    pending = state.cluster.find_pending(key)
    if not isinstance(pending, PendingRequest) or pending.body.finished:
        raise RendezvousError("the rendezvous address is unknown, used or expired")
    if not pending.dialled_at(addr.path):
        log.warning("rendezvous_path_mismatch", extra={"hc": pending.hc_name, "action": "request"})
        raise RendezvousError("the rendezvous address is unknown, used or expired")
    handshake = parse_client_handshake(request.method, request.headers)
    chosen = handshake.protocols[0] if handshake.protocols else None
    reply = web.StreamResponse(status=101, headers=accept_headers(handshake, chosen))
    await reply.prepare(request)
    sock = HttpRendezvous(
        pending,
        max_queued_control=state.config.relay.max_queued_control_frames,
        close_timeout=state.config.relay.close_timeout,
        limit_hit=state.metrics.limit_hit,
    )
    try:
        sock.attach(take_over(request))
    except ConnectionError:
        return reply
    pending.sockets.add(sock)
    try:
        if not pending.delivered:
            # Rendezvous-only request: this socket gets the full request (HC §3.2).
            pending.delivered = True
            await sock.send_request(pending, state.config.relay.body_idle_timeout)
        await sock.closed
    except (ConnectionError, HybridRelayError, TimeoutError) as exc:
        log.info(
            "request_rendezvous_failed", extra={"request_id": pending.request_id, "error": str(exc)}
        )
        if isinstance(exc, RequestTimeoutError | ProtocolError):
            # The sender's body stalled or was malformed: the sender gets its 408/400
            # (unless the response has started), the listener a cut request.
            pending.fail(exc)
        else:
            pending.fail(BadGatewayError("the listener's rendezvous connection failed"))
        sock.abort()
    finally:
        pending.sockets.discard(sock)
    return reply


# A rendezvous socket's write buffer mark (asyncio's default): over it, request body
# chunks wait (send_request) and pongs owed to the listener queue in the Connection.
_WRITE_HIGH_WATER: Final = 64 * 1024


class HttpRendezvous(asyncio.Protocol):
    """One listener rendezvous socket of an HTTP request, after the relay's 101.

    Thin glue over a sans-I/O :class:`~hybridrelay.protocol.connection.Connection`
    (server role, streaming): the WebSocket rules are its own, as for a splice leg.
    Pongs the relay owes the listener wait while the socket's write buffer is over its
    mark (a listener that pings and never reads must not fill relay memory, issue 11);
    at ``max_queued_control`` of them later pongs replace the newest waiting one (RFC
    6455 §5.5.3) and the socket is not read until they are written. Reading also stops
    while the sender has not taken the response body (``BodyPipe``, the Connection's
    :attr:`Hold.PEER_FULL`); it resumes only when nothing holds it.
    """

    def __init__(
        self,
        pending: PendingRequest,
        *,
        max_queued_control: int = 64,
        close_timeout: float = 10.0,
        limit_hit: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._pending = pending
        # Header JSON is checked by decode(); the body is the listener's business.
        self._conn = Connection(
            Role.SERVER,
            streaming=True,
            validate_utf8=False,
            max_queued_control=max_queued_control,
            high_water=_WRITE_HIGH_WATER,
        )
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.BaseProtocol | None = None
        self._reading = True  # aiohttp hands the transport over reading
        self._text: bytearray | None = None  # a response header being received
        self._in_body = False
        self._write_paused = False
        self._close_timeout = close_timeout
        self._limit_hit = limit_hit
        self._drain: asyncio.Future[None] | None = None
        self._close_after_flush = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def attach(self, parts: tuple[asyncio.Transport, asyncio.BaseProtocol, bytes]) -> None:
        transport, inner, tail = parts
        self._transport = transport
        self._inner = inner
        # The transport and the Connection agree on when the listener counts as full.
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_HIGH_WATER // 4)
        transport.set_protocol(self)
        if transport.is_closing():
            self.connection_lost(None)
            return
        self._pending.body.set_flow_control(self._hold_for_body, self._release_for_body)
        if tail:
            self.data_received(tail)

    # -- sending the request (rendezvous-only form) ------------------------------------

    async def send_request(self, pending: PendingRequest, body_idle_timeout: float) -> None:
        self._send_frame(Opcode.TEXT, encode(pending.message).encode(), fin=True)
        if not pending.message.body:
            return
        # HC §4: the body is exactly one binary message, streamed as it arrives.
        opcode = int(Opcode.BINARY)
        async for chunk in _read_body(pending, body_idle_timeout):
            self._send_frame(opcode, chunk, fin=False)
            opcode = int(Opcode.CONTINUATION)
            await self._drained()
        self._send_frame(opcode, b"", fin=True)

    def _send_frame(self, opcode: int, payload: bytes, *, fin: bool) -> None:
        if self._transport is None or self.closed.done() or not self._conn.can_send:
            raise ConnectionResetError("rendezvous connection closed")
        self._conn.send_frame(opcode, payload, fin=fin)
        self._flush()

    async def _drained(self) -> None:
        if self._write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def _flush(self) -> None:
        """Write what the Connection has for the listener."""
        out = self._conn.data_to_send()
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            return
        transport.writelines(out)
        if self._close_after_flush and not self._conn.control_pending:
            transport.close()

    def _sync_reading(self) -> None:
        wanted = self._conn.wants_read
        transport = self._transport
        if wanted is not self._reading and transport is not None and not self.closed.done():
            self._reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._write_paused = True
        transport = cast(asyncio.Transport, self._transport)
        self._conn.outgoing_buffered(transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._write_paused = False
        self._conn.outgoing_buffered(0)  # under the low mark: owed pongs go out
        self._flush()
        self._sync_reading()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _hold_for_body(self) -> None:
        self._conn.hold_reading(Hold.PEER_FULL)
        self._sync_reading()

    def _release_for_body(self) -> None:
        self._conn.unhold_reading(Hold.PEER_FULL)
        self._sync_reading()

    def data_received(self, data: bytes) -> None:
        events = self._conn.receive_data(data)
        try:
            for event in events:
                self._on_event(event)
        except HybridRelayError as exc:
            if exc.limit is not None:  # a response header over HC's 64 KiB
                self._limit_hit(exc.limit)
            self._fail(exc.close_code, str(exc)[:100])
        self._flush()  # pongs, a close
        self._sync_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.receive_eof()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._in_body or (self._text is not None):
            self._pending.body.fail(BadGatewayError("the listener closed mid-response"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("rendezvous connection lost"))
            self._drain.exception()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- the listener's response -------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if type(event) is Frame:
            self._on_piece(event)
        elif isinstance(event, CloseReceived):
            # The Connection echoed it (or it answers our close): the exchange is over.
            self._close_transport()
        elif isinstance(event, Failed):
            if event.limit is not None:  # a control frame over RFC 6455's 125 bytes
                self._limit_hit(event.limit)
            self._fail(event.code, event.reason)
        elif isinstance(event, LimitReached):
            self._limit_hit(event.limit)
        # Ping: its pong is queued. Pong: liveness only.

    def _on_piece(self, piece: Frame) -> None:
        if piece.start:
            if piece.opcode == Opcode.TEXT:
                self._text = bytearray()
            elif piece.opcode == Opcode.BINARY:
                if not self._pending.header.done():
                    raise InvalidMessageError("a body arrived before its response header")
                self._in_body = True
        message_end = piece.end and piece.fin
        if self._text is not None:
            self._text += piece.data
            if len(self._text) > CONTROL_MESSAGE_LIMIT:
                raise PayloadTooBigError(
                    "response header over 64 KiB", limit="control_message_limit"
                )
            if message_end:
                text, self._text = bytes(self._text), None
                self._on_header(text)
        elif self._in_body:
            # Always bytes here: a masked (server) connection unmasks into new bytes and
            # never hands out views; bytes() of bytes is the same object, no copy.
            self._pending.body.feed(bytes(piece.data))
            if message_end:
                self._in_body = False
                self._pending.body.feed_eof()
                self.finish()

    def _on_header(self, text: bytes) -> None:
        try:
            message = decode(text)
            if not isinstance(message, Response) or message.request_id != self._pending.request_id:
                raise InvalidMessageError("expected the response to this socket's request")
            check_response(message)
        except HybridRelayError:
            # The sender gets a 502 now, not a 504 at the request timeout; this socket is
            # closed with the error's code (1002) by data_received.
            self._pending.fail(BadGatewayError("the listener's response is not valid HTTP"))
            raise
        if not self._pending.deliver_header(message):
            raise InvalidMessageError("a second response for the same request")
        if not message.body:
            self.finish()

    # -- closing --------------------------------------------------------------------------

    def _close_transport(self) -> None:
        """Close TCP once our close frame is out (it may wait for room in the buffer)."""
        transport = self._transport
        if transport is None:
            return
        self._flush()
        if self._conn.control_pending:
            self._close_after_flush = True
            self._arm_close_timer()
            return
        transport.close()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._transport is not None:
            # A listener that never answers the close is cut (close_timeout, counted).
            self._close_timer = asyncio.get_running_loop().call_later(
                self._close_timeout, self._close_timed_out
            )

    def finish(self) -> None:
        """Close with 1000: the exchange on this socket is over (single use, HC §4)."""
        if self._conn.close_sent is not None or self._in_body:
            return
        if self._conn.state is State.CLOSED:
            return  # the listener's close or a failure ended it already
        self._conn.send_close(CloseCode.NORMAL)
        self._flush()
        self._arm_close_timer()

    def _close_timed_out(self) -> None:
        if self._transport is not None and not self.closed.done():
            self._limit_hit("close_timeout")
            self._transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        log.warning("request_rendezvous_protocol_error", extra={"code": code, "reason": reason})
        if self._in_body or not self._pending.header.done():
            # The sender learns now (502), not at the request timeout (504).
            self._pending.fail(BadGatewayError("the listener broke the protocol"))
            self._in_body = False
        self._text = None
        self._conn.fail(code, reason)  # our close with the code, unless one went out
        self._close_transport()

    def shutdown(self) -> None:
        """The request is over: close politely, or cut a socket still carrying a body."""
        if self._in_body:
            self.abort()
        else:
            self.finish()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def _read_body(pending: PendingRequest, idle: float) -> AsyncIterator[bytes]:
    if pending.prefetched is not None:
        if pending.prefetched:
            yield pending.prefetched
        return
    # Only while the sender's handler still owns its request: once it has answered
    # (say 504), aiohttp may drain the body itself.
    while not pending.closed:
        try:
            async with asyncio.timeout(idle):
                chunk = await pending.sender.content.read(_CHUNK)
        except TimeoutError as exc:
            raise _body_stalled(idle) from exc
        except (RequestPayloadError, HttpProcessingError) as exc:
            # Bad chunked framing or a body cut short: the sender's fault (400).
            raise ProtocolError("the request body is malformed") from exc
        if not chunk:
            return
        yield chunk
