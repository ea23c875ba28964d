"""Listener: keeps one control channel open and serves every ``accept`` and ``request`` on it.

Each accepted connection (HC §2.2-2.5) is either bridged to a target (byte for
byte to ``tcp://`` or ``unix://``, datagram by datagram to ``udp://``, see
:mod:`~hybridrelay.listener.targets`) or handed to a Python handler as a WebSocket
stream. Accept hooks (:mod:`~hybridrelay.listener.hooks`) run first and may reject
the connection or wrap its stream. Each HTTP-mode
``request`` (HC §2.6, §3.2-3.3, §4) goes to an :data:`HttpHandler`, for example an
:class:`HttpTarget` forwarding to a local HTTP service. The control channel
reconnects with full-jitter backoff and never gives up on its own, except on
404 (the hybrid connection does not exist), which retrying cannot fix. Tokens
are renewed before they expire. ``stop`` drains: no new accepts, open streams
and requests get ``drain_timeout`` seconds to finish.

Every send on the control channel (``renewToken``, inline ``response`` header
and body) holds one lock, so a response header and its body message are always
adjacent (HC §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from hybridrelay.backoff import Backoff, ReconnectBackoff
from hybridrelay.bridge import BridgeStream, bridge
from hybridrelay.datagram_bridge import DatagramBridge
from hybridrelay.errors import (
    ConnectionClosedError,
    EntityNotFoundError,
    HandshakeError,
    HybridRelayError,
    InvalidMessageError,
    PayloadTooBigError,
)
from hybridrelay.listener.hooks import (
    Accept as AcceptVerdict,
    AcceptHook,
    AcceptRequest,
    Reject,
    StreamWrapper,
)
from hybridrelay.listener.http_target import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpTarget,
    build_request,
    close_body,
    error_response,
    response_header_map,
)
from hybridrelay.listener.targets import (
    StreamTarget,
    Target,
    TcpTarget,
    UdpConnection,
    UdpTarget,
    open_stream,
    parse_target,
)
from hybridrelay.logs import LISTENER, ConnectionLogger, redact_url
from hybridrelay.outage import OutageReport
from hybridrelay.probe import relay_url_problem
from hybridrelay.protocol.addresses import path_escape_reason
from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT, INLINE_BODY_LIMIT
from hybridrelay.protocol.http_response import check_response
from hybridrelay.protocol.messages import (
    Accept,
    RenewToken,
    Request,
    Response,
    decode,
    encode,
)
from hybridrelay.protocol.sas import TokenProvider, audience_for, token_expiry
from hybridrelay.wsclient import DEFAULT_MAX_SIZE, WsConnection, ws_connect

__all__ = [
    "Listener",
    "ListenerStats",
    "RendezvousHosts",
    "StreamHandler",
    "StreamTarget",
    "Target",
    "TcpTarget",
    "parse_target",
]

log = logging.getLogger(LISTENER)

StreamHandler = Callable[[WsConnection, AcceptRequest], Awaitable[None]]

# Bodies of known size are sent in frames of this size over a rendezvous socket.
_FRAGMENT: Final = 64 * 1024
# RFC 6455 §4.1: every subprotocol a client offers is an RFC 7230 token.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_INVALID_RESPONSE_BODY: Final = (
    b'{"error":{"code":"InternalServerError","message":"invalid response"}}'
)


@dataclass
class ListenerStats:
    connects: int = 0  # control channel connections made
    attempts: int = 0  # control channel connection attempts
    accepted: int = 0
    rejected: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0  # HTTP-mode requests received
    requests_rendezvous: int = 0  # of which rendezvous-only (fetched from a rendezvous socket)
    responses_inline: int = 0  # answered on the control channel
    responses_rendezvous: int = 0  # answered over a rendezvous socket
    request_failures: int = 0  # requests that got no complete response from us
    datagrams_dropped: int = 0  # udp:// targets: datagrams dropped either way (UDP semantics)


class Listener:
    """Serves one hybrid connection.

    Args:
        relay: relay base URL, ``ws://host:port`` or ``wss://host``.
        hc: hybrid connection name (may contain ``/``).
        token_provider: issues SAS tokens with the Listen right.
        target: bridge every connection to this target (``tcp://``, ``unix://`` or
            ``udp://``, see :func:`parse_target`), or
        handler: call this coroutine with each connection's stream.
        http_handler: answer HTTP-mode requests with this (an :class:`HttpTarget` or
            any :data:`HttpHandler`); without it requests are answered 501. At least
            one of ``target``, ``handler`` and ``http_handler`` is required.
        hooks: accept hooks, run in order; the first :class:`Reject` wins, and the
            wrappers of :class:`~hybridrelay.listener.hooks.Accept` verdicts nest.
        listener_id: sent as ``sb-hc-id``; random when omitted.
        request_timeout: longest an ``http_handler`` may take to return its response;
            after it the request is dropped (the relay has answered 504 by then, HC §4).
        connect_timeout: bound on dialling the relay and on connecting to the target.
        udp_idle_timeout: a ``udp://`` stream with no datagram either way for this long
            is closed (1000).
        rendezvous_hosts: hosts besides those of ``relay`` and ``fallback_relays`` that
            the relay may send rendezvous addresses for: exact names or IPs, or
            ``*.example.com`` for any name under example.com (relay nodes behind one
            load-balanced name, each with its own ``public_url``). Any other address is
            refused: the listener never dials where a relay (or whoever controls it)
            points it, and never over ws:// when the relay is wss://.
        max_message_size: the largest message reassembled from the relay, in bytes: a
            control-channel message, a request on a rendezvous socket, a message a
            ``handler`` receives with ``recv()`` (default 1 MiB, at least 64 KiB, the
            control-channel limit of HC §3; None: no limit). A larger one closes that
            socket with 1009. HTTP request bodies are streamed, never reassembled.
    """

    def __init__(
        self,
        relay: str,
        hc: str,
        *,
        token_provider: TokenProvider,
        target: StreamTarget | None = None,
        handler: StreamHandler | None = None,
        http_handler: HttpHandler | None = None,
        hooks: Sequence[AcceptHook] = (),
        listener_id: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float = 30.0,
        max_streams: int = 1024,
        connect_timeout: float = 10.0,
        drain_timeout: float = 10.0,
        backoff: Backoff | None = None,
        select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
        request_timeout: float = 60.0,
        udp_idle_timeout: float = 60.0,
        fallback_relays: Sequence[str] = (),
        rendezvous_hosts: Sequence[str] = (),
        max_message_size: int | None = DEFAULT_MAX_SIZE,
    ) -> None:
        if target is not None and handler is not None:
            raise ValueError("give at most one of target= and handler=")
        if target is None and handler is None and http_handler is None:
            raise ValueError("give target=, handler= or http_handler=")
        if max_message_size is not None and max_message_size < CONTROL_MESSAGE_LIMIT:
            raise ValueError("max_message_size must be at least 64 KiB (HC §3)")
        for url in (relay, *fallback_relays):
            # Retrying an https:// URL forever helps no one: refuse it here.
            if url and (problem := relay_url_problem(url)) is not None:
                raise ValueError(problem)
        self.relay = relay.rstrip("/")
        self.hc = hc.strip("/")
        self.listener_id = listener_id or str(uuid.uuid4())
        self._tokens = token_provider
        self._target = target
        self._handler = handler
        self._http_handler = http_handler
        self._request_timeout = request_timeout
        self._udp_idle_timeout = udp_idle_timeout
        # One lock for every send on the control channel (HC §4 adjacency).
        self._control_lock = asyncio.Lock()
        self._exchanges: set[_Exchange] = set()  # HTTP requests in flight
        self._hooks = tuple(hooks)
        self._ssl = ssl_context
        self._ping_interval = ping_interval
        self._max_streams = max_streams
        self._connect_timeout = connect_timeout
        self._drain_timeout = drain_timeout
        # One policy for every listener (flags, agent config, code): README's promise.
        self._backoff = backoff or ReconnectBackoff()
        # Attempts failing for one cause are logged once, then summarised.
        self._outage = OutageReport()
        self._quiet = False  # the last failure was not logged: nor is its reconnect
        self._select = select_subprotocol or (lambda offered: offered[0] if offered else None)
        self._streams: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self._renew_now = asyncio.Event()
        self.idle = asyncio.Event()  # set while no relayed stream is open
        self.idle.set()
        self.stats = ListenerStats()
        # The relay first, then the other nodes to fail over to, in turn.
        self._relays = [self.relay, *(r.rstrip("/") for r in fallback_relays if r)]
        self._relay_index = 0
        self._rendezvous_hosts = RendezvousHosts(self._relays, rendezvous_hosts)
        self._max_message_size = max_message_size
        self.listen_url = self._listen_url()
        self._log = ConnectionLogger(log, {"hc": self.hc, "listener": self.listener_id})

    # -- lifecycle -------------------------------------------------------------------

    def set_token_provider(self, provider: TokenProvider) -> None:
        """Switch to ``provider`` (key rotation) without dropping the control channel or
        any stream: a renewToken signed with the new key goes out at once, so the old
        key can be revoked on the relay right after the reload."""
        self._tokens = provider
        self._renew_now.set()

    def _listen_url(self) -> str:
        return (
            f"{self.relay}/$hc/{quote(self.hc, safe='/')}?sb-hc-action=listen"
            f"&sb-hc-id={quote(self.listener_id, safe='')}"
        )

    def _fail_over(self) -> None:
        """Dial the next relay node next time (the one just tried is gone or leaving)."""
        if len(self._relays) < 2:
            return
        self._relay_index = (self._relay_index + 1) % len(self._relays)
        self.relay = self._relays[self._relay_index]
        self.listen_url = self._listen_url()
        self._log.info("relay_fail_over", extra={"relay": redact_url(self.relay)})

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises EntityNotFoundError if the relay says 404."""
        try:
            while not stop.is_set():
                delay = await self._connect_once(stop)
                if stop.is_set():
                    break
                self._log.log(
                    logging.DEBUG if self._quiet else logging.INFO,
                    "reconnect_scheduled",
                    extra={"delay_s": round(delay, 2)},
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
        finally:
            await self._drain()
            if isinstance(self._http_handler, HttpTarget):
                await self._http_handler.aclose()

    async def _connect_once(self, stop: asyncio.Event) -> float:
        """One control-channel session; returns how long to wait before the next."""
        self.stats.attempts += 1
        token = self._tokens.token_for(audience_for(self.listen_url), time.time())
        try:
            ws = await ws_connect(
                self.listen_url,
                headers={"ServiceBusAuthorization": token},
                ssl=self._ssl,
                open_timeout=self._connect_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_interval,
                max_size=self._max_message_size,
            )
        except HandshakeError as exc:
            if exc.status == 404:
                self._log.error(
                    "hybrid_connection_not_found", extra={"relay": redact_url(self.relay)}
                )
                raise EntityNotFoundError(
                    f"hybrid connection {self.hc!r} does not exist on {self.relay}"
                ) from exc
            if exc.status in (401, 403):
                fields: dict[str, object] = {
                    "status": exc.status,
                    "reason": exc.reason,
                    "detail": exc.body[:200],
                }
                if exc.status == 401 and self.stats.connects:
                    # The same token provider was accepted before: the relay's key changed
                    # (a development relay without a kept key, a rotated or revoked key).
                    fields["hint"] = (
                        "this listener was connected before with the same key: the relay's"
                        " key may have changed (regenerated, rotated, or a development relay"
                        " that made a new one)"
                    )
                self._log.error("listen_refused", extra=fields)
                return self._backoff.at_cap()
            self._failed("listen_failed", {"status": exc.status, "reason": exc.reason})
            return self._backoff.next_delay()
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self._failed("relay_unreachable", {"error": str(exc) or type(exc).__name__})
            self._fail_over()
            return self._backoff.next_delay()
        self._quiet = False
        if (outage := self._outage.succeeded(time.monotonic())) is not None:
            self._log.info(
                "relay_reachable_again",
                extra={"down_s": round(outage.seconds, 1), "attempts": outage.attempts},
            )
        self.stats.connects += 1
        self._backoff.succeeded(time.monotonic())
        self._log.info("control_channel_open", extra={"relay": redact_url(self.relay)})
        self.connected.set()
        try:
            moved = await self._serve(ws, stop, token)
        finally:
            self.connected.clear()
            self._backoff.failed(time.monotonic())
        if moved and len(self._relays) > 1:
            # The node is going away (1001) or vanished: another node takes us now.
            self._fail_over()
            return 0.0
        return self._backoff.next_delay()

    def _failed(self, event: str, fields: dict[str, object]) -> None:
        """Log the first failure of a streak, then a summary a minute (the rest: debug)."""
        verdict, outage = self._outage.failed(time.monotonic())
        self._quiet = verdict == "quiet"
        if verdict == "first":
            self._log.warning(event, extra=fields)
        elif verdict == "summary":
            summary = {"down_s": round(outage.seconds, 1), "attempts": outage.attempts}
            self._log.warning("relay_still_unreachable", extra=summary | fields)
        else:
            self._log.debug(event, extra=fields)

    async def _serve(self, ws: WsConnection, stop: asyncio.Event, token: str) -> bool:
        """Serve one control channel; True when the relay node left (1001 or no close)."""

        async def close_on_stop() -> None:
            await stop.wait()
            # The relay fails requests still owed on a closed control channel unless they
            # have a rendezvous socket open; open one for each so they can finish.
            await self._secure_exchanges()
            async with self._control_lock:  # never between a response header and its body
                # Half-close: accepts the relay sent before it saw our close still arrive
                # and are served, instead of leaving their senders to time out.
                await ws.close_write(1000, "listener stopping")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_timeout or 1.0):
                    await ws.wait_closed()
            ws.abort()

        closer = asyncio.create_task(close_on_stop())
        renewer = asyncio.create_task(self._renew_loop(ws, token))
        moved = False
        try:
            await self._control_loop(ws)
        except ConnectionClosedError as exc:
            level = logging.INFO if stop.is_set() else logging.WARNING
            self._log.log(
                level, "control_channel_closed", extra={"code": exc.code, "reason": exc.reason}
            )
            moved = exc.code in (1001, 1006)
        except PayloadTooBigError as exc:
            # recv() failed the channel with 1009 (max_message_size); reconnect as after
            # any other close. The relay's misbehaviour, not ours: a warning.
            self._log.warning(
                "control_channel_closed", extra={"code": exc.close_code, "reason": str(exc)}
            )
        finally:
            for task in (closer, renewer):
                task.cancel()
            for task in (closer, renewer):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ws.abort()
        return moved

    async def _renew_loop(self, ws: WsConnection, token: str) -> None:
        while True:
            expiry = token_expiry(token)
            if expiry is None:
                return
            # Renew when a quarter of the lifetime is left, at least 30 s before expiry,
            # or at once when the key changed.
            lifetime = max(expiry - time.time(), 0.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(min(lifetime * 0.75, lifetime - 30.0), 1.0)):
                    await self._renew_now.wait()
            self._renew_now.clear()
            token = self._tokens.token_for(audience_for(self.listen_url), time.time())
            try:
                async with self._control_lock:
                    await ws.send(encode(RenewToken(token=token)))
            except ConnectionClosedError:
                return
            self._log.info("token_renewed")

    async def _drain(self) -> None:
        if not self._streams:
            return
        self._log.info(
            "draining", extra={"open": len(self._streams), "deadline_s": self._drain_timeout}
        )
        _, pending = await asyncio.wait(set(self._streams), timeout=self._drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- control channel ---------------------------------------------------------------

    async def _control_loop(self, ws: WsConnection) -> None:
        """Read the control channel until it closes (raises ConnectionClosedError).

        Nothing slow happens here: accepts and requests each get their own task. The
        only await besides the next message is an inline request's body, which the
        relay sends right after the request (HC §4).
        """
        pending: str | bytes | None = None
        while True:
            message = pending if pending is not None else await ws.recv()
            pending = None
            if isinstance(message, bytes):
                # Only a body after an inline request may be binary; it was read below.
                self._log.warning("unexpected_binary_message", extra={"size": len(message)})
                continue
            try:
                decoded = decode(message)
            except HybridRelayError as exc:
                self._log.warning("control_message_invalid", extra={"error": str(exc)})
                continue
            if isinstance(decoded, Accept):
                if self._address_allowed(decoded.address, decoded.id):
                    self._spawn(self._handle_accept(decoded))
            elif isinstance(decoded, Request):
                body: bytes | None = None
                if decoded.inline and decoded.body:
                    following = await ws.recv()
                    if isinstance(following, str):
                        self._log.warning("request_body_missing", extra={"id": decoded.id})
                        if self._address_allowed(decoded.address, decoded.id):
                            self._spawn(self._answer_broken_request(ws, decoded))
                        pending = following  # it is the next control message
                        continue
                    body = following
                if self._address_allowed(decoded.address, decoded.id):
                    self._spawn(self._handle_request(ws, decoded, body))
            else:
                self._log.warning(
                    "unexpected_control_message", extra={"kind": type(decoded).__name__}
                )

    def _address_allowed(self, address: str, tracking_id: str) -> bool:
        """Whether to dial a rendezvous address from the relay; logs a refusal.

        A refused accept or request is answered with nothing: any answer (a reject, a
        response over rendezvous) would be a dial to that address.
        """
        why = self._rendezvous_hosts.refusal(address, self.relay)
        if why is None:
            return True
        self._log.warning(
            "rendezvous_address_refused",
            extra={"id": tracking_id, "address": redact_url(address), "reason": why},
        )
        return False

    def _spawn(self, coro: Awaitable[None]) -> None:  # accepts and requests alike
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _handle_accept(self, accept: Accept) -> None:
        headers = {k.lower(): v for k, v in accept.connect_headers.items()}
        offered = tuple(
            p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()
        )
        request = AcceptRequest(
            hc=self.hc,
            id=accept.id,
            headers=headers,
            remote=accept.remote_endpoint,
            subprotocols=offered,
        )
        clog = ConnectionLogger(log, {"hc": self.hc, "conn": accept.id})
        try:
            if len(self._streams) > self._max_streams:
                await self._reject(accept.address, Reject(503, "listener at capacity"), clog)
                return
            if not all(_TOKEN.fullmatch(p) for p in offered):
                # The sender's handshake is invalid: refuse it now (400), rather than fail
                # our own dial on it and leave the sender to wait out the rendezvous.
                clog.warning("accept_invalid_subprotocol", extra={"offered": repr(offered)[:200]})
                await self._reject(
                    accept.address, Reject(400, "invalid Sec-WebSocket-Protocol"), clog
                )
                return
            wrappers = await self._run_hooks(request, clog) if self._hooks else []
            if isinstance(wrappers, Reject):
                await self._reject(accept.address, wrappers, clog)
                return
            if self._target is not None:
                await self._bridge_to_target(self._target, accept, request, clog, wrappers)
            elif self._handler is not None:
                if wrappers:
                    clog.error("stream_wrap_needs_target")
                    await self._reject(accept.address, Reject(500, "listener misconfigured"), clog)
                    return
                await self._run_handler(self._handler, accept, request)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            clog.warning("connection_failed", extra={"error": str(exc) or type(exc).__name__})
        except Exception:  # noqa: BLE001 - top of a stream task: the app's bug or ours, logged
            clog.exception("connection_crashed")

    async def _run_hooks(
        self, request: AcceptRequest, clog: ConnectionLogger
    ) -> Reject | list[StreamWrapper]:
        """The first Reject, or the wrappers of every Accept, in hook order.

        A hook that fails or returns something else rejects with 500: a broken policy
        must not let connections through.
        """
        wrappers: list[StreamWrapper] = []
        for hook in self._hooks:
            try:
                # object: hooks loaded from config files are not type checked.
                verdict: object = hook(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:  # noqa: BLE001 - a plugin's bug; the sender gets a 500
                clog.exception("accept_hook_failed", extra={"hook": _name_of(hook)})
                return Reject(500, "accept hook failed")
            if isinstance(verdict, Reject):
                return verdict
            if isinstance(verdict, AcceptVerdict):
                if verdict.wrap is not None:
                    wrappers.append(verdict.wrap)
            elif verdict is not None:
                clog.error(
                    "accept_hook_bad_result",
                    extra={"hook": _name_of(hook), "type": type(verdict).__name__},
                )
                return Reject(500, "accept hook failed")
        return wrappers

    async def _rendezvous(
        self, accept: Accept, request: AcceptRequest, *, stream: bool
    ) -> WsConnection:
        chosen = self._select(request.subprotocols) if request.subprotocols else None
        return await ws_connect(
            accept.address,
            subprotocols=(chosen,) if chosen else (),
            ssl=self._ssl,
            open_timeout=self._connect_timeout,
            # A relay that vanishes without closing (half-open) must not pin the target
            # connection forever: the relay answers pings per hop (splice.py).
            ping_interval=self._ping_interval,
            auto_close_echo=not stream,
            max_size=self._max_message_size,
        )

    def _stream_started(self) -> None:
        self.stats.accepted += 1
        self.stats.active += 1
        self.idle.clear()

    def _stream_ended(self) -> None:
        self.stats.active -= 1
        if not self.stats.active:
            self.idle.set()

    async def _bridge_to_target(
        self,
        target: StreamTarget,
        accept: Accept,
        request: AcceptRequest,
        clog: ConnectionLogger,
        wrappers: Sequence[StreamWrapper] = (),
    ) -> None:
        if isinstance(target, UdpTarget):
            await self._bridge_to_udp(target, accept, request, clog, wrappers)
            return
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await open_stream(target)
        except (OSError, TimeoutError) as exc:
            clog.warning("target_unreachable", extra={"target": str(target), "error": str(exc)})
            await self._reject(accept.address, Reject(502, "target unreachable"), clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            writer.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        try:
            try:
                stream = _wrap(ws, wrappers)
            except BaseException:
                writer.transport.abort()
                ws.abort()
                raise
            result = await bridge(stream, reader, writer)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            clog.info(
                "connection_closed",
                extra={
                    "bytes_up": result.bytes_up,
                    "bytes_down": result.bytes_down,
                    "code": result.close_code,
                },
            )
        finally:
            self._stream_ended()

    async def _bridge_to_udp(
        self,
        target: UdpTarget,
        accept: Accept,
        request: AcceptRequest,
        clog: ConnectionLogger,
        wrappers: Sequence[StreamWrapper],
    ) -> None:
        """One connected UDP socket per relayed stream; datagrams framed both ways."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                udp = await UdpConnection.open(target)
        except (OSError, TimeoutError) as exc:
            clog.warning("target_unreachable", extra={"target": str(target), "error": str(exc)})
            await self._reject(accept.address, Reject(502, "target unreachable"), clog)
            return
        try:
            ws = await self._rendezvous(accept, request, stream=True)
        except BaseException:
            udp.close()
            raise
        self._stream_started()
        clog.info("connection_accepted", extra={"target": str(target)})
        flow = DatagramBridge(udp.send, idle_timeout=self._udp_idle_timeout)
        udp.attach(flow.push)
        try:
            try:
                stream = _wrap(ws, wrappers)
            except BaseException:
                ws.abort()
                raise
            result = await flow.run(stream)
            self.stats.bytes_up += result.bytes_up
            self.stats.bytes_down += result.bytes_down
            self.stats.datagrams_dropped += result.dropped_up + result.dropped_down
            clog.info(
                "connection_closed",
                extra={
                    "datagrams_up": result.datagrams_up,
                    "datagrams_down": result.datagrams_down,
                    "dropped_up": result.dropped_up,
                    "dropped_down": result.dropped_down,
                    "udp_errors": udp.errors,
                    "outcome": result.outcome,
                    "code": result.close_code,
                },
            )
        finally:
            udp.close()
            self._stream_ended()

    async def _run_handler(
        self, handler: StreamHandler, accept: Accept, request: AcceptRequest
    ) -> None:
        ws = await self._rendezvous(accept, request, stream=False)
        self._stream_started()
        try:
            await handler(ws, request)
        finally:
            self._stream_ended()
            await ws.close()

    async def _reject(self, address: str, reject: Reject, clog: ConnectionLogger) -> None:
        self.stats.rejected += 1
        url = (
            f"{address}&sb-hc-statusCode={reject.status}"
            f"&sb-hc-statusDescription={quote(reject.description, safe='')}"
        )
        try:
            ws = await ws_connect(url, ssl=self._ssl, open_timeout=self._connect_timeout)
        except HandshakeError as exc:
            if exc.status != 410:  # 410 Gone is the relay's "rejection delivered" (HC §2.5)
                clog.warning("reject_failed", extra={"status": exc.status})
            else:
                clog.info("connection_rejected", extra={"status": reject.status})
            return
        ws.abort()
        clog.warning("reject_not_acknowledged")

    # -- HTTP mode ---------------------------------------------------------------------

    async def _dial_request(self, address: str) -> WsConnection:
        # HC §2.6: the address is the credential; no token on this dial.
        return await ws_connect(
            address,
            ssl=self._ssl,
            open_timeout=self._connect_timeout,
            max_size=self._max_message_size,
        )

    async def _receive_request(self, ws: WsConnection, announced: Request) -> Request:
        """The full request on a rendezvous socket of a rendezvous-only request (HC §3.2)."""
        async with asyncio.timeout(self._connect_timeout):
            text = await ws.recv()
        if not isinstance(text, str):
            raise InvalidMessageError("expected the request message on the rendezvous socket")
        message = decode(text)
        if not isinstance(message, Request) or not message.inline:
            raise InvalidMessageError("expected an inline-form request on the rendezvous socket")
        if message.id != announced.id:
            self._log.warning(
                "request_id_mismatch", extra={"announced": announced.id, "got": message.id}
            )
        return message

    async def _handle_request(
        self, control: WsConnection, request: Request, body: bytes | None
    ) -> None:
        """Serve one HTTP-mode request; the top of its task."""
        clog = ConnectionLogger(log, {"hc": self.hc, "request": request.id})
        self.stats.requests += 1
        exchange = _Exchange(request)
        self._exchanges.add(exchange)
        try:
            if request.inline:
                full = request
                source: bytes | AsyncIterator[bytes] | None = body
            else:
                self.stats.requests_rendezvous += 1
                rendezvous = exchange.rendezvous = await self._dial_request(request.address)
                full = await self._receive_request(rendezvous, request)
                source = _body_frames(rendezvous, exchange) if full.body else None
            escape = path_escape_reason((full.request_target or "/").partition("?")[0])
            if escape is not None:
                # The relay refuses these already; a relay that does not (compromised,
                # older) must still not walk a handler or the target out of its base path.
                clog.warning("request_target_refused", extra={"reason": escape})
                response: HttpResponse | None = error_response(400, "BadRequest", escape)
            else:
                http_request = build_request(self.hc, full, source)
                response = await self._call_http_handler(http_request, clog, exchange)
            if response is None:
                self.stats.request_failures += 1
                return
            await self._send_response(control, exchange, full, response, clog)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            self.stats.request_failures += 1
            clog.warning("request_failed", extra={"error": str(exc) or type(exc).__name__})
        except Exception:  # noqa: BLE001 - top of a request task: our bug, logged
            self.stats.request_failures += 1
            clog.exception("request_crashed")
        finally:
            self._exchanges.discard(exchange)
            exchange.finished = True
            if exchange.rendezvous is not None:
                await exchange.rendezvous.close()

    async def _answer_broken_request(self, control: WsConnection, request: Request) -> None:
        clog = ConnectionLogger(log, {"hc": self.hc, "request": request.id})
        response = error_response(400, "BadRequest", "request body message missing")
        exchange = _Exchange(request)
        try:
            await self._send_response(control, exchange, request, response, clog)
        except (OSError, TimeoutError, HybridRelayError) as exc:
            clog.warning("request_failed", extra={"error": str(exc) or type(exc).__name__})
        finally:
            exchange.finished = True
            if exchange.rendezvous is not None:
                await exchange.rendezvous.close()

    async def _call_http_handler(
        self, request: HttpRequest, clog: ConnectionLogger, exchange: _Exchange | None = None
    ) -> HttpResponse | None:
        """The handler's response, an error response, or None when it took too long or the
        request's body was lost (no one is left to answer)."""
        if self._http_handler is None:
            return error_response(501, "NotImplemented", "this listener serves no HTTP requests")
        if len(self._streams) > self._max_streams:
            return error_response(503, "ListenerAtCapacity", "listener at capacity")
        deadline = asyncio.timeout(self._request_timeout)
        try:
            async with deadline:
                # object: apps without type checking may return anything.
                response: object = await self._http_handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise
            clog.warning("http_handler_timeout", extra={"timeout_s": self._request_timeout})
            return None
        except Exception:  # noqa: BLE001 - the app's handler failed; the sender gets a 500
            if exchange is not None and exchange.body_lost is not None:
                # The sender or the relay went away mid-body and the handler stumbled on
                # it: a peer going away, not the app's bug.
                clog.info("request_body_lost", extra={"error": str(exchange.body_lost)})
                return None
            clog.exception("http_handler_crashed")
            return error_response(500, "InternalServerError", "the listener's handler failed")
        if not isinstance(response, HttpResponse):
            clog.error("http_handler_bad_result", extra={"type": type(response).__name__})
            return error_response(500, "InternalServerError", "the listener's handler failed")
        return response

    def _response_header(
        self, request: Request, response: HttpResponse, has_body: bool, clog: ConnectionLogger
    ) -> str | None:
        try:
            message = Response(
                request_id=request.id,
                status_code=response.status,
                status_description=response.reason,
                response_headers=response_header_map(response.headers),
                body=has_body,
            )
            check_response(message)  # what the relay would refuse with a 502
            return encode(message)
        except HybridRelayError as exc:  # a 1xx or 600+ status, headers over 64 KiB
            clog.error("http_response_invalid", extra={"error": str(exc)})
            return None

    async def _send_response(
        self,
        control: WsConnection,
        exchange: _Exchange,
        request: Request,
        response: HttpResponse,
        clog: ConnectionLogger,
    ) -> None:
        """Send ``response`` inline when small and allowed, else over rendezvous (HC §4).

        Inline needs a body of known size up to 64 KiB and a request that came inline
        (a rendezvous-only request is answered on its own socket). The exchange's
        rendezvous socket, once there is one, is closed by the request's task.
        """
        body = response.body
        try:
            if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
                await close_body(body)
                body = b""
            data: bytes | None = None
            source: bytes | AsyncIterable[bytes]
            if isinstance(body, bytes | bytearray | memoryview):
                source = data = bytes(body)
            else:
                source = body
            has_body = data is None or bool(data)
            header = self._response_header(request, response, has_body, clog)
            if header is None:
                await close_body(body)
                body = source = data = _INVALID_RESPONSE_BODY
                has_body = True
                header = encode(
                    Response(
                        request_id=request.id,
                        status_code=500,
                        response_headers={"Content-Type": "application/json"},
                        body=True,
                    )
                )
            if (
                exchange.rendezvous is None
                and data is not None
                and len(data) <= INLINE_BODY_LIMIT
                and await self._send_inline(control, exchange, header, data)
            ):
                self.stats.responses_inline += 1
                clog.debug("response_sent", extra={"status": response.status, "via": "control"})
                return
            ws = await self._answer_socket(exchange)
            await ws.send(header)
            if has_body:
                await ws.send_fragments(_fragments(source))
            await ws.close(1000)  # HC §4: single use
            self.stats.responses_rendezvous += 1
            clog.debug("response_sent", extra={"status": response.status, "via": "rendezvous"})
        finally:
            await close_body(body)

    async def _send_inline(
        self, control: WsConnection, exchange: _Exchange, header: str, data: bytes
    ) -> bool:
        """Header and body on the control channel, adjacent.

        Returns False, having sent nothing, when the channel is closed or a stopping
        listener opened a rendezvous socket for the exchange meanwhile.
        """
        async with self._control_lock:
            if exchange.rendezvous is not None:
                return False
            exchange.responding = True
            try:
                # One write for both: adjacent (HC §4) and one system call.
                await control.send_many((header, data) if data else (header,))
            except ConnectionClosedError:
                # Nothing went out: the relay may still take the answer over rendezvous.
                exchange.responding = False
                return False
        return True

    async def _answer_socket(self, exchange: _Exchange) -> WsConnection:
        """The exchange's rendezvous socket: the one it has, the one being dialled, or new."""
        if exchange.rendezvous is not None:
            return exchange.rendezvous
        predial = exchange.predial
        if predial is not None:
            await asyncio.wait({predial})  # not `await predial`: its cancellation is not ours
            if not predial.cancelled() and predial.exception() is None:
                exchange.rendezvous = predial.result()
                return exchange.rendezvous
        exchange.rendezvous = await self._dial_request(exchange.request.address)
        return exchange.rendezvous

    async def _secure_exchanges(self) -> None:
        """Before a deliberate close of the control channel: give every request still to
        be answered its rendezvous socket (the address stays valid, HC §3.2, §4)."""
        waiting = [
            exchange
            for exchange in self._exchanges
            if exchange.rendezvous is None and exchange.predial is None and not exchange.responding
        ]
        if not waiting:
            return
        self._log.info("securing_requests", extra={"count": len(waiting)})
        dials: dict[asyncio.Task[WsConnection], _Exchange] = {}
        for exchange in waiting:
            task = asyncio.create_task(self._dial_request(exchange.request.address))
            exchange.predial = task
            dials[task] = exchange
        try:
            await asyncio.wait(dials, timeout=self._connect_timeout)
        finally:
            for task in dials:
                task.cancel()
            await asyncio.wait(dials)
            for task, exchange in dials.items():
                await self._claim(task, exchange)

    async def _claim(self, task: asyncio.Task[WsConnection], exchange: _Exchange) -> None:
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            self._log.warning("request_rendezvous_failed", extra={"error": str(error)})
            return
        ws = task.result()
        if exchange.rendezvous is ws:
            return  # the request's task took it already
        if exchange.rendezvous is None and not exchange.finished and not exchange.responding:
            exchange.rendezvous = ws  # closed by the request's task
        else:
            await ws.close()


class RendezvousHosts:
    """Where a listener may dial the rendezvous addresses its relay hands out (HC §2.4, §2.6).

    The relay's ``public_url`` decides the address, and a listener dials it without a
    second thought in the SDKs; a compromised relay (or one that was configured wrong)
    would aim the listener at any host on its network. Only the hosts of the relay URLs
    the listener was given pass (``localhost``, ``127.0.0.1`` and ``::1`` count as one),
    plus the configured extra names (``*.example.com``: any name under example.com),
    compared without case; ports are not compared (relay nodes behind one name differ in
    port, see deploy/compose). A wss:// relay's addresses must be wss:// as well.
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, relays: Sequence[str], extra: Sequence[str] = ()) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for relay in relays:
            host = _host_of(relay)
            if host in _LOCALHOST:
                # "localhost" is the loopback address a relay's default public_url names
                # (ws://127.0.0.1:port); the rest of 127/8 is another host.
                exact.update(_LOCALHOST)
            elif host:
                exact.add(host)
        for item in extra:
            name = item.strip().lower().rstrip(".")
            if name.startswith("*."):
                suffixes.append(name[1:])  # ".example.com"
            elif name:
                exact.add(name.strip("[]"))
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    def refusal(self, address: str, relay: str) -> str | None:
        """Why ``address`` must not be dialled for the relay at ``relay``, or None."""
        try:
            parts = urlsplit(address)
            _ = parts.port
        except ValueError:
            return "not a URL"
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss"):
            return f"scheme {scheme[:10]!r} is not ws or wss"
        if scheme == "ws" and urlsplit(relay).scheme.lower() == "wss":
            return "ws:// address from a wss:// relay (a TLS downgrade)"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "no host"
        if host in self._exact or any(host.endswith(suffix) for suffix in self._suffixes):
            return None
        return f"host {host[:100]!r} is neither the relay's nor in rendezvous_hosts"


_LOCALHOST: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def _wrap(ws: WsConnection, wrappers: Sequence[StreamWrapper]) -> BridgeStream:
    stream: BridgeStream = ws
    for wrapper in wrappers:
        stream = wrapper(stream)
    return stream


def _name_of(hook: object) -> str:
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return f"{getattr(hook, '__module__', '?')}.{name}"


@dataclass(eq=False)
class _Exchange:
    """One HTTP-mode request in flight and its rendezvous socket (owned by its task)."""

    request: Request
    rendezvous: WsConnection | None = None
    predial: asyncio.Task[WsConnection] | None = None  # dialled by a stopping listener
    responding: bool = False  # the answer is going out on the control channel
    finished: bool = False
    body_lost: HybridRelayError | None = None  # why the body stream ended early, if it did


async def _body_frames(ws: WsConnection, exchange: _Exchange) -> AsyncIterator[bytes]:
    """The body message on a rendezvous socket, as it arrives (HC §4): streamed in pieces,
    never assembled, so a body (or one frame of it) of any size holds no more memory.

    Why the body ended early is kept on the exchange: the handler's error that follows
    is then the peer's doing, not the app's.
    """
    try:
        async for fragment in ws.recv_stream():
            if isinstance(fragment, str):
                raise InvalidMessageError("a request body must be a binary message")
            if fragment:
                yield fragment
    except HybridRelayError as exc:
        exchange.body_lost = exc
        raise


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), _FRAGMENT):
        yield bytes(view[start : start + _FRAGMENT])


async def _fragments(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """One body message's fragments; at least one, since ``body: true`` promises a message."""
    if isinstance(body, bytes):
        for chunk in _chunks(body):
            yield chunk
        return
    sent = False
    async for chunk in body:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"response body chunks must be bytes, not {type(chunk).__name__}")
        if chunk:
            sent = True
            yield bytes(chunk)
    if not sent:
        yield b""
