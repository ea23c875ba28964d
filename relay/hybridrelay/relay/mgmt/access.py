"""authorize_manage(): who may call the management API (issue 5, "Auth on the API").

Every ``/$mgmt/v1`` call needs the Manage right, proven one of two ways; the token
comes in the ``Authorization`` header or, as for the data plane, in
``ServiceBusAuthorization`` (HC §8.4). Query-string tokens are not read: they end
up in access logs.

- A SAS token of a *namespace* rule that has Manage. Its ``sr`` must cover the
  request: namespace-wide (``http://host/``) or a prefix of the request path
  (``http://host/$mgmt`` or ``http://host/$mgmt/v1/devices``). A token scoped to a
  hybrid connection (``http://host/sensors``) does not manage the namespace, even
  when its rule could. Hybrid-connection rules never authorize the API.
- A JWT bearer token (``Bearer <jwt>`` or the raw JWT) from a configured issuer
  whose manage grants match ``$mgmt``: ``{"hc": {"manage": ["*"]}}`` or the scope
  ``hc:manage:*`` (``hc:manage:$mgmt`` says the same, narrower). Grants for
  hybrid connection patterns such as ``sensors/*`` do not reach the API.

Long-lived calls (the event streams of ``events.py``) are authorized once at the start
and then watched (:func:`until_revoked`): when the rule or key that signed the token is
regenerated, changed or deleted (the store's change events, from every node) or the
token expires, the call learns of it at once and ends.

Failures: no token, malformed, unknown rule, bad signature, expiring further ahead
than ``max_token_lifetime``, expired → 401 (:class:`AuthError`); a valid token without
Manage or scoped elsewhere (with ``check_token_host``: naming another host than the
relay's public ones) → 403 (:class:`ForbiddenError`). Messages never contain token text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web

from hybridrelay.errors import AuthError, ForbiddenError, TokenExpiredError
from hybridrelay.protocol.sas import Rights, parse_sas_token, resource_covers, verify_signature
from hybridrelay.relay.auth import check_lifetime
from hybridrelay.relay.jwt_auth import bearer_token, verify_jwt
from hybridrelay.relay.state import RelayState
from hybridrelay.relay.store.models import ChangeEvent

__all__ = [
    "MGMT_SCOPE",
    "Manager",
    "authorize_manage",
    "identify",
    "request_token",
    "require_manage",
    "until_revoked",
]

# The name JWT manage grants are matched against (fnmatch, case-insensitive).
MGMT_SCOPE: Final = "$mgmt"
_HEADERS: Final = ("Authorization", "ServiceBusAuthorization")


@dataclass(frozen=True, slots=True, kw_only=True)
class Manager:
    """A caller whose token verified: ``who`` is safe to log (no secret in it).

    ``refusal`` is None when the token carries Manage on the API, else why not (403).
    """

    kind: Literal["sas", "jwt"]
    name: str  # rule name, or the JWT subject (its issuer when it has none)
    refusal: str | None = None
    expires_at: float | None = None  # the token's se / exp

    @property
    def who(self) -> str:
        return f"{self.kind}:{self.name}"


def request_token(request: web.Request) -> str | None:
    """The token text of a request: ``Authorization`` first, then ``ServiceBusAuthorization``."""
    for header in _HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return value
    return None


async def identify(request: web.Request, state: RelayState) -> Manager:
    """Verify the request's token and say whether it may manage (401s raise here).

    Raises:
        AuthError: The token is missing, malformed, unknown, badly signed or expired.
    """
    token = request_token(request)
    if token is None:
        raise AuthError(
            "a token with the Manage right is required "
            "(Authorization or ServiceBusAuthorization header)"
        )
    now = state.now()
    max_lifetime = state.config.relay.max_token_lifetime
    bearer = bearer_token(token)
    if bearer is not None:
        verified = verify_jwt(bearer, issuers=state.config.jwt_issuers, now=now)
        check_lifetime(verified.expires_at, now=now, max_lifetime=max_lifetime)
        name = verified.subject or verified.issuer
        if not verified.grants.rights_for(MGMT_SCOPE).allows(Rights.MANAGE):
            return Manager(
                kind="jwt",
                name=name,
                refusal="the token grants no manage right on the management API",
                expires_at=verified.expires_at,
            )
        return Manager(kind="jwt", name=name, expires_at=verified.expires_at)

    sas = parse_sas_token(token)
    wanted = sas.key_name.lower()
    rule = next((r for r in await state.store.namespace_rules() if r.name.lower() == wanted), None)
    if rule is None:
        raise AuthError("the token's rule (skn) is not a namespace rule")
    signed = verify_signature(sas, rule.primary_key) or (
        rule.secondary_key is not None and verify_signature(sas, rule.secondary_key)
    )
    if not signed:
        raise AuthError("the token's signature does not match")
    check_lifetime(sas.expiry, now=now, max_lifetime=max_lifetime)
    if sas.expiry < now:
        raise TokenExpiredError("the token has expired")
    host = state.token_hosts
    # The request path as the entity path: "$mgmt/v1/..." is covered by the namespace
    # root and by any "$mgmt..." prefix on a '/' boundary, never by an entity's scope.
    if not resource_covers(sas.resource, host=host, entity_path=request.path.lstrip("/")):
        return Manager(
            kind="sas",
            name=rule.name,
            refusal="the token is not valid for the management API (sr)",
            expires_at=sas.expiry,
        )
    if Rights.MANAGE not in rule.rights:
        return Manager(
            kind="sas",
            name=rule.name,
            refusal="the token's rule lacks the Manage right",
            expires_at=sas.expiry,
        )
    return Manager(kind="sas", name=rule.name, expires_at=sas.expiry)


def require_manage(manager: Manager) -> Manager:
    """Return ``manager`` when it may manage; raises ForbiddenError (403) otherwise."""
    if manager.refusal is not None:
        raise ForbiddenError(manager.refusal)
    return manager


async def authorize_manage(request: web.Request, state: RelayState) -> Manager:
    """Check that ``request`` carries a token with the Manage right on the namespace.

    Raises:
        AuthError: 401, the token is missing, malformed, unknown, badly signed or expired.
        ForbiddenError: 403, the token is valid but lacks Manage or is scoped elsewhere.
    """
    return require_manage(await identify(request, state))


async def until_revoked(request: web.Request, state: RelayState, manager: Manager) -> str:
    """Wait while ``request``'s token still authorizes it; return why it no longer does.

    For calls that outlive their handshake (event streams). Rules change through the
    store, whose change events reach every node: each ``rule`` (or ``reset``) event
    re-runs the whole check on the request's token against the rules as they are now,
    so a regenerated or deleted key, a deleted rule or a rule that lost Manage ends the
    call within the event's delivery time. The token's expiry ends it too (there is no
    renewal on these calls).

    Returns:
        The reason, for the caller's close message and log line.
    """
    changed = asyncio.Event()

    def on_change(event: ChangeEvent) -> None:
        if event.kind in ("rule", "reset"):
            changed.set()

    unsubscribe = state.store.subscribe(on_change)
    try:
        while True:
            remaining = None if manager.expires_at is None else manager.expires_at - state.now()
            if remaining is not None and remaining <= 0:
                return "the token has expired"
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                continue  # the expiry is due: checked at the top
            changed.clear()
            try:
                require_manage(await identify(request, state))
            except AuthError as exc:  # ForbiddenError included
                return str(exc)
    finally:
        unsubscribe()
