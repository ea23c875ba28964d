"""Who a sender is: the token check that WebSocket connects and HTTP-mode requests share.

Senders repeat their token, so a token verified before for the same entity, path and
host is taken from the cache without parsing it or reading the store; anything else
goes through device credentials and :func:`~hybridrelay.relay.auth.authorize`.
"""

from __future__ import annotations

from aiohttp import web

from hybridrelay.protocol.sas import Rights
from hybridrelay.relay import device_auth
from hybridrelay.relay.auth import TOKENS, Principal, authorize, cached_principal
from hybridrelay.relay.ca_trust import CA_TRUST
from hybridrelay.relay.state import RelayState
from hybridrelay.relay.store.base import HybridConnection
from hybridrelay.relay.store.models import Device

__all__ = ["authorize_sender"]


async def authorize_sender(
    state: RelayState,
    request: web.Request,
    token: str | None,
    *,
    hc: HybridConnection,
    path: str,
) -> tuple[Principal, Device | None]:
    """The sender's principal for Send on ``hc`` (and the device it is, if any).

    With ``check_token_host`` the token must name one of the relay's public hosts
    (``RelayState.token_hosts``), for WebSocket connects and HTTP-mode requests alike.

    Raises:
        AuthError: the token is missing, malformed, expired, expires further ahead than
            ``max_token_lifetime`` or lacks the right.
    """
    now = state.now()
    tokens = request.app[TOKENS]
    host = state.token_hosts
    principal = cached_principal(
        tokens, token, hc=hc, right=Rights.SEND, now=now, host=host, path=path
    )
    if principal is not None:
        return principal, None
    creds = await device_auth.credentials(request, state.store, token, request.app.get(CA_TRUST))
    principal = authorize(
        token,
        hc=hc,
        namespace_rules=await state.store.namespace_rules(),
        right=Rights.SEND,
        now=now,
        host=host,
        path=path,
        cache=tokens,
        jwt_issuers=state.config.jwt_issuers,
        device=creds.device,
        certificate=creds.certificate,
        max_lifetime=state.config.relay.max_token_lifetime,
    )
    return principal, creds.device
