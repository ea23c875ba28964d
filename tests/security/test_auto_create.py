"""Entity squatting through ``auto_create`` (issue 11).

With ``auto_create`` on, a ``listen`` on an unknown name used to create the hybrid
connection *before* the token was checked: an anonymous internet peer could write
entities into the store for ever, and a listen on ``a/b`` created an entity that took
``a``'s paths under ``/b`` (longest match wins, HC §2.1). The relay now authenticates
first (only a namespace rule, a JWT or a device grant can cover a name that has no rules
yet) and never auto-creates a name inside or above an existing entity.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import RelayFactory, make_token
from tests.harness.raw_http import exchange, http_request, upgrade_request
from tests.harness.relay import LISTEN_KEY, InProcessRelay

PARENT = """
[[hybrid_connections]]
name = "parent/child"
"""


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> InProcessRelay:
    return await relay_factory(relay_extra="auto_create = true", extra=PARENT)


def host_of(relay: InProcessRelay) -> str:
    return urlsplit(relay.url).netloc


async def listen_status(relay: InProcessRelay, name: str, token: str | None) -> int:
    headers = {"ServiceBusAuthorization": token} if token else {}
    request = upgrade_request(f"/$hc/{name}?sb-hc-action=listen", host_of(relay), headers)
    return (await exchange(relay.url, request)).status


async def exists(relay: InProcessRelay, name: str) -> bool:
    """Ask the management API (as an operator would) whether the entity exists."""
    request = http_request(
        "GET",
        f"/$mgmt/v1/hybridconnections/{quote(name)}",
        host_of(relay),
        {"Authorization": make_token(f"http://{host_of(relay)}/")},
    )
    answer = await exchange(relay.http_url, request)
    assert answer.status in (200, 404), answer
    return answer.status == 200


async def test_anonymous_and_unauthenticated_listens_create_nothing(relay: InProcessRelay) -> None:
    """Peer listens on new names with no token / a forged one / a rule it lacks: 401, no entity."""
    host = host_of(relay)
    attempts = {
        "squat-anon": None,
        "squat-forged": make_token(f"http://{host}/", key="not-the-key-0123456789abcdef012"),
        "squat-hc-rule": make_token(f"http://{host}/", "listen-only", LISTEN_KEY),
    }
    for name, token in attempts.items():
        assert await listen_status(relay, name, token) == 401, name
        assert not await exists(relay, name), name


async def test_a_token_scoped_elsewhere_creates_nothing(relay: InProcessRelay) -> None:
    """Peer listens on a new name with a root token scoped to another entity: 403, no entity."""
    token = make_token(f"http://{host_of(relay)}/echo")
    assert await listen_status(relay, "squat-scoped", token) == 403
    assert not await exists(relay, "squat-scoped")


@pytest.mark.parametrize(
    ("name", "status"),
    [("echo/sub", 404), ("parent", 409), ("nested/path/deeper", 404)],
)
async def test_listens_never_create_an_entity_inside_or_above_another(
    relay: InProcessRelay, name: str, status: int
) -> None:
    """Manage-token holder listens on echo/sub (or parent of parent/child): refused, no entity."""
    token = make_token(f"http://{host_of(relay)}/")
    assert await listen_status(relay, name, token) == status
    assert not await exists(relay, name)


async def test_an_authorized_listen_still_auto_creates(relay: InProcessRelay) -> None:
    """Listener with a namespace Listen token on a fresh name: 101 and the entity exists."""
    token = make_token(f"http://{host_of(relay)}/fresh-1")
    assert await listen_status(relay, "fresh-1", token) == 101
    assert await exists(relay, "fresh-1")
