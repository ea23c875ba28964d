"""authorize(): who may listen on or send to a hybrid connection (HC §7, §8).

Order of checks, and the status each failure gets (HC Part 1 §7):
token missing or malformed, unknown rule, bad signature, expiring further ahead
than ``max_token_lifetime`` (:func:`check_lifetime`), expired → 401; valid token
whose ``sr`` does not cover the entity (or, with ``check_token_host``, names
another host than the relay's public ones), or whose rule lacks the right → 403.
Manage implies Listen and Send; namespace rules cover every entity.

JWT bearer tokens (``Bearer <jwt>`` or a raw JWT, HC §8.4) take the same
place: :func:`check_token` sends them to ``jwt_auth.verify_jwt`` (401s) and
checks the rights their claims grant on the entity (403).

Device identities (issue 5, ``device_auth.py``): a device SAS token (``sr`` naming
``{host}/devices/{deviceId}``, no ``skn``) or, without a token, a verified TLS client
certificate is checked against the device the caller read from the store
(``device_auth.credentials``); the principal's rule is ``device:{deviceId}`` and its
``device_id`` is set. Device principals are never cached: disabling a device must
refuse its next connect.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence, Set as AbstractSet
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from hybridrelay.errors import AuthError, ForbiddenError, TokenExpiredError, TokenLifetimeError
from hybridrelay.protocol.sas import (
    DeviceToken,
    Rights,
    SasToken,
    parse_device_token,
    parse_sas_token,
    resource_covers,
    verify_signature,
)
from hybridrelay.relay.device_auth import (
    PeerCertificate,
    verify_device_certificate,
    verify_device_token,
)
from hybridrelay.relay.jwt_auth import JwtIssuerConfig, bearer_token, verify_jwt
from hybridrelay.relay.store.base import HybridConnection, Rule
from hybridrelay.relay.store.models import Device

__all__ = [
    "TOKENS",
    "Principal",
    "TokenCache",
    "authorize",
    "cached_principal",
    "check_device_certificate",
    "check_device_token",
    "check_jwt",
    "check_lifetime",
    "check_token",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who a request acts as: a rule name (or None when anonymous) and until when."""

    rule: str | None
    rights: Rights
    expires_at: float | None  # token se; None for anonymous senders
    device_id: str | None = None  # set for device identities (rule is "device:{id}")

    @property
    def anonymous(self) -> bool:
        return self.rule is None


ANONYMOUS_SENDER = Principal(rule=None, rights=Rights.SEND, expires_at=None)

# The host(s) a token must name: one host (a port is ignored), a set of lower-case host
# names (RelayState.token_hosts: the relay's public names), or None (not checked).
TokenHosts = str | AbstractSet[str] | None


def check_lifetime(expiry: float, *, now: float, max_lifetime: float) -> None:
    """Refuse a verified token that expires further ahead than ``max_lifetime`` (0: no cap).

    Raises:
        TokenLifetimeError: 401, counted as ``limit_hit("max_token_lifetime")``.
    """
    if max_lifetime > 0 and expiry - now > max_lifetime:
        raise TokenLifetimeError(
            f"the token expires more than {max_lifetime:g} s ahead (max_token_lifetime)"
        )


def _find_rule(name: str, hc: HybridConnection, namespace_rules: tuple[Rule, ...]) -> Rule | None:
    lowered = name.lower()
    for rule in hc.rules:
        if rule.name.lower() == lowered:
            return rule
    for rule in namespace_rules:
        if rule.name.lower() == lowered:
            return rule
    return None


def _signed_by(token: SasToken, rule: Rule) -> bool:
    if verify_signature(token, rule.primary_key):
        return True
    return rule.secondary_key is not None and verify_signature(token, rule.secondary_key)


def _right_name(right: Rights) -> str:
    return "Listen" if right == Rights.LISTEN else "Send" if right == Rights.SEND else "Manage"


