"""Devices as principals: device SAS tokens, X.509 client certificates, live connections (issue 5).

A device of the identity registry (``store.models.Device``) can listen on and send
to the hybrid connections its ``grants`` name, in one of two ways:

- **Device SAS** (IoT Hub style): ``SharedAccessSignature sr={host}/devices/{deviceId}
  &sig=...&se=...`` with ``skn`` absent or empty, signed with the device's primary or
  secondary symmetric key. The signature is HMAC-SHA256 over ``raw sr + "\\n" + se``
  like every SAS token; the key is taken either base64-decoded (what IoT Hub and its
  device SDKs do) or as its text (what the relay's rule tokens do), so tokens from
  both kinds of tooling work. ``sr`` may carry any scheme or none; its host is checked
  (case-insensitively, port ignored) only when ``check_token_host`` is on, against the
  relay's public names (``RelayState.token_hosts``). A device id
  the SDK percent-encoded twice (the Node SDK does) is found too.
- **X.509 client certificates** (with TLS and ``client_cert = "optional"|"required"``):
  the certificate's subject CN is the deviceId. A ``selfSigned`` device must present a
  certificate whose SHA-1 or SHA-256 thumbprint is its registered primary or
  secondary one (exact match, nothing else); a ``certificateAuthority`` device one
  whose verified chain ends at a CA certificate in ``client_ca_file`` that is no
  device's own, or at a CA certificate registered and verified through the management
  API (``ca_trust.anchored``: a thumbprint device's certificate, though a trust anchor
  to the handshake, never vouches for another device; a runtime CA deleted since
  vouches for nobody; a self-issued certificate never counts as CA-signed). Expired
  and untrusted certificates never finish the handshake. A token, when the request
  carries one, takes precedence.

Statuses (HC Part 1 §7): unknown device, wrong key or certificate, disabled device,
expired token → 401; a device whose grants do not cover the hybrid connection → 403.

Limitation: Python's ``ssl`` cannot accept a client certificate its trust store does
not verify (there is no verify callback), so the self-signed certificate of a
thumbprint device must also be listed in ``client_ca_file`` (each such certificate is
then a trust anchor of its own; ``VERIFY_X509_PARTIAL_CHAIN`` is set). Proof of
possession for uploaded CA certificates is the management API's business.

Live connections: the handlers register each device's control channels, relayed
streams and HTTP requests here (:func:`tracked`, :func:`request_started`), which
drives the device's ``connectionState`` (connected while it has at least one control
channel or relayed WebSocket stream; HTTP requests only touch ``lastActivityTime``, as
in IoT Hub) and lets :func:`close_device_connections` cut them. :func:`install`
hooks into ``Reactions.on_device_revoked`` (``reactions.py``, fed by the store's change
events from every node) so that disabling or deleting a device closes its control
channels and streams with 1008 within a second, and re-reads updated devices to cut
connections whose grant was removed. Its next connect is refused with 401 because
every handshake reads the device afresh (device principals are never cached).

A relayed stream belongs to its listener's device as much as to its sender's: the
listener's accept dial carries no token (the rendezvous key is its credential), so the
stream is attributed to the device that owns the control channel the accept went to
(:func:`listener_owner`), and disabling that device cuts it too. Limitation: with a
cluster, only when that control channel is on the node that holds the stream (the
sender's node); a device listener's streams spliced on other nodes last until they end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal, Protocol
from urllib.parse import unquote, urlsplit

from aiohttp import web

from hybridrelay.errors import AuthError, ForbiddenError, TokenExpiredError
from hybridrelay.logs import RELAY
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay import ca_trust
from hybridrelay.relay.control import ControlChannel
from hybridrelay.relay.device_timeline import DEVICE_NAMED, TimelineEntry, timelines
from hybridrelay.relay.splice import Splice
from hybridrelay.relay.store.models import ChangeEvent, Device

if TYPE_CHECKING:
    from hybridrelay.relay.reactions import DeviceRevoked
    from hybridrelay.relay.state import RelayState
    from hybridrelay.relay.store.base import Store

__all__ = [
    "DeviceCredentials",
    "DeviceToken",
    "ListenerOwner",
    "PeerCertificate",
    "close_device_connections",
    "credentials",
    "device_rights",
    "install",
    "known_device",
    "listener_owner",
    "live_devices",
    "parse_device_token",
    "peer_certificate",
    "request_finished",
    "request_started",
    "tracked",
    "verify_device_certificate",
    "verify_device_token",
]

log = logging.getLogger(RELAY)

_SCHEME_WORD: Final = "sharedaccesssignature"
_MAX_TOKEN_BYTES: Final = 4 * 1024
_MAX_SE_DIGITS: Final = 15
_SIGNATURE_BYTES: Final = 32
_DEVICES_SEGMENT: Final = "devices"
CLOSE_CODE: Final = 1008  # policy violation: the identity may no longer connect
_REASONS: Final = {
    "disabled": "the device is disabled",
    "deleted": "the device was deleted",
}
_GRANT_REVOKED: Final = "the device's grants no longer cover this hybrid connection"


# --- device SAS tokens ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceToken:
    """A parsed device SAS token; its signature is not checked yet.

    Attributes:
        raw_sr: ``sr`` exactly as sent (the signature covers this text).
        raw_se: ``se`` exactly as sent.
        signature: The decoded ``sig`` (32 bytes).
        expiry: ``se`` as Unix seconds.
        host: The host (and port) part of ``sr``; may be empty.
        device_id: The deviceId of ``sr``, percent-decoded once.
    """

    raw_sr: str
    raw_se: str
    signature: bytes
    expiry: int
    host: str
    device_id: str

    def __repr__(self) -> str:  # never the signature
        return f"DeviceToken(device_id={self.device_id!r}, host={self.host!r}, se={self.expiry})"

    @property
    def candidate_ids(self) -> tuple[str, ...]:
        """The deviceId as decoded once and, when it still holds escapes, twice."""
        twice = unquote(self.device_id)
        return (self.device_id,) if twice == self.device_id else (self.device_id, twice)


def _fields(text: str) -> dict[str, str] | None:
    if len(text) > _MAX_TOKEN_BYTES:
        return None
    word, sep, rest = text.strip().partition(" ")
    if not sep or word.lower() != _SCHEME_WORD:
        return None
    fields: dict[str, str] = {}
    for part in rest.lstrip(" ").split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            return None
        key = name.lower()
        if key in fields:
            return None
        fields[key] = value
    return fields


def _split_resource(resource: str) -> tuple[str, str] | None:
    """``[scheme://]host/devices/{id}[/]`` → (host, id), or None for any other shape."""
    rest = resource.partition("://")[2] if "://" in resource else resource
    host, slash, path = rest.partition("/")
    if not slash:
        return None
    segment, slash, device_id = path.rstrip("/").partition("/")
    if not slash or segment.lower() != _DEVICES_SEGMENT or not device_id or "/" in device_id:
        return None
    return host, device_id


def parse_device_token(text: str | None) -> DeviceToken | None:
    """Recognise a device SAS token (``skn`` absent or empty, ``sr`` naming a device).

    Args:
        text: A token as sent; SAS tokens of rules, JWTs and garbage are not device tokens.

    Returns:
        The parsed token, or None when ``text`` is not shaped like a device token (the
        caller then treats it as any other token, which reports what is wrong with it).

    Raises:
        AuthError: The token names a device but its ``se`` or ``sig`` is malformed.
    """
    if not text:
        return None
    fields = _fields(text)
    if fields is None or fields.get("skn") or not fields.get("sr"):
        return None
    raw_sr = fields["sr"]
    # No unquote_plus: "+" is a legal deviceId character and no device SDK writes spaces.
    target = _split_resource(unquote(raw_sr))
    if target is None:
        return None
    raw_se = fields.get("se", "")
    if not (raw_se.isascii() and raw_se.isdigit() and len(raw_se) <= _MAX_SE_DIGITS):
        raise AuthError("se is not an integer")
    sig_text = unquote(fields.get("sig", "")).replace(" ", "+")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthError("sig is not valid base64") from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise AuthError("sig is not an HMAC-SHA256 signature")
    host, device_id = target
    return DeviceToken(
        raw_sr=raw_sr,
        raw_se=raw_se,
        signature=signature,
        expiry=int(raw_se),
        host=host,
        device_id=device_id,
    )


def _key_bytes(key: str) -> Iterable[bytes]:
    yield key.encode("utf-8", "surrogatepass")  # as the relay's rule tokens are signed
    with contextlib.suppress(binascii.Error, ValueError):
        yield base64.b64decode(key, validate=True)  # as IoT Hub device tokens are signed


def _signed_with(token: DeviceToken, key: str) -> bool:
    message = f"{token.raw_sr}\n{token.raw_se}".encode("utf-8", "surrogatepass")
    return any(
        hmac.compare_digest(hmac.new(k, message, hashlib.sha256).digest(), token.signature)
        for k in _key_bytes(key)
    )


def _hostname(host: str) -> str | None:
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def device_rights(device: Device, hc_name: str) -> Rights:
    """The rights (Listen, Send) the device's grants give it on ``hc_name``."""
    rights = Rights(0)
    for right in (Rights.LISTEN, Rights.SEND):
        if device.grants.allows(hc_name, right):
            rights |= right
    return rights


def _right_name(right: Rights) -> str:
    return "Listen" if right == Rights.LISTEN else "Send" if right == Rights.SEND else "Manage"


def _granted(device: Device, hc_name: str, right: Rights) -> Rights:
    rights = device_rights(device, hc_name)
    if not rights.allows(right):
        raise ForbiddenError(
            f"the device is not granted {_right_name(right)} on this hybrid connection"
        )
    return rights


def verify_device_token(
    token: DeviceToken,
    device: Device | None,
    *,
    hc_name: str,
    right: Rights,
    now: float,
    grace: float = 0.0,
    host: str | AbstractSet[str] | None = None,
) -> tuple[Device, Rights]:
    """Check a device token for ``right`` on ``hc_name``.

    Args:
        token: From :func:`parse_device_token`.
        device: The identity the token names, as the store holds it now (None: unknown).
        hc_name: The hybrid connection asked for.
        right: Listen or Send.
        now: Unix seconds.
        grace: Seconds an expired token is still accepted.
        host: The host the token's ``sr`` must name (a port is ignored), a set of
            lower-case host names any of which it may name (the relay's public names),
            or None to skip the host check.

    Returns:
        The device (not None) and its rights on ``hc_name``.

    Raises:
        AuthError: Unknown device, no SAS keys, wrong signature, disabled (401).
        TokenExpiredError: ``se`` has passed (401).
        ForbiddenError: ``sr`` names another host, or the grants lack the right (403).
    """
    if device is None or device.device_id not in token.candidate_ids:
        raise AuthError("the token's device is not registered")
    keys = device.authentication.symmetric_key
    if device.authentication.type != "sas" or keys is None:
        raise AuthError("the device does not authenticate with SAS keys")
    if not (_signed_with(token, keys.primary_key) or _signed_with(token, keys.secondary_key)):
        raise AuthError("the token's signature does not match the device's keys")
    if device.status != "enabled":
        raise AuthError("the device is disabled")
    if token.expiry + grace < now:
        raise TokenExpiredError("the token has expired")
    wanted = {_hostname(host)} if isinstance(host, str) else host
    if wanted is not None and _hostname(token.host) not in wanted:
        raise ForbiddenError("the token is not valid for this host")
    return device, _granted(device, hc_name, right)


# --- X.509 client certificates ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCertificate:
    """What the relay needs of a TLS client certificate the handshake verified.

    Attributes:
        common_name: The subject CN (the deviceId), or None.
        sha1: Upper-case hex SHA-1 thumbprint of the DER certificate.
        sha256: Upper-case hex SHA-256 thumbprint.
        self_issued: Subject equals issuer (not signed by a CA).
        not_after: End of validity, Unix seconds (None if unreadable).
        der: The DER certificate.
        chain: The chain the handshake verified, leaf first, trust anchor last (DER).
        ca_anchored: The chain ends at a CA trusted for CA devices
            (``ca_trust.anchored``); only worked out for ``certificateAuthority`` devices.
    """

    common_name: str | None
    sha1: str
    sha256: str
    self_issued: bool
    not_after: float | None
    der: bytes = field(default=b"", repr=False)
    chain: tuple[bytes, ...] = field(default=(), repr=False)
    ca_anchored: bool = False

    @classmethod
    def from_ssl(
        cls, der: bytes, info: dict[str, object], chain: tuple[bytes, ...] = ()
    ) -> PeerCertificate:
        """Build from ``getpeercert(True)``, ``getpeercert()`` and the verified chain."""
        subject = info.get("subject") or ()
        issuer = info.get("issuer") or ()
        not_after_text = info.get("notAfter")
        not_after: float | None = None
        if isinstance(not_after_text, str):
            with contextlib.suppress(ValueError):
                not_after = float(ssl.cert_time_to_seconds(not_after_text))
        return cls(
            common_name=_common_name(subject),
            sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
            sha256=hashlib.sha256(der).hexdigest().upper(),
            self_issued=subject == issuer,
            not_after=not_after,
            der=der,
            chain=chain,
        )


def _common_name(subject: object) -> str | None:
    if not isinstance(subject, tuple):
        return None
    for rdn in subject:
        if not isinstance(rdn, tuple):
            continue
        for attribute in rdn:
            if isinstance(attribute, tuple) and len(attribute) == 2:
                name, value = attribute
                if name == "commonName" and isinstance(value, str):
                    return value
    return None


def _ssl_context(request: web.BaseRequest) -> ssl.SSLContext | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.context if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) else None


