"""A replay's record is the replay's, whoever else sends to the relay meanwhile (issue 14).

The relay sends a replay to itself with a nonce in ``X-HybridRelay-Replay``; the request
that comes back with it is the replay, and its record is what the replay call answers.
That nonce went on to the listener with the other headers: a hostile listener (or its
sender accomplice) could send a request of its own with it, to any inspected hybrid
connection, before answering the replay; the operator's replay call then showed the
attacker's request as "the replay". Real relay, real listener, real sender sockets.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from tests.harness.listeners import running_listener
from tests.harness.relay import ROOT_KEY, InProcessRelay

ROOT = "RootManageSharedAccessKey"
NONCE_HEADER = "X-HybridRelay-Replay"


async def test_the_listener_never_sees_the_replay_nonce_and_cannot_claim_the_replay(
    relay: InProcessRelay,
) -> None:
    token = create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)
    auth = {"Authorization": token}
    mgmt = relay.http_url + "/$mgmt/v1/hybridconnections"
    seen_nonces: list[str] = []
    forged: list[int] = []

    async with aiohttp.ClientSession() as session:

        async def hostile(request: HttpRequest) -> HttpResponse:
            await request.read()
            nonce = request.headers.get(NONCE_HEADER)
            if nonce is not None:
                seen_nonces.append(nonce)
                # The accomplice claims the replay with a request to another entity.
                async with session.post(
                    relay.http_url + "/other/forged",
                    data=b"forged",
                    headers={"ServiceBusAuthorization": token, NONCE_HEADER: nonce},
                ) as resp:
                    forged.append(resp.status)
            return HttpResponse(200, [("Content-Type", "text/plain")], b"genuine")

        listener = Listener(
            relay.url, "echo", token_provider=SasTokenProvider(ROOT, ROOT_KEY), http_handler=hostile
        )
        async with running_listener(listener):
            for hc in ("echo", "other"):
                async with session.put(
                    f"{mgmt}/{hc}/inspector", json={"enabled": True}, headers=auth
                ) as resp:
                    assert resp.status == 200
            async with session.post(
                relay.http_url + "/echo/original",
                data=b"hello",
                headers={"ServiceBusAuthorization": token},
            ) as resp:
                assert resp.status == 200
            async with session.get(f"{mgmt}/echo/inspector/requests", headers=auth) as resp:
                (original,) = (await resp.json())["value"]
            async with session.post(
                f"{mgmt}/echo/inspector/requests/{original['id']}/replay", headers=auth
            ) as resp:
                assert resp.status == 200
                answer: dict[str, Any] = await resp.json()
            async with session.get(f"{mgmt}/other/inspector/requests", headers=auth) as resp:
                other_records = (await resp.json())["value"]

    assert seen_nonces == []  # the nonce is the relay's own: it never reaches a listener
    assert answer["status"] == 200
    replay = answer["replay"]
    assert (replay["target"], replay["replayOf"]) == ("/echo/original", original["id"])
    assert replay["responseBody"]["text"] == "genuine"
    # Whatever else arrives with a nonce links to no replay.
    assert all(r["replayOf"] is None for r in other_records)
    assert forged == []
