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
  API (``CaTrust.anchored``: a thumbprint device's certificate, though a trust anchor
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

Live connections per device (connectionState, revocation) are the device registry's
(``devices.py``); device SAS tokens are parsed and their signatures checked by
``hybridrelay.protocol.sas`` (``parse_device_token``, ``device_signed_with``).
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from collections.abc import Iterable, Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from hybridrelay.errors import AuthError, ForbiddenError, TokenExpiredError
from hybridrelay.protocol.sas import DeviceToken, Rights, device_signed_with, parse_device_token
from hybridrelay.relay.ca_trust import CaTrust, verified_chain
from hybridrelay.relay.device_timeline import DEVICE_NAMED
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.models import Device

__all__ = [
    "DeviceCredentials",
    "PeerCertificate",
    "credentials",
    "device_rights",
    "peer_certificate",
    "verify_device_certificate",
    "verify_device_token",
]


# --- device SAS tokens ------------------------------------------------------------------


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
    if not (
        device_signed_with(token, keys.primary_key) or device_signed_with(token, keys.secondary_key)
    ):
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
            (``CaTrust.anchored``); only worked out for ``certificateAuthority`` devices.
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
    return PeerCertificate.from_ssl(der, dict(info), verified_chain(ssl_object))


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
    request: web.BaseRequest, store: Store, token: str | None, trust: CaTrust | None
) -> DeviceCredentials:
    """Read what device authentication needs: the client certificate and the named device.

    A device token names its device; without a token, the certificate's CN does. The
    device is read from the store on every call (the store caches), so a disabled
    device is refused at its next connect.

    A malformed token is left for ``authorize()`` to refuse (or to ignore, for
    anonymous senders). ``trust`` is the relay's CA trust (``app.get(CA_TRUST)``, None
    without client certificates): only it can anchor a CA device's chain.
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
        anchored = trust is not None and await trust.anchored(
            _ssl_context(request), store, certificate.chain
        )
        certificate = replace(certificate, ca_anchored=anchored)
    return DeviceCredentials(device, certificate)