def peer_certificate(request: web.BaseRequest) -> PeerCertificate | None:
    """The request's verified TLS client certificate, or None (no TLS, none sent)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    info = ssl_object.getpeercert()  # empty unless the handshake verified the chain
    if not info:
        return None
    return PeerCertificate.from_ssl(der, dict(info), ca_trust.verified_chain(ssl_object))


def verify_device_certificate(
    certificate: PeerCertificate,
    device: Device | None,
    *,
    hc_name: str,
    right: Rights,
    now: float,
) -> tuple[Device, Rights]:
    """Check a device's client certificate for ``right`` on ``hc_name``.

    Returns:
        The device (not None) and its rights on ``hc_name``.

    Raises:
        AuthError: Unknown device (by CN), the device uses SAS keys, a thumbprint that is
            not registered, a CA device's certificate that is self-issued or does not
            chain to a CA trusted for CA devices, disabled (401).
        TokenExpiredError: The certificate has expired (the handshake normally refuses it).
        ForbiddenError: The grants lack the right (403).
    """
    if device is None or device.device_id != certificate.common_name:
        raise AuthError("the client certificate names no registered device")
    auth = device.authentication
    if auth.type == "selfSigned":
        prints = auth.x509_thumbprint
        registered = {prints.primary_thumbprint, prints.secondary_thumbprint} if prints else set()
        if not registered & {certificate.sha1, certificate.sha256}:
            raise AuthError("the client certificate's thumbprint is not the device's")
    elif auth.type == "certificateAuthority":
        if certificate.self_issued or not certificate.ca_anchored:
            raise AuthError("the device needs a certificate signed by a registered CA")
    else:
        raise AuthError("the device does not authenticate with certificates")
    if device.status != "enabled":
        raise AuthError("the device is disabled")
    if certificate.not_after is not None and certificate.not_after < now:
        raise TokenExpiredError("the client certificate has expired")
    return device, _granted(device, hc_name, right)


# --- what a handler looks up before authorize() -----------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """The device a request's token or certificate names, for ``authorize()``."""

    device: Device | None = None
    certificate: PeerCertificate | None = None


