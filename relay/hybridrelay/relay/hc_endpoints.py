"""aiohttp handlers for ``/$hc/...``: listen, connect, accept and reject (HC §2.2-2.5).

Each handler parses the address, authorizes, and hands off: listen to a
:class:`ControlChannel`, connect and accept to a :class:`Splice`. Errors are
raised as HybridRelayError and answered by ``middleware.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Final

from aiohttp import web
from aiohttp.hdrs import EXPECT
from aiohttp.http import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDictProxy

from hybridrelay.errors import (
    AuthError,
    BadGatewayError,
    ConflictError,
    EntityNotFoundError,
    NoListenerError,
    ProtocolError,
    RejectedError,
    RendezvousError,
    UnavailableError,
    UpstreamTimeoutError,
)
from hybridrelay.logs import RELAY, ConnectionLogger
from hybridrelay.probe import LISTENERS_HEADER, PROBE_HEADER
from hybridrelay.protocol.addresses import HcAddress, build_rendezvous_address, parse_hc_target
from hybridrelay.protocol.codes import CloseCode
from hybridrelay.protocol.messages import Accept
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay import device_auth
from hybridrelay.relay.admission import UpgradeHook
from hybridrelay.relay.auth import TOKENS, authorize, check_token
from hybridrelay.relay.balancer import parse_listener_filter
from hybridrelay.relay.ca_trust import CA_TRUST
from hybridrelay.relay.cluster.base import ClusterState
from hybridrelay.relay.config import validate_entity_name
from hybridrelay.relay.control import ControlChannel
from hybridrelay.relay.devices import DEVICES
from hybridrelay.relay.dispatch import deliver_to_listener
from hybridrelay.relay.forwarded import add_forwarding_headers
from hybridrelay.relay.handshake import (
    ClientHandshake,
    accept_headers,
    accept_response,
    parse_client_handshake,
)
from hybridrelay.relay.http_mode import handle_request_dial
from hybridrelay.relay.lifecycle import LIFECYCLE
from hybridrelay.relay.listeners import LISTENERS
from hybridrelay.relay.metrics import HcStats, RelayMetrics
from hybridrelay.relay.mgmt.events import EVENTS
from hybridrelay.relay.middleware import ACTION_KEY
from hybridrelay.relay.peer import remote_endpoint
from hybridrelay.relay.pending import (
    LISTENER_GONE,
    PENDING,
    SPLICED,
    ListenerHandle,
    PendingConnect,
    PendingWork,
)
from hybridrelay.relay.sender_auth import authorize_sender
from hybridrelay.relay.splice import (
    Splice,
    Upgraded,
    forget,
    forget_connection,
    take_over,
    take_over_connection,
)
from hybridrelay.relay.splices import SPLICES, SpliceRegistry
from hybridrelay.relay.state import HC_NAME, STATE, RelayState
from hybridrelay.relay.store.base import HybridConnection
from hybridrelay.relay.store.models import ensure_enabled
from hybridrelay.relay.store.records import encode_continuation, hc_key

__all__ = ["accept_upgrade", "handle_hc", "is_hc_path", "shutdown_connections"]

log = logging.getLogger(RELAY)

_AUTH_HEADER = "ServiceBusAuthorization"
_REDISPATCHES = 2  # accepts re-sent to another listener when the chosen one vanished
_LISTENER_GONE_GRACE_S = 2.0
# A PendingConnect outcome: the sender's connection closed before its 101.
_SENDER_GONE: Final = object()
# A PendingConnect outcome: rendezvous_timeout passed before the listener dialled.
_TIMED_OUT: Final = object()


def _time_out(future: asyncio.Future[object]) -> None:
    if not future.done():
        future.set_result(_TIMED_OUT)


class _Rejected:
    __slots__ = ("description", "status")

    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description


def _split_target(request: web.Request) -> tuple[str, str]:
    raw = request.raw_path
    path, _, query = raw.partition("?")
    return path, query


def _connect_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    # HC §2.10: every sender header reaches the listener, repeated ones joined;
    # the token does not.
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() == "servicebusauthorization":
            continue
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def handle_hc(request: web.Request) -> web.StreamResponse:
    """Route a ``/$hc/`` request by its ``sb-hc-action``."""
    app = request.app
    state = app[STATE]
    path, query = _split_target(request)
    addr = parse_hc_target(path, query)
    request[ACTION_KEY] = addr.action
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ProtocolError("This endpoint is only for web-socket requests.")
    if addr.action == "listen" or addr.action == "connect":
        # A draining node takes no new listener or sender; accepts and request dials
        # (work it already took) go on.
        if app[LIFECYCLE].draining:
            raise UnavailableError("the relay is draining; try another node")
        if addr.action == "listen":
            return await _listen(request, state, addr)
        return await _connect(request, state, addr)
    if addr.action == "accept":
        return await _accept(request, state, addr)
    return await handle_request_dial(request, state, addr)


def _is_probe(request: web.Request) -> bool:
    """A connect or listen handshake with the probe header and (so that no other server
    upgrades it) no Sec-WebSocket-Key: answered 204 once the entity and the token pass,
    before anything is created, dispatched or attached (hybridrelay.probe). Its refusals
    are those of the real handshake, in the same order: it tells nothing a handshake
    would not."""
    return PROBE_HEADER in request.headers and "Sec-WebSocket-Key" not in request.headers


async def _probe_answer(state: RelayState, hc_name: str, action: str) -> web.Response:
    listeners = await state.cluster.listener_count(hc_name)
    log.debug("probe_answered", extra={"hc": hc_name, "action": action})
    return web.Response(status=204, headers={LISTENERS_HEADER: str(listeners)})


def _token(request: web.Request, addr: HcAddress) -> str | None:
    return request.headers.get(_AUTH_HEADER) or addr.token


async def _resolve(state: RelayState, addr: HcAddress) -> tuple[HybridConnection, str]:
    found = await state.store.resolve(addr.path)
    if found is None:
        raise EntityNotFoundError("Endpoint does not exist.")
    ensure_enabled(found[0])
    return found


async def _listener_entity(state: RelayState, addr: HcAddress) -> tuple[HybridConnection, bool]:
    """The entity a listener asks for, and whether it is still to be auto-created.

    A name that does not exist yet is returned unsaved (with no rules of its own), so
    the caller authorizes against it first: only a namespace rule, a JWT or a device
    grant that covers the name can make ``auto_create`` create it.
    """
    found = await state.store.resolve(addr.path)
    if found is not None:
        hc, suffix = found
        if suffix:  # listeners take whole entities (HC §2.2); never create inside one
            raise EntityNotFoundError("Endpoint does not exist.")
        ensure_enabled(hc)
        return hc, False
    name = addr.path.strip("/")
    if not state.config.relay.auto_create or validate_entity_name(name) is not None:
        raise EntityNotFoundError("Endpoint does not exist.")
    relay = state.config.relay
    return HybridConnection(name=name, max_listeners=relay.max_listeners_per_hc), True


async def _auto_create(state: RelayState, candidate: HybridConnection) -> HybridConnection:
    """Create an authorized listener's entity, unless it would shadow another (HC §2.1).

    Entities match by longest prefix, so ``a/b`` created next to ``a`` takes over the
    requests and senders that ``a``'s listeners serve under ``/b``, and ``a`` created
    above ``a/b`` catches every other ``a/...`` path: neither is created on a listen.
    """
    name = candidate.name
    above = await state.store.resolve(name)
    if above is not None and above[1]:
        raise ConflictError(f"auto_create never creates an entity inside {above[0].name!r}")
    under = await state.store.list_hybrid_connections(
        limit=1, continuation=encode_continuation(hc_key(name) + "/")
    )
    if under.items and hc_key(under.items[0].name).startswith(hc_key(name) + "/"):
        raise ConflictError(f"auto_create never creates an entity above {under.items[0].name!r}")
    created = await state.store.create(candidate)  # the existing one when it won a race
    ensure_enabled(created)
    return created


async def _listen(request: web.Request, state: RelayState, addr: HcAddress) -> web.StreamResponse:
    # The one handshake parser of every leg (400 for what RFC 6455 §4.2.1 refuses, such
    # as non-ASCII bytes in Sec-WebSocket-Version or -Key), before WebSocketResponse.prepare
    # could meet them and fail with a 500.
    probe = _is_probe(request)
    handshake = None if probe else parse_client_handshake(request.method, request.headers)
    hc, unsaved = await _listener_entity(state, addr)
    if not unsaved:  # a name that is not an entity yet never becomes a metric label
        request[HC_NAME] = hc.name
    token = _token(request, addr)
    creds = await device_auth.credentials(request, state.store, token, request.app.get(CA_TRUST))
    # Authenticate before anything is written: an anonymous or badly signed listen must
    # not leave entities behind in the store (auto_create).
    principal = authorize(
        token,
        hc=hc,
        namespace_rules=await state.store.namespace_rules(),
        right=Rights.LISTEN,
        now=state.now(),
        host=state.token_hosts,
        cache=None if unsaved else request.app[TOKENS],
        jwt_issuers=state.config.jwt_issuers,
        device=creds.device,
        certificate=creds.certificate,
        max_lifetime=state.config.relay.max_token_lifetime,
    )
    if handshake is None:  # a probe: nothing created, auto_create would at the real listen
        return await _probe_answer(state, hc.name, "listen")
    if unsaved:
        hc = await _auto_create(state, hc)
    listener_id = addr.tracking_id or str(uuid.uuid4())
    clog = ConnectionLogger(log, {"hc": hc.name, "listener": listener_id})
    devices = request.app[DEVICES]
    listeners = request.app[LISTENERS]
    events = request.app[EVENTS]
    pending_work = request.app[PENDING]

    relay = state.config.relay

    async def renew(token: str) -> float:
        # Read rules afresh: a key regenerated or a rule deleted since this listener
        # connected must refuse its next renewal too, not only new connects.
        current = await state.store.get(hc.name)
        if current is None or current.status == "disabled":
            raise AuthError("the hybrid connection was deleted or disabled")
        try:
            fresh = check_token(
                token,
                hc=current,
                namespace_rules=await state.store.namespace_rules(),
                right=Rights.LISTEN,
                now=state.now(),
                host=state.token_hosts,
                jwt_issuers=state.config.jwt_issuers,
                device=devices.known_device(token),
                max_lifetime=state.config.relay.max_token_lifetime,
            )
        except AuthError as exc:
            if exc.limit is not None:  # not an HTTP refusal: the middleware never sees it
                state.metrics.limit_hit(exc.limit)
            raise
        if fresh.expires_at is None:  # pragma: no cover - SAS tokens always expire
            raise AuthError("token without expiry")
        return fresh.expires_at

    channel = ControlChannel(
        hc_name=hc.name,
        listener_id=listener_id,
        expires_at=principal.expires_at,
        renew=renew,
        ping_interval=state.config.relay.ping_interval,
        token_grace=state.config.relay.token_grace,
        log=clog,
        requests=pending_work.requests,
        now=state.now,
        send_timeout=relay.control_send_timeout,
        close_timeout=relay.close_timeout,
        max_message_size=relay.max_control_message_size,
        max_queued_control=relay.max_queued_control_frames,
        limit_hit=state.metrics.limit_hit,
    )
    # The 101 is written by aiohttp (its on_response_prepare hooks run), then the socket
    # is the channel's: a sans-I/O Connection behind thin glue, as a splice leg's.
    reply = web.StreamResponse(status=101, headers=accept_headers(handshake, None))
    # Reserve the slot before answering 101, so the 26th listener gets a clean 403.
    await state.cluster.attach(
        channel, max_listeners=hc.max_listeners, takeover=state.config.relay.listener_takeover
    )
    try:
        await reply.prepare(request)
        try:
            channel.attach(take_over(request))
        except ConnectionError:
            return reply
        listeners.add(channel)
        listener_stats = state.metrics.listener_connected(hc.name)
        clog.info("listener_connected", extra={"rule": principal.rule})
        events.publish_listener(True, hc.name, listener_id, creds.device)
        try:
            async with devices.tracked(
                principal, channel, hc_name=hc.name, right=Rights.LISTEN, device=creds.device
            ):
                code = await channel.run()
        finally:
            listeners.discard(channel)
            state.metrics.listener_disconnected(listener_stats)
            events.publish_listener(False, hc.name, listener_id, creds.device)
            _fail_requests_of(pending_work, channel)
            _release_senders_of(pending_work, channel)
        clog.info("listener_disconnected", extra={"code": code})
    finally:
        await state.cluster.detach(channel)
    return reply


async def _connect(request: web.Request, state: RelayState, addr: HcAddress) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    hc, suffix = await _resolve(state, addr)
    request[HC_NAME] = hc.name
    if hc.http is True:
        # Its listeners are HTTP-only; hyco-https crashes on an accept (HC Part 2 §5.2).
        raise EntityNotFoundError("this hybrid connection serves HTTP requests only")
    token = _token(request, addr)
    principal, device = await authorize_sender(state, request, token, hc=hc, path=hc.name + suffix)
    if _is_probe(request):
        return await _probe_answer(state, hc.name, "connect")
    handshake = parse_client_handshake(request.method, request.headers)
    allowed = parse_listener_filter(request.headers.get("Microsoft-Relay-AllowedListeners"))
    disallowed = parse_listener_filter(request.headers.get("Microsoft-Relay-DisallowedListeners"))
    if not await state.cluster.listener_count(hc.name):
        raise NoListenerError("no listener is connected to this hybrid connection")

    relay = state.config.relay
    splice = Splice(state.splice_settings, hc_name=hc.name)
    sender_endpoint = remote_endpoint(request)  # read now: the splice takes the socket
    if sender_endpoint is not None:
        splice.sender_address = f"{sender_endpoint.address}:{sender_endpoint.port}"
    # The same for every (re)dispatch of this sender's accept: built once.
    connect_headers = add_forwarding_headers(_connect_headers(request.headers), request)
    pending_work = request.app[PENDING]
    tracking_id = addr.tracking_id or pending_work.tracking_ids.new()
    deadline = started + relay.rendezvous_timeout
    # One slot of this entity's share while the sender waits for its rendezvous.
    with pending_work.share.hold(hc.name):
        for attempt in range(_REDISPATCHES + 1):
            pending = PendingConnect(
                hc_name=hc.name,
                future=loop.create_future(),
                splice=splice,
                sender=request,
                handshake=handshake,
                started=started,
                suffix=suffix,
            )
            key = state.cluster.add_pending(pending)
            accept = Accept(
                address=build_rendezvous_address(
                    public_url=state.rendezvous_url,
                    entity=hc.name,
                    suffix=suffix,
                    app_query=addr.app_query,
                    action="accept",
                    tracking_id=tracking_id,
                    rendezvous_key=key,
                ),
                id=tracking_id,
                connect_headers=connect_headers,
                remote_endpoint=sender_endpoint,
            )
            try:
                await deliver_to_listener(
                    state.cluster,
                    hc.name,
                    accept,
                    allowed=allowed,
                    disallowed=disallowed,
                    on_chosen=pending.chosen,
                )
                del accept  # not kept alive by a sender that waits
                pending_work.waiting.add(pending)
                # A timer that settles the future, not asyncio.timeout_at: no Timeout
                # object, task cancellation and uncancel per connect (issue 16).
                timer = loop.call_at(deadline, _time_out, pending.future)
                try:
                    outcome = await pending.future
                finally:
                    timer.cancel()
                if outcome is _TIMED_OUT:
                    raise UpstreamTimeoutError(
                        "the listener did not accept in time", limit="rendezvous_timeout"
                    )
            finally:
                pending_work.waiting.discard(pending)
                state.cluster.discard_pending(key)
                if not pending.future.done():
                    pending.future.cancel()
            if outcome is not LISTENER_GONE:
                break
            log.info(
                "accept_redispatched", extra={"hc": hc.name, "id": tracking_id, "try": attempt + 1}
            )
        else:
            raise NoListenerError("the listeners went away before accepting")

    if isinstance(outcome, _Rejected):
        raise RejectedError(outcome.status, outcome.description)
    if outcome is _SENDER_GONE:
        log.info("sender_gone_before_splice", extra={"hc": hc.name, "id": tracking_id})
    else:
        # A device's stream keeps it "connected" while it lasts and is cut when the device
        # is disabled (DeviceRegistry.tracked): the sender's device, and the listener's, whose
        # accept dial carried only the rendezvous key (the stream is its channel's).
        devices = request.app[DEVICES]
        owner = devices.listener_owner(hc.name, pending.listener_id)
        if principal.device_id is None and owner is None:
            return Upgraded()  # the usual case: no device to track, no exit stack to build
        async with contextlib.AsyncExitStack() as held:
            if principal.device_id is not None:
                await held.enter_async_context(
                    devices.tracked(
                        principal, splice, hc_name=hc.name, right=Rights.SEND, device=device
                    )
                )
            if owner is not None:
                await held.enter_async_context(
                    devices.tracked(
                        owner,
                        splice,
                        hc_name=hc.name,
                        right=Rights.LISTEN,
                        device=owner.device,
                    )
                )
            await splice.wait()
    # SPLICED: _accept answered the sender's 101 and detached its connection from
    # aiohttp; this handler ends now, the splice lives on in app[SPLICES].
    return Upgraded()


async def _accept(request: web.Request, state: RelayState, addr: HcAddress) -> web.StreamResponse:
    waiting = _waiting_sender(state, addr)
    if waiting is None:
        raise RendezvousError("the rendezvous address is unknown, used or expired")
    key, pending = waiting
    if not pending.dialled_at(addr.path):
        log.warning("rendezvous_path_mismatch", extra={"hc": pending.hc_name, "action": "accept"})
        raise RendezvousError("the rendezvous address is unknown, used or expired")
    state.cluster.claim_pending(key)
    if addr.status_code is not None:
        pending.future.set_result(_Rejected(addr.status_code, addr.status_description or ""))
        return web.Response(status=410, reason="Gone", text="rejection delivered to the sender")
    try:
        handshake = parse_client_handshake(request.method, request.headers)
    except ProtocolError:
        pending.future.set_exception(
            BadGatewayError("the listener's rendezvous handshake was invalid")
        )
        raise
    _splice_legs(state, request.app[SPLICES], pending, handshake, request.protocol)
    return Upgraded()


def _waiting_sender(state: RelayState, addr: HcAddress) -> tuple[str, PendingConnect] | None:
    """The sender waiting at the dial's rendezvous key, if any; nothing is taken.

    Look before taking: a dial that is refused leaves the rendezvous to the listener
    that has the right address (nothing awaits between the look and the claim).
    """
    key = addr.rendezvous_key
    pending = state.cluster.find_pending(key) if key else None
    if key is None or not isinstance(pending, PendingConnect) or pending.future.done():
        return None
    return key, pending


def _splice_legs(
    state: RelayState,
    splices: SpliceRegistry,
    pending: PendingConnect,
    handshake: ClientHandshake,
    dial: RequestHandler,
) -> None:
    """Answer both 101s of a claimed rendezvous and start its splice.

    ``dial`` is the protocol of the listener's accept connection, served as a request
    (:func:`_accept`) or taken from its head (:func:`accept_upgrade`).
    """
    # The listener names the one sub-protocol it picked from connectHeaders (HC §5).
    chosen = handshake.protocols[0] if handshake.protocols else None
    splice = pending.splice
    try:
        listener = take_over_connection(dial)
    except ConnectionError as exc:
        pending.future.set_exception(BadGatewayError("the listener vanished during its handshake"))
        log.info("listener_gone_during_rendezvous", extra={"error": type(exc).__name__})
        return
    try:
        sender: tuple[asyncio.Transport, asyncio.BaseProtocol, bytes] | None = take_over(
            pending.sender
        )
    except ConnectionError:
        sender = None
    # Both 101s leave first, the listener's before the sender's (a sender that has its
    # 101 may rely on the listener having its own); the bookkeeping follows. Nothing
    # either peer sends can be read before the splice has both legs: that needs the
    # loop, and this runs to the end without giving it back. No task switch to the
    # sender's handler either: it only learns the outcome.
    listener[0].write(accept_response(handshake, chosen))
    forget_connection(dial)
    # aiohttp's protocol is out of the picture: a leg holds only its transport.
    splice.listener.attach(listener[0], paused=True)
    if sender is None:
        splice.abandon(CloseCode.GOING_AWAY, "sender went away")
        pending.future.set_result(_SENDER_GONE)
        return
    sender[0].write(accept_response(pending.handshake, chosen))
    forget(pending.sender)
    _stream_started(state, splices, pending, splice)
    splice.join(sender[0], sender[2], listener[2])
    pending.future.set_result(SPLICED)


def accept_upgrade(app: web.Application) -> UpgradeHook:
    """The front door's hook for rendezvous dials: complete one from its parsed head.

    A listener's accept dial (one of the two connections of every relayed connect) needs
    no awaiting: the waiting sender is looked up, claimed and spliced in one step. Served
    as a request it would still pay aiohttp's handler tasks, request object, router and
    middleware chain (issue 16). So the front door offers the first upgrade head of each
    connection here, before any of that exists.

    Only a dial that would succeed is taken, after exactly the checks :func:`_accept`
    makes, none of which leaves a trace; anything else (no or a used key, another path,
    a rejection, a bad handshake, an ``Expect`` header, which aiohttp answers before any
    handler) is left to the request path, which refuses, counts and logs it as it always
    did. A successful dial has nothing of the request path to miss: no middleware acts
    on one (the first request of a connection is not charged again), and its 101 is
    written on the transport either way.
    """
    state = app[STATE]
    splices = app[SPLICES]

    def hook(protocol: RequestHandler, head: RawRequestMessage) -> bool:
        if head.method != "GET" or not is_hc_path(head.path):
            return False
        headers = head.headers
        if EXPECT in headers:
            return False
        path, _, query = head.path.partition("?")
        try:
            addr = parse_hc_target(path, query)
        except Exception:  # noqa: BLE001 - the request path raises it again and answers it
            return False
        if addr.action != "accept" or addr.status_code is not None:
            return False
        if headers.get("Upgrade", "").lower() != "websocket":
            return False
        waiting = _waiting_sender(state, addr)
        if waiting is None or not waiting[1].dialled_at(addr.path):
            return False
        key, pending = waiting
        try:
            handshake = parse_client_handshake(head.method, headers)
        except Exception:  # noqa: BLE001 - as above
            return False
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return False
        # Committed: from here on exactly what _accept does after its checks.
        state.cluster.claim_pending(key)
        _splice_legs(state, splices, pending, handshake, protocol)
        return True

    return hook


def _stream_started(
    state: RelayState, splices: SpliceRegistry, pending: PendingConnect, splice: Splice
) -> None:
    """Count a relayed connection as open until its splice finishes."""
    handle = pending.handle
    metrics = state.metrics
    metrics.rendezvous_seconds.observe(asyncio.get_running_loop().time() - pending.started)
    stats = metrics.stream_started(pending.hc_name)
    splice.started(pending.listener_id, state.now())
    splices.add(splice)
    if handle is not None:
        state.cluster.stream_started(handle)
    splice.on_finish = _StreamEnd(splice, splices, state.cluster, handle, metrics, stats)


class _StreamEnd:
    """A splice's on_finish: the relayed connection is no longer counted as open.

    An object rather than a closure: a relay holds one per open relayed connection, and
    a closure over these six costs six cells, a tuple and a function (480 bytes).
    """

    __slots__ = ("cluster", "handle", "metrics", "splice", "splices", "stats")

    def __init__(
        self,
        splice: Splice,
        splices: SpliceRegistry,
        cluster: ClusterState,
        handle: ListenerHandle | None,
        metrics: RelayMetrics,
        stats: HcStats,
    ) -> None:
        self.splice = splice
        self.splices = splices
        self.cluster = cluster
        self.handle = handle
        self.metrics = metrics
        self.stats = stats

    def __call__(self, up: int, down: int) -> None:
        self.splices.discard(self.splice)
        if self.handle is not None:
            self.cluster.stream_ended(self.handle)
        self.metrics.stream_finished(self.stats, up, down)


def _release_senders_of(pending_work: PendingWork, channel: ControlChannel) -> None:
    """Senders whose accept went to this vanished channel are re-dispatched after a grace.

    A listener that stops gracefully still dials the accepts it has (within the grace);
    one that crashed never will, and its senders should not wait out the 30 s.
    """
    loop = asyncio.get_running_loop()
    for pending in list(pending_work.waiting):
        mine = pending.hc_name == channel.hc_name and pending.listener_id == channel.listener_id
        if mine and not pending.future.done():
            loop.call_later(_LISTENER_GONE_GRACE_S, pending.listener_gone)


def _fail_requests_of(pending_work: PendingWork, channel: ControlChannel) -> None:
    """HTTP requests this listener still owed an answer fail fast (502), not at 60 s."""
    error = BadGatewayError("the listener disconnected")
    for pending in list(pending_work.requests.values()):
        same = pending.listener_id == channel.listener_id and pending.hc_name == channel.hc_name
        if same and not pending.header.done() and not pending.sockets:
            pending.fail(error)


def is_hc_path(path: str) -> bool:
    lowered = path.lower()
    return lowered.startswith(("/$hc/", "/%24hc/"))


async def shutdown_connections(
    app: web.Application,
    code: int,
    reason: str,
    *,
    include_streams: bool = True,
    close_timeout: float | None = None,
) -> None:
    """Close every control channel (and relayed connection) of this node.

    ``close_timeout`` bounds how long a relayed peer may take to answer the close
    before its connection is cut (default: the configured close_timeout).
    """
    if include_streams:
        for splice in app[SPLICES]:
            splice.shutdown(code, reason, timeout=close_timeout)
    closers = [channel.close(code, reason) for channel in app[LISTENERS]]
    if closers:
        await asyncio.gather(*closers, return_exceptions=True)
