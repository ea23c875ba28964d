"""Listener: keeps one control channel open and serves every ``accept`` and ``request`` on it.

This module owns the control channel (HC §2.2, §3): dialling it, failing over between
relay nodes, renewing the token, reading its messages and handing each one to its own
task. Accepted connections are served by :class:`~hybridrelay.listener.accepts.AcceptServer`
(bridged to a target or handed to a handler, after the accept hooks), HTTP-mode requests
by :class:`~hybridrelay.listener.exchange.HttpExchanges`; rendezvous addresses are
checked by :class:`~hybridrelay.listener.rendezvous.RendezvousHosts` before anything
dials them. The control channel reconnects with full-jitter backoff and never gives up
on its own, except on 404 (the hybrid connection does not exist), which retrying cannot
fix. Tokens are renewed before they expire. ``stop`` drains: no new accepts, open
streams and requests get ``drain_timeout`` seconds to finish.

What the relay's messages mean, what to send back and what to do with a bad message
is decided by :mod:`~hybridrelay.listener.control_protocol` (sans-I/O); this module
is the asyncio glue around it. Every send on the control channel (``renewToken``,
inline ``response`` header and body, our close) holds one lock, so a response header
and its body message are always adjacent (HC §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence

from hybridrelay.backoff import Backoff, ReconnectBackoff
from hybridrelay.errors import (
    ConnectionClosedError,
    EntityNotFoundError,
    HandshakeError,
    HybridRelayError,
    PayloadTooBigError,
)
from hybridrelay.listener.accepts import AcceptServer, StreamHandler
from hybridrelay.listener.control_protocol import (
    DEFAULT_MAX_BAD_MESSAGES,
    AcceptReceived,
    BadMessage,
    ListenerControl,
    RequestBodyMissing,
    RequestReceived,
    renew_token_message,
    renewal_delay,
)
from hybridrelay.listener.exchange import HttpExchanges
from hybridrelay.listener.hooks import AcceptHook
from hybridrelay.listener.http_target import HttpHandler, HttpTarget
from hybridrelay.listener.rendezvous import Dialer, RendezvousHosts
from hybridrelay.listener.stats import ListenerStats
from hybridrelay.listener.targets import StreamTarget, Target, TcpTarget, parse_target
from hybridrelay.logs import LISTENER, ConnectionLogger, redact_url
from hybridrelay.outage import OutageReport
from hybridrelay.probe import relay_url_problem
from hybridrelay.protocol.addresses import listen_uri
from hybridrelay.protocol.codes import CONTROL_MESSAGE_LIMIT, CloseCode
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
        max_bad_control_messages: bad control messages in a row (malformed, misplaced,
            of the wrong direction) after which the control channel is closed 1008 and
            dialled anew; each is dropped and logged (see
            :mod:`~hybridrelay.listener.control_protocol`).
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
        max_bad_control_messages: int = DEFAULT_MAX_BAD_MESSAGES,
    ) -> None:
        if target is not None and handler is not None:
            raise ValueError("give at most one of target= and handler=")
        if target is None and handler is None and http_handler is None:
            raise ValueError("give target=, handler= or http_handler=")
        if max_bad_control_messages < 1:
            raise ValueError("max_bad_control_messages must be at least 1")
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
        self._http_handler = http_handler
        self._udp_idle_timeout = udp_idle_timeout
        # One lock for every send on the control channel (HC §4 adjacency).
        self._control_lock = asyncio.Lock()
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
        self._streams: set[asyncio.Task[None]] = set()  # accepts and requests in flight
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
        self._max_bad_control_messages = max_bad_control_messages
        self.listen_url = self._listen_url()
        self._log = ConnectionLogger(log, {"hc": self.hc, "listener": self.listener_id})
        dial = Dialer(ssl_context, connect_timeout, ping_interval, max_message_size)
        self._accepts = AcceptServer(
            self.hc,
            target=target,
            handler=handler,
            hooks=hooks,
            select_subprotocol=select_subprotocol
            or (lambda offered: offered[0] if offered else None),
            dial=dial,
            stats=self.stats,
            idle=self.idle,
            at_capacity=self._at_capacity,
            connect_timeout=connect_timeout,
            udp_idle_timeout=udp_idle_timeout,
        )
        self._http = HttpExchanges(
            self.hc,
            handler=http_handler,
            dial=dial,
            stats=self.stats,
            control_lock=self._control_lock,
            at_capacity=self._at_capacity,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            logger=self._log,
        )

    # -- lifecycle -------------------------------------------------------------------

    def set_token_provider(self, provider: TokenProvider) -> None:
        """Switch to ``provider`` (key rotation) without dropping the control channel or
        any stream: a renewToken signed with the new key goes out at once, so the old
        key can be revoked on the relay right after the reload."""
        self._tokens = provider
        self._renew_now.set()

    def _listen_url(self) -> str:
        return listen_uri(self.relay, self.hc, self.listener_id)

    def _at_capacity(self) -> bool:
        return len(self._streams) > self._max_streams

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
            await self._http.secure()
            async with self._control_lock:  # never between a response header and its body
                # Half-close: accepts the relay sent before it saw our close still arrive
                # and are served, instead of leaving their senders to time out.
                await ws.close_write(CloseCode.NORMAL, "listener stopping")
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
            moved = exc.code in (CloseCode.GOING_AWAY, CloseCode.ABNORMAL)
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
            # On schedule, or at once when the key changed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renewal_delay(expiry, time.time())):
                    await self._renew_now.wait()
            self._renew_now.clear()
            token = self._tokens.token_for(audience_for(self.listen_url), time.time())
            try:
                async with self._control_lock:
                    await ws.send(renew_token_message(token))
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
        """Read the control channel until it closes (raises ConnectionClosedError) or the
        bad-message policy of :mod:`~hybridrelay.listener.control_protocol` gives up on it.

        Nothing slow happens here: accepts and requests each get their own task.
        """
        control = ListenerControl(max_bad_messages=self._max_bad_control_messages)
        while True:
            for event in control.receive(await ws.recv()):
                if isinstance(event, RequestReceived):
                    request = event.request
                    if self._address_allowed(request.address, request.id):
                        self._spawn(self._http.handle(ws, request, event.body))
                elif isinstance(event, AcceptReceived):
                    accept = event.accept
                    if self._address_allowed(accept.address, accept.id):
                        self._spawn(self._accepts.handle(accept))
                elif isinstance(event, RequestBodyMissing):
                    request = event.request
                    if self._address_allowed(request.address, request.id):
                        self._spawn(self._http.answer_broken(ws, request))
                elif isinstance(event, BadMessage):
                    self._log.log(
                        logging.WARNING if event.first else logging.DEBUG,
                        "control_message_dropped",
                        extra={"kind": event.kind, "reason": event.reason},
                    )
                else:  # CloseChannel: the policy gave up on this channel
                    self._log.warning(
                        "control_channel_failing",
                        extra={
                            "code": int(event.code),
                            "reason": event.reason,
                            "dropped": dict(control.bad_counts),
                        },
                    )
                    async with self._control_lock:  # never between a header and its body
                        await ws.close_write(event.code, event.reason)
                    await ws.close(event.code, event.reason)  # waits for the relay's close
                    return

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

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:  # accepts, requests
        # create_task(), not ensure_future(): no type checks, no event loop lookup.
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