_NO_CREDENTIALS: Final = DeviceCredentials()


async def _lookup(store: Store, ids: Iterable[str]) -> Device | None:
    for device_id in ids:
        device = await store.get_device(device_id)
        if device is not None:
            return device
    return None


async def credentials(
    request: web.BaseRequest, store: Store, token: str | None
) -> DeviceCredentials:
    """Read what device authentication needs: the client certificate and the named device.

    A device token names its device; without a token, the certificate's CN does. The
    device is read from the store on every call (the store caches), so a disabled
    device is refused at its next connect.

    A malformed token is left for ``authorize()`` to refuse (or to ignore, for
    anonymous senders).
    """
    if token:  # a token takes precedence: the certificate is not looked at
        try:
            parsed = parse_device_token(token)
        except AuthError:
            return _NO_CREDENTIALS
        if parsed is None:
            return _NO_CREDENTIALS
        named = await _lookup(store, parsed.candidate_ids)
        if named is not None:
            request[DEVICE_NAMED] = named.device_id  # a refusal goes on its timeline
        return DeviceCredentials(named)
    certificate = peer_certificate(request)
    if certificate is None or not certificate.common_name:
        return DeviceCredentials(certificate=certificate)
    device = await store.get_device(certificate.common_name)
    if device is not None:
        request[DEVICE_NAMED] = device.device_id
    if device is not None and device.authentication.type == "certificateAuthority":
        # Only a CA device's chain needs an anchor (thumbprint devices match exactly).
        anchored = await ca_trust.anchored(_ssl_context(request), store, certificate.chain)
        certificate = replace(certificate, ca_anchored=anchored)
    return DeviceCredentials(device, certificate)