def check_jwt(
    token: str,
    *,
    hc: HybridConnection,
    right: Rights,
    now: float,
    jwt_issuers: Sequence[JwtIssuerConfig],
    grace: float = 0.0,
    max_lifetime: float = 0.0,
) -> Principal:
    """Verify a JWT bearer token (no ``Bearer`` word) for ``right`` on ``hc``.

    The rule of the principal is ``jwt:{sub}`` (``jwt:{iss}`` without a subject);
    its rights are those the token grants on this hybrid connection.
    """
    verified = verify_jwt(token, issuers=jwt_issuers, now=now, grace=grace)
    check_lifetime(verified.expires_at, now=now, max_lifetime=max_lifetime)
    rights = verified.grants.rights_for(hc.name)
    if not rights.allows(right):
        raise ForbiddenError(
            f"the token grants no {_right_name(right)} right on this hybrid connection"
        )
    return Principal(
        rule=f"jwt:{verified.subject or verified.issuer}",
        rights=rights,
        expires_at=verified.expires_at,
    )


def check_device_token(
    token: DeviceToken,
    device: Device | None,
    *,
    hc: HybridConnection,
    right: Rights,
    now: float,
    grace: float = 0.0,
    host: TokenHosts = None,
    max_lifetime: float = 0.0,
) -> Principal:
    """Verify a device SAS token (``device_auth.verify_device_token``) as a principal."""
    device, rights = verify_device_token(
        token, device, hc_name=hc.name, right=right, now=now, grace=grace, host=host
    )
    check_lifetime(token.expiry, now=now, max_lifetime=max_lifetime)
    return Principal(
        rule=f"device:{device.device_id}",
        rights=rights,
        expires_at=float(token.expiry),
        device_id=device.device_id,
    )


def check_device_certificate(
    certificate: PeerCertificate,
    device: Device | None,
    *,
    hc: HybridConnection,
    right: Rights,
    now: float,
) -> Principal:
    """Verify a TLS client certificate (``device_auth.verify_device_certificate``).

    The principal expires with the certificate.
    """
    device, rights = verify_device_certificate(
        certificate, device, hc_name=hc.name, right=right, now=now
    )
    return Principal(
        rule=f"device:{device.device_id}",
        rights=rights,
        expires_at=certificate.not_after,
        device_id=device.device_id,
    )


def check_token(
    token_text: str,
    *,
    hc: HybridConnection,
    namespace_rules: tuple[Rule, ...],
    right: Rights,
    now: float,
    grace: float = 0.0,
    host: TokenHosts = None,
    path: str | None = None,
    jwt_issuers: Sequence[JwtIssuerConfig] = (),
    device: Device | None = None,
    max_lifetime: float = 0.0,
) -> Principal:
    """Verify a SAS token for ``right`` on ``hc``; raises AuthError / ForbiddenError.

    ``path`` is the resource asked for (entity plus suffix); the token's ``sr``
    must cover it, so a token minted for ``hc/sub`` (hyco signs the full URI)
    is good for that suffix but not for the bare entity.

    A JWT bearer token (see ``jwt_auth.bearer_token``) is checked against
    ``jwt_issuers`` instead; without issuers it is refused with 401. Its rights
    cover the hybrid connection with every suffix; ``host`` does not apply (its
    ``aud`` names the relay).

    A device SAS token (no ``skn``, ``sr`` naming a device) is checked against
    ``device``, the identity it names as read from the store (None: unknown, 401).

    Whatever its kind, a token that expires more than ``max_lifetime`` seconds after
    ``now`` is refused once its signature checks out (:func:`check_lifetime`; 0: no cap).
    """
    bearer = bearer_token(token_text)
    if bearer is not None:
        return check_jwt(
            bearer,
            hc=hc,
            right=right,
            now=now,
            jwt_issuers=jwt_issuers,
            grace=grace,
            max_lifetime=max_lifetime,
        )
    device_token = parse_device_token(token_text)
    if device_token is not None:
        return check_device_token(
            device_token,
            device,
            hc=hc,
            right=right,
            now=now,
            grace=grace,
            host=host,
            max_lifetime=max_lifetime,
        )
    token = parse_sas_token(token_text)
    rule = _find_rule(token.key_name, hc, namespace_rules)
    if rule is None:
        raise AuthError("the token's rule (skn) is not defined for this hybrid connection")
    if not _signed_by(token, rule):
        raise AuthError("the token's signature does not match")
    check_lifetime(token.expiry, now=now, max_lifetime=max_lifetime)
    if token.expiry + grace < now:
        raise TokenExpiredError("the token has expired")
    if not resource_covers(token.resource, host=host, entity_path=path or hc.name):
        raise ForbiddenError("the token is not valid for this hybrid connection")
    if not rule.rights.allows(right):
        raise ForbiddenError(f"the token's rule lacks the {_right_name(right)} right")
    return Principal(rule=rule.name, rights=rule.rights, expires_at=float(token.expiry))


