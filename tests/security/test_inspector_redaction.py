"""What a sender puts in a request must not leave a SAS signature in the inspector's
record, however it is spelled (issue 14).

The inspector redacts the relay's own credential fields by name, and any ``sig=`` it
finds elsewhere (a token forwarded in an application header, a SAS URL in a query or a
body). The percent-encoded forms right after another escape (``SharedAccessSignature%20
sig%3D...``: the token of a URL's query, with the signature first) and twice-encoded
ones slipped through. Real relay, real listener, a real sender over a raw socket.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import aiohttp
from yarl import URL

from hybridrelay.listener import HttpRequest, HttpResponse, Listener
from hybridrelay.protocol.sas import SasTokenProvider, create_sas_token
from tests.harness.listeners import running_listener
from tests.harness.relay import ROOT_KEY, InProcessRelay

ROOT = "RootManageSharedAccessKey"


def secret(n: int) -> str:
    return f"SeCrEt{n}xyz"


async def test_no_spelling_of_a_signature_reaches_the_record(relay: InProcessRelay) -> None:
    token = create_sas_token(relay.http_url + "/", ROOT, ROOT_KEY, int(time.time()) + 600)
    auth = {"Authorization": token}
    mgmt = relay.http_url + "/$mgmt/v1/hybridconnections/echo/inspector"

    async def app(request: HttpRequest) -> HttpResponse:
        await request.read()
        return HttpResponse(200, [("Content-Type", "text/plain")], b"ok")

    query = "&".join(
        [
            f"a=SharedAccessSignature%20sig%3D{secret(1)}%26se%3D1",  # signature first
            f"b=SharedAccessSignature%20sig={secret(2)}",
            f"c=https%253A%252F%252Fx%252F%253Fsv%253D1%2526sig%253D{secret(3)}",  # twice
            "SB-HC-TOKEN=" + quote(token, safe=""),  # the relay reads it whatever its case
        ]
    )
    headers = [
        ("ServiceBusAuthorization", token),
        ("X-Forwarded-Token", f"SharedAccessSignature%20sig%3D{secret(5)}%26se%3D1"),
        ("X-Link", f"https://x/?sv=1&sig={secret(6)}"),
        ("x-servicebusauthorization-copy", f"SharedAccessSignature%2Bsig%253D{secret(7)}"),
        ("AUTHORIZATION", secret(8)),
        ("authorization", secret(9)),  # repeated, in another case
        ("Cookie", f"a={secret(10)}"),
        ("cookie", f"b={secret(11)}"),
    ]
    body = f'{{"url": "x?t=SharedAccessSignature%20sig%3D{secret(12)}%26se%3D1"}}'.encode()
    listener = Listener(
        relay.url, "echo", token_provider=SasTokenProvider(ROOT, ROOT_KEY), http_handler=app
    )
    async with running_listener(listener), aiohttp.ClientSession() as session:
        async with session.put(mgmt, json={"enabled": True}, headers=auth) as resp:
            assert resp.status == 200
        async with session.post(
            URL(f"{relay.http_url}/echo/x?{query}", encoded=True), data=body, headers=headers
        ) as resp:
            assert resp.status == 200
        async with session.get(mgmt + "/requests", headers=auth) as resp:
            (summary,) = (await resp.json())["value"]
        async with session.get(f"{mgmt}/requests/{summary['id']}", headers=auth) as resp:
            record = await resp.json()

    shown = json.dumps(record)
    leaked = [n for n in range(1, 13) if secret(n).lower() in shown.lower()]
    assert leaked == [], shown
    signature = token.split("sig=")[1].split("&")[0]
    assert signature not in shown
    assert quote(signature, safe="") not in shown
    assert record["requestBody"]["text"].startswith('{"url": "x?t=SharedAccessSignature')