# --- live connections per device --------------------------------------------------------

Connection = ControlChannel | Splice | web.Request


@dataclass(eq=False, slots=True)
class _Entry:
    connection: Connection
    hc_name: str
    right: Rights
    counts: bool  # keeps the device "connected" (control channels, WebSocket streams)
    device_id: str
    # How and why the relay cut it (for the device's timeline): the close code the peer
    # echoes may be another.
    cut_code: int | None = None
    cut_reason: str | None = None

    def cut(self, code: int, reason: str, tasks: set[asyncio.Task[None]]) -> None:
        self.cut_code, self.cut_reason = code, reason
        conn = self.connection
        if isinstance(conn, ControlChannel):
            task = asyncio.create_task(conn.close(code, reason), name="device-close")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(conn, Splice):
            conn.shutdown(code, reason)
        elif conn.transport is not None:  # an HTTP request: nothing to close politely
            conn.transport.abort()


def _listener_key(hc_name: str, listener_id: str) -> tuple[str, str]:
    return hc_name.strip("/").lower(), listener_id


@dataclass(eq=False)
class _Registry:
    entries: dict[str, set[_Entry]] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)  # latest identity, for renewals
    recorded: set[str] = field(default_factory=set)  # devices last written as connected
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # (hc, listener id) -> the control channel entry of a device listening there, so the
    # streams spliced to that listener can be attributed to its device (listener_owner).
    listeners: dict[tuple[str, str], _Entry] = field(default_factory=dict)

    def add(self, device_id: str, entry: _Entry, device: Device | None) -> None:
        self.entries.setdefault(device_id, set()).add(entry)
        if device is not None and device.device_id == device_id:
            self.devices[device_id] = device
        if isinstance(entry.connection, ControlChannel):
            channel = entry.connection
            self.listeners[_listener_key(channel.hc_name, channel.listener_id)] = entry

    def remove(self, device_id: str, entry: _Entry) -> None:
        if isinstance(entry.connection, ControlChannel):
            channel = entry.connection
            key = _listener_key(channel.hc_name, channel.listener_id)
            if self.listeners.get(key) is entry:  # not a channel that took its place
                del self.listeners[key]
        live = self.entries.get(device_id)
        if live is None:
            return
        live.discard(entry)
        if not live:
            del self.entries[device_id]
            self.devices.pop(device_id, None)

    def connected(self, device_id: str) -> bool:
        return any(e.counts for e in self.entries.get(device_id, ()))