class TokenCache:
    """Tokens already verified for a (hybrid connection, right, path), until they expire.

    JWTs are cached like SAS tokens (the key holds the whole token text) until
    their ``exp``; the issuer's leeway is not granted to cached entries.

    Devices and load generators repeat the same token for every request; parsing it
    and computing the HMAC each time was a tenth of the relay's CPU in HTTP mode.
    Anything that changes rules or keys must call :meth:`clear`.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._entries: OrderedDict[_CacheKey, Principal] = OrderedDict()

    def get(self, key: _CacheKey, now: float) -> Principal | None:
        principal = self._entries.get(key)
        if principal is None:
            return None
        if principal.expires_at is None or principal.expires_at < now:
            del self._entries[key]
            return None
        return principal

    def put(self, key: _CacheKey, principal: Principal) -> None:
        self._entries[key] = principal
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


TOKENS: Final = web.AppKey("hybridrelay_tokens", TokenCache)

_CacheKey = tuple[str, str, int, str, str | AbstractSet[str] | None]


def cached_principal(
    cache: TokenCache,
    token_text: str | None,
    *,
    hc: HybridConnection,
    right: Rights,
    now: float,
    host: TokenHosts = None,
    path: str | None = None,
) -> Principal | None:
    """What :func:`authorize` would return, if that is known without reading anything.

    Anonymous senders, and tokens :func:`authorize` verified and cached for exactly
    this entity, right, path and host (never device identities). A caller that gets
    a principal here can skip ``device_auth.credentials()`` (a token parse per request)
    as well as the verification; None means: call ``authorize()``.
    """
    if right == Rights.SEND and not hc.requires_client_authorization:
        return ANONYMOUS_SENDER
    if not token_text:
        return None
    return cache.get((token_text, hc.name, right.value, path or hc.name, host), now)


def authorize(
    token_text: str | None,
    *,
    hc: HybridConnection,
    namespace_rules: tuple[Rule, ...],
    right: Rights,
    now: float,
    host: TokenHosts = None,
    path: str | None = None,
    cache: TokenCache | None = None,
    jwt_issuers: Sequence[JwtIssuerConfig] = (),
    device: Device | None = None,
    certificate: PeerCertificate | None = None,
    max_lifetime: float = 0.0,
) -> Principal:
    """Authorize a handshake; senders of HCs without client authorization pass anonymously.

    ``token_text`` is a SAS token or a JWT bearer token (``Bearer <jwt>`` or the
    raw JWT), the latter verified against ``jwt_issuers``.

    ``device`` and ``certificate`` come from ``device_auth.credentials``: the identity
    a device token or (without a token) the TLS client certificate names, and the
    certificate, which authenticates the request when no token is given.
    """
    if right == Rights.SEND and not hc.requires_client_authorization:
        return ANONYMOUS_SENDER
    if not token_text and certificate is not None:
        return check_device_certificate(certificate, device, hc=hc, right=right, now=now)
    if not token_text:
        raise AuthError("a token is required (ServiceBusAuthorization header or sb-hc-token)")
    key = (token_text, hc.name, right.value, path or hc.name, host)
    if cache is not None:
        cached = cache.get(key, now)
        if cached is not None:
            return cached
    principal = check_token(
        token_text,
        hc=hc,
        namespace_rules=namespace_rules,
        right=right,
        now=now,
        host=host,
        path=path,
        jwt_issuers=jwt_issuers,
        device=device,
        max_lifetime=max_lifetime,
    )
    if cache is not None and principal.device_id is None:
        cache.put(key, principal)
    return principal