_REQUEST_ENTRY: Final = web.RequestKey("hybridrelay_device_request", _Entry)
_REGISTRIES: weakref.WeakKeyDictionary[RelayState, _Registry] = weakref.WeakKeyDictionary()


def _registry(state: RelayState) -> _Registry:
    registry = _REGISTRIES.get(state)
    if registry is None:
        registry = _REGISTRIES[state] = _Registry()
    return registry


def live_devices(state: RelayState) -> dict[str, int]:
    """DeviceIds with live connections on this node, and how many each has."""
    return {device_id: len(entries) for device_id, entries in _registry(state).entries.items()}


@dataclass(frozen=True, slots=True)
class ListenerOwner:
    """The device that owns a listener's control channel (a principal for :func:`tracked`)."""

    device_id: str
    device: Device | None


def listener_owner(state: RelayState, hc_name: str, listener_id: str) -> ListenerOwner | None:
    """The device listening on ``hc_name`` as ``listener_id`` on this node, if it is one.

    A stream spliced to that listener is the device's stream as well: hold it with
    ``tracked(state, owner, splice, hc_name=..., right=Rights.LISTEN)`` so that disabling
    or deleting the device, or taking its Listen grant away, cuts it.
    """
    entry = _registry(state).listeners.get(_listener_key(hc_name, listener_id))
    if entry is None:
        return None
    return ListenerOwner(entry.device_id, _registry(state).devices.get(entry.device_id))


def known_device(state: RelayState, token_text: str) -> Device | None:
    """The current identity of the device a renewal token names, if it is connected here.

    A listener renewing with a device token (``renewToken``) is checked against this
    (the renewal callback is synchronous); it is kept current by the change events.
    """
    try:
        parsed = parse_device_token(token_text)
    except AuthError:
        return None
    if parsed is None:
        return None
    devices = _registry(state).devices
    return next((devices[i] for i in parsed.candidate_ids if i in devices), None)


async def _record_state(state: RelayState, device_id: str) -> None:
    """Write connectionState when it differs from what this node last wrote (serialised)."""
    registry = _registry(state)
    async with registry.write_lock:
        connected = registry.connected(device_id)
        if connected == (device_id in registry.recorded):
            return
        try:
            await state.store.set_connection_state(device_id, connected, state.now())
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a connection
            log.warning("device_state_not_recorded", extra={"device": device_id, "error": str(exc)})
            return
        if connected:
            registry.recorded.add(device_id)
        else:
            registry.recorded.discard(device_id)


async def _touch(state: RelayState, device_id: str) -> None:
    try:
        await state.store.touch_activity(device_id, state.now())
    except Exception as exc:  # noqa: BLE001 - bookkeeping must never fail a request
        log.warning("device_activity_not_recorded", extra={"device": device_id, "error": str(exc)})


class _Principal(Protocol):  # what is used of auth.Principal (auth imports this module)
    @property
    def device_id(self) -> str | None: ...


@contextlib.asynccontextmanager
async def tracked(
    state: RelayState,
    principal: _Principal,
    connection: ControlChannel | Splice,
    *,
    hc_name: str,
    right: Rights,
    device: Device | None = None,
) -> AsyncIterator[None]:
    """Hold a device's control channel or relayed stream as live while the block runs.

    The first one makes the device ``connected``, the end of the last one
    ``disconnected``; ``lastActivityTime`` is touched at the start. A principal that
    is not a device (``device_id`` None) is not tracked.

    Args:
        state: The relay state.
        principal: From ``authorize()``.
        connection: The channel (Listen) or splice (Send).
        hc_name: The hybrid connection, to re-check the grants when the device changes.
        right: Listen for a control channel, Send for a stream.
        device: The identity as authorized (kept for token renewals).
    """
    device_id = principal.device_id
    if device_id is None:
        yield
        return
    registry = _registry(state)
    entry = _Entry(connection, hc_name, right, counts=True, device_id=device_id)
    registry.add(device_id, entry, device)
    _on_timeline(state, entry, "connected")
    try:
        await _touch(state, device_id)
        await _cut_if_revoked(state, entry)
        await _record_state(state, device_id)
        yield
    finally:
        registry.remove(device_id, entry)
        _on_timeline(state, entry, "disconnected")
        await _record_state(state, device_id)


def _on_timeline(
    state: RelayState, entry: _Entry, kind: Literal["connected", "disconnected"]
) -> None:
    conn = entry.connection
    if isinstance(conn, ControlChannel):
        role, code = "listener", entry.cut_code or conn.close_code
    elif entry.right == Rights.LISTEN:
        # A stream spliced to the device's control channel: a busy gateway has thousands,
        # which would push its own connects and refusals out of its bounded timeline.
        return
    else:
        role, code = "sender", entry.cut_code
    reason = ""
    if kind == "disconnected":
        reason = entry.cut_reason or ("closed" if isinstance(conn, ControlChannel) else "ended")
    timelines(state).record(
        entry.device_id,
        TimelineEntry(
            at=state.now(),
            kind=kind,
            hybrid_connection=entry.hc_name,
            role=role,
            reason=reason,
            code=code if kind == "disconnected" else None,
        ),
    )


async def _cut_if_revoked(state: RelayState, entry: _Entry) -> None:
    """Close the gap between authorize() and registration (a rendezvous can take seconds).

    A device disabled, deleted or stripped of the grant in that window raised its change
    event before the connection was registered; reading it again now catches that.
    """
    try:
        current = await state.store.get_device(entry.device_id)
    except Exception as exc:  # noqa: BLE001 - the change events still apply
        log.warning("device_recheck_failed", extra={"device": entry.device_id, "error": str(exc)})
        return
    if current is None:
        reason = _REASONS["deleted"]
    elif current.status != "enabled":
        reason = _REASONS["disabled"]
    elif not current.grants.allows(entry.hc_name, entry.right):
        reason = _GRANT_REVOKED
    else:
        return
    entry.cut(CLOSE_CODE, reason, _registry(state).tasks)


async def request_started(
    state: RelayState,
    principal: _Principal,
    request: web.Request,
    *,
    hc_name: str,
    device: Device | None = None,
) -> None:
    """Register a device's HTTP request and touch its ``lastActivityTime``.

    Call :func:`request_finished` in a ``finally`` (safe when nothing was registered).
    Disabling the device aborts the request; it does not change ``connectionState``.
    """
    device_id = principal.device_id
    if device_id is None:
        return
    entry = _Entry(request, hc_name, Rights.SEND, counts=False, device_id=device_id)
    _registry(state).add(device_id, entry, device)
    request[_REQUEST_ENTRY] = entry
    await _touch(state, device_id)


def request_finished(state: RelayState, request: web.Request) -> None:
    """The request :func:`request_started` registered is over."""
    entry = request.get(_REQUEST_ENTRY)
    if entry is not None:
        _registry(state).remove(entry.device_id, entry)


async def close_device_connections(
    state: RelayState,
    device_id: str,
    *,
    code: int = CLOSE_CODE,
    reason: str = "the device is disabled",
) -> int:
    """Close a device's control channels and streams on this node and abort its requests.

    For the management API (or anything else that revokes a device): control channels
    and relayed streams get ``code`` (1008 by default), HTTP requests are cut. The
    registry entries go when the handlers finish; connectionState follows. Other nodes
    do the same when they see the store's change event (see :func:`install`).

    Returns:
        How many connections were closed.
    """
    registry = _registry(state)
    entries = list(registry.entries.get(device_id, ()))
    closing: set[asyncio.Task[None]] = set()
    for entry in entries:
        entry.cut(code, reason, closing)
    if entries:
        log.info(
            "device_connections_closed",
            extra={"device": device_id, "count": len(entries), "reason": reason},
        )
    if closing:
        await asyncio.gather(*closing, return_exceptions=True)
    return len(entries)


async def _recheck(state: RelayState, device_id: str, *, deleted: bool, revoke: bool) -> None:
    """A device changed: keep its identity current, cut what its grants no longer cover.

    With ``revoke``, a disabled or deleted device's connections are cut here too (when
    nobody else reports revocations, see :func:`install`).
    """
    registry = _registry(state)
    if device_id not in registry.entries:
        return
    device = None if deleted else await state.store.get_device(device_id)
    live = registry.entries.get(device_id)
    if live is None:
        return
    if device is None:
        registry.devices.pop(device_id, None)  # renewals now fail: unknown device
    else:
        registry.devices[device_id] = device  # renewals now see its status and keys
    if device is None or device.status != "enabled":
        if revoke:
            reason = _REASONS["deleted" if device is None else "disabled"]
            await close_device_connections(state, device_id, reason=reason)
        return
    revoked = [e for e in live if not device.grants.allows(e.hc_name, e.right)]
    closing: set[asyncio.Task[None]] = set()
    for entry in revoked:
        entry.cut(CLOSE_CODE, _GRANT_REVOKED, closing)
    if closing:
        await asyncio.gather(*closing, return_exceptions=True)


def _spawn(state: RelayState, work: Callable[[], Awaitable[object]], name: str) -> None:
    async def guarded() -> None:
        try:
            await work()
        except Exception:  # the top of a task we own: log, keep watching
            log.exception("device_watch_failed", extra={"task": name})

    registry = _registry(state)
    task = asyncio.create_task(guarded(), name=name)
    registry.tasks.add(task)
    task.add_done_callback(registry.tasks.discard)


def _recheck_later(
    state: RelayState, device_ids: Iterable[str], *, revoke: bool, deleted: bool = False
) -> None:
    for device_id in device_ids:
        _spawn(
            state,
            functools.partial(_recheck, state, device_id, deleted=deleted, revoke=revoke),
            f"device-recheck:{device_id}",
        )


def _on_change(state: RelayState, event: ChangeEvent, *, revoke: bool) -> None:
    """Store events: ``updated`` devices always; deletions and resets only with ``revoke``."""
    live = _registry(state).entries
    if event.kind == "device" and event.name in live:
        if event.op == "updated" or revoke:
            _recheck_later(state, [event.name], revoke=revoke, deleted=event.op == "deleted")
    elif event.kind == "reset" and revoke:
        _recheck_later(state, list(live), revoke=True)


def _on_revoked(state: RelayState, event: DeviceRevoked) -> None:
    """``Reactions.on_device_revoked``: close a revoked device's connections on this node."""
    live = _registry(state).entries
    if event.device_id is None:  # a reset: events may have been missed
        _recheck_later(state, list(live), revoke=True)
    elif event.device_id in live:
        _registry(state).devices.pop(event.device_id, None)  # renewals now fail
        reason = _REASONS.get(event.reason, "the device was revoked")
        _spawn(
            state,
            functools.partial(close_device_connections, state, event.device_id, reason=reason),
            f"device-close:{event.device_id}",
        )


def install(app: web.Application) -> None:
    """Cut devices' connections when they are disabled, deleted or lose a grant.

    Adds a cleanup context to the relay's application (``app.py`` calls this once,
    after registering ``reactions_ctx``). Revocations (disabled, deleted, a store
    ``reset``) come from ``Reactions.on_device_revoked`` when the app has
    ``reactions.REACTIONS``, else from the store's change events directly; ``updated``
    devices are always re-read here to refresh the identity that token renewals are
    checked against and to cut connections whose grant was removed.
    """
    app.cleanup_ctx.append(_watch_devices)


async def _watch_devices(app: web.Application) -> AsyncIterator[None]:
    # Imported here: both import state, which imports auth, which imports this module.
    from hybridrelay.relay.reactions import REACTIONS
    from hybridrelay.relay.state import STATE

    state = app[STATE]
    registry = _registry(state)
    undo: list[Callable[[], None]] = []
    reactions = app.get(REACTIONS)
    if reactions is not None:
        undo.append(reactions.on_device_revoked(lambda event: _on_revoked(state, event)))
    subscribe = getattr(state.store, "subscribe", None)
    if callable(subscribe):
        revoke = reactions is None
        undo.append(subscribe(lambda event: _on_change(state, event, revoke=revoke)))
    try:
        yield
    finally:
        for unsubscribe in undo:
            unsubscribe()
        for task in list(registry.tasks):
            task.cancel()
        if registry.tasks:
            await asyncio.gather(*registry.tasks, return_exceptions=True)
