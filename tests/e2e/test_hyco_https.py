"""Microsoft's hyco-https 1.4.5 listener (unchanged) behind the relay running as a real subprocess.

The listener is ``tests/e2e/node/hyco_https_listener.js`` on hybrid connection ``hyco``
(its header comment describes the app: GET echoes ``{method, url, headers}``, POST/PUT echo
the body with ``x-body-sha256``, ``/status/NNN``, ``/big/N`` in 16 KiB writes, HEAD).
Every case is sent by two HTTP senders: an aiohttp ``ClientSession`` and ``curl``. Sender
tokens are signed for the bare entity URL and travel in ``ServiceBusAuthorization`` or in
``?sb-hc-token=`` (HC §2.7). hyco-https answers bodies over 64 KiB through a rendezvous
socket and gets request bodies over 64 KiB (or chunked) as rendezvous-only requests
(HC §4, Part 2 §5.2), so the large cases exercise both directions of the rendezvous path.
Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict
from tests.harness.node import (
    NodeProcess,
    NodeSetupError,
    ensure_node_modules,
    hyco_uri,
    node_available,
    pattern_bytes,
)
from tests.harness.peers import token_for
from tests.harness.relay import ROOT_KEY, RelayProcess
from tests.harness.timing import seconds
from tests.harness.tls import TlsFiles
from yarl import URL

pytestmark = [pytest.mark.node, pytest.mark.e2e]

ROOT = "RootManageSharedAccessKey"
HYCO = "hyco"
CURL = "/usr/bin/curl"
ONE_MIB = 1 << 20
FIVE_MIB = 5 << 20

ProcessFactory = Callable[..., Awaitable[RelayProcess]]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """hyco-https installed; a missing toolchain is a failure, never a silent skip."""
    if not node_available():
        pytest.fail(
            "node (>= 18) and npm must be on PATH to run the hyco-https compatibility tests "
            "(install Node.js; deselect explicitly with -m 'not node' if you really mean to)",
            pytrace=False,
        )
    try:
        return ensure_node_modules()
    except NodeSetupError as exc:
        pytest.fail(f"installing tests/e2e/node dependencies failed:\n{exc}", pytrace=False)


# -- senders -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> dict[str, Any]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class Sender(Protocol):
    name: str

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        chunked: bool = False,
    ) -> Reply: ...


async def _pieces(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


@dataclass
class AiohttpSender:
    session: aiohttp.ClientSession
    base: str  # http(s)://host:port
    ssl_context: ssl.SSLContext | None = None
    name: str = "aiohttp"

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        chunked: bool = False,
    ) -> Reply:
        data: Any = body
        if chunked and body is not None:
            data = _pieces(body, 10_000)  # no length known: Transfer-Encoding: chunked
        async with asyncio.timeout(seconds(30)):
            async with self.session.request(
                method,
                URL(self.base + target, encoded=True),
                headers=headers,
                data=data,
                ssl=self.ssl_context or True,
            ) as resp:
                content = await resp.read()
                return Reply(resp.status, resp.reason or "", CIMultiDict(resp.headers), content)


def parse_curl_output(out: bytes) -> Reply:
    """``curl -i`` output: skip interim 1xx heads, then status line, headers, body."""
    while True:
        head, sep, rest = out.partition(b"\r\n\r\n")
        assert sep, f"no header block in curl output: {out[:300]!r}"
        lines = head.decode("latin1").split("\r\n")
        _version, code, *reason = lines[0].split(" ", 2)
        if 100 <= int(code) < 200:
            out = rest
            continue
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
        return Reply(int(code), reason[0] if reason else "", headers, rest)


async def run_curl(args: list[str], stdin: bytes | None = None, timeout: float = 30.0) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        str(int(seconds(timeout))),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(seconds(timeout + 5)):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"curl {args!r} failed ({proc.returncode}): {err.decode()}"
    return out


@dataclass
class CurlSender:
    base: str
    workdir: Path
    cacert: Path | None = None
    name: str = "curl"
    stdin_upload: bool = False  # chunked bodies via ``-T -`` (PUT from stdin) instead

    def _common(self, headers: dict[str, str] | None) -> list[str]:
        args = ["--cacert", str(self.cacert)] if self.cacert else []
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        return args

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        chunked: bool = False,
    ) -> Reply:
        args = ["-i", *self._common(headers)]
        stdin = None
        if method == "HEAD":
            args.append("-I")  # -X HEAD would wait for a body
        elif chunked and self.stdin_upload:
            assert body is not None
            assert method == "PUT", "curl -T uploads with PUT"
            args += ["-T", "-"]  # from stdin: curl cannot know the length, sends chunked
            stdin = body
        else:
            if body is not None:
                path = self.workdir / f"body-{random.getrandbits(32):08x}"
                path.write_bytes(body)
                args += ["--data-binary", f"@{path}"]
                if chunked:
                    args += ["-H", "Transfer-Encoding: chunked"]
            if method not in ("GET", "POST") or (method == "POST" and body is None):
                args += ["-X", method]
        args.append(self.base + target)
        return parse_curl_output(await run_curl(args, stdin))


# -- setup -------------------------------------------------------------------------------


@dataclass
class Hyco:
    relay: RelayProcess
    base: str  # http(s)://host:port as senders see it
    listener: NodeProcess
    ssl_context: ssl.SSLContext | None
    cacert: Path | None

    def token(self) -> str:
        return token_for(f"{self.base}/{HYCO}")  # the bare entity covers any suffix

    def auth(self) -> dict[str, str]:
        return {"ServiceBusAuthorization": self.token()}

    def senders(self, session: aiohttp.ClientSession, workdir: Path) -> list[Sender]:
        return [
            AiohttpSender(session, self.base, self.ssl_context),
            CurlSender(self.base, workdir, self.cacert),
        ]

    async def seen(self) -> dict[str, Any]:
        """What the hyco-https app got for the next request (its ``request`` event)."""
        return await self.listener.next_event("request", timeout=seconds(10))


@contextlib.asynccontextmanager
async def hyco_stack(factory: ProcessFactory, tls: TlsFiles | None) -> AsyncIterator[Hyco]:
    relay = await factory(tls=tls)
    port = urlsplit(relay.url).port
    assert port is not None, relay.url
    if tls is None:
        ws_base, base, ctx, env = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", None, None
    else:
        ws_base, base = f"wss://localhost:{port}", f"https://localhost:{port}"
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        env = str(tls.ca_cert)
    listener = NodeProcess(
        "hyco_https_listener.js",
        {"uri": hyco_uri(ws_base, HYCO, "listen"), "keyName": ROOT, "key": ROOT_KEY},
        env={"NODE_EXTRA_CA_CERTS": env},
    )
    async with listener:
        await listener.next_event("listening", timeout=seconds(15))
        yield Hyco(relay, base, listener, ctx, tls.ca_cert if tls else None)


@pytest.fixture
async def hyco(relay_process_factory: ProcessFactory, node_modules: Path) -> AsyncIterator[Hyco]:
    async with hyco_stack(relay_process_factory, None) as stack:
        yield stack


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def assert_via(reply: Reply) -> None:
    via = reply.headers.get("Via")
    assert via, f"no Via on a listener response: {dict(reply.headers)}"
    assert via.startswith("1.1 "), via


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tests -------------------------------------------------------------------------------


async def test_get_with_suffix_query_and_headers_tokens_stripped(
    hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = hyco.token()
    for sender in hyco.senders(session, tmp_path):
        for carrier in ("header", "query"):
            marker = f"{sender.name}-{carrier}"
            headers = {"X-Custom": marker}
            target = f"/{HYCO}/sub?x=1"
            if carrier == "header":
                headers["ServiceBusAuthorization"] = token
            else:
                target = f"/{HYCO}/sub?sb-hc-token={quote(token, safe='')}&x=1"
            reply = await sender.request("GET", target, headers=headers)
            assert reply.status == 200, (marker, reply)
            assert_via(reply)
            echoed = reply.json()
            seen = await hyco.seen()
            for view in (echoed, seen):
                assert view["method"] == "GET"
                assert view["url"] == f"/{HYCO}/sub?x=1", marker
                assert view["headers"]["x-custom"] == marker
                assert "servicebusauthorization" not in view["headers"]
                assert "authorization" not in view["headers"]
                assert "host" not in view["headers"]  # connection-level (HC §2.10)
                assert "connection" not in view["headers"]
                assert "sb-hc-token" not in view["url"]


async def test_status_codes_and_reasons_pass_through(
    hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    reasons = {201: "Created", 404: "Not Found", 500: "Internal Server Error"}
    for sender in hyco.senders(session, tmp_path):
        for status, reason in reasons.items():
            reply = await sender.request("GET", f"/{HYCO}/status/{status}", headers=hyco.auth())
            assert (reply.status, reply.reason) == (status, reason), sender.name
            assert reply.body == f"status {status}".encode()
            assert reply.headers["Content-Type"] == "text/plain"
            assert_via(reply)
            await hyco.seen()


async def test_head(hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    for sender in hyco.senders(session, tmp_path):
        reply = await sender.request("HEAD", f"/{HYCO}/big/40000", headers=hyco.auth())
        assert reply.status == 200, sender.name
        assert reply.body == b""
        assert reply.headers["x-body-length"] == "40000"
        assert reply.headers["x-body-sha256"] == sha256(pattern_bytes(40000))
        assert_via(reply)
        assert (await hyco.seen())["method"] == "HEAD"
        reply = await sender.request("HEAD", f"/{HYCO}/doc", headers=hyco.auth())
        assert (reply.status, reply.body) == (200, b"")
        assert_via(reply)
        await hyco.seen()


async def test_post_small_and_1_mib_sha256(
    hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rng = random.Random(11)
    # 1 MiB goes rendezvous-only to the listener and comes back over a rendezvous too.
    bodies = [b"hello, relay", rng.randbytes(ONE_MIB)]
    for sender in hyco.senders(session, tmp_path):
        for body in bodies:
            headers = hyco.auth() | {"Content-Type": "application/octet-stream"}
            reply = await sender.request("POST", f"/{HYCO}/echo", headers=headers, body=body)
            assert reply.status == 200, (sender.name, len(body), reply.body[:200])
            assert reply.headers["x-body-length"] == str(len(body))
            assert reply.headers["x-body-sha256"] == sha256(body)
            assert len(reply.body) == len(body)
            assert sha256(reply.body) == sha256(body)
            assert_via(reply)
            seen = await hyco.seen()
            assert (seen["method"], seen["bodyLength"]) == ("POST", len(body))


async def test_40_kib_response_written_in_several_writes(
    hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    size = 40 * 1024  # three 16 KiB writes, still small enough for the control channel
    for sender in hyco.senders(session, tmp_path):
        reply = await sender.request("GET", f"/{HYCO}/big/{size}", headers=hyco.auth())
        assert reply.status == 200, sender.name
        assert reply.body == pattern_bytes(size)
        assert reply.headers["x-body-sha256"] == sha256(reply.body)
        assert_via(reply)
        await hyco.seen()


async def test_5_mib_response_over_rendezvous(
    hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    expected = sha256(pattern_bytes(FIVE_MIB))
    for sender in hyco.senders(session, tmp_path):
        reply = await sender.request("GET", f"/{HYCO}/big/{FIVE_MIB}", headers=hyco.auth())
        assert reply.status == 200, sender.name
        assert len(reply.body) == FIVE_MIB
        assert sha256(reply.body) == expected
        assert reply.headers["x-body-sha256"] == expected
        assert_via(reply)
        await hyco.seen()


async def test_chunked_uploads(hyco: Hyco, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    rng = random.Random(5)
    senders: list[Sender] = [
        AiohttpSender(session, hyco.base),
        CurlSender(hyco.base, tmp_path),
        CurlSender(hyco.base, tmp_path, stdin_upload=True, name="curl -T -"),
    ]
    for sender in senders:
        for size in (3000, 300 * 1024):
            body = rng.randbytes(size)
            method = "PUT" if isinstance(sender, CurlSender) and sender.stdin_upload else "POST"
            reply = await sender.request(
                method, f"/{HYCO}/up", headers=hyco.auth(), body=body, chunked=True
            )
            assert reply.status == 200, (sender.name, size, reply.body[:200])
            assert reply.headers["x-body-sha256"] == sha256(body), sender.name
            assert reply.body == body
            assert_via(reply)
            seen = await hyco.seen()
            assert (seen["method"], seen["bodyLength"]) == (method, size)
            assert "transfer-encoding" not in seen["headers"]


async def test_concurrent_mixed_requests_all_answered_correctly(
    hyco: Hyco, session: aiohttp.ClientSession
) -> None:
    # Inline bodies must stay adjacent to their headers on the shared control channel
    # (hyco-https has one pendingRequest slot), whatever else is in flight (HC §4).
    rng = random.Random(21)
    sender = AiohttpSender(session, hyco.base)
    auth = hyco.auth()

    async def one(i: int) -> None:
        kind = i % 5
        if kind == 0:
            body = rng.randbytes(rng.randrange(1, 60_000))
            reply = await sender.request("POST", f"/{HYCO}/p{i}", headers=auth, body=body)
            assert (reply.status, sha256(reply.body)) == (200, sha256(body)), i
        elif kind == 1:
            body = rng.randbytes(200_000)
            reply = await sender.request("POST", f"/{HYCO}/p{i}", headers=auth, body=body)
            assert (reply.status, sha256(reply.body)) == (200, sha256(body)), i
        elif kind == 2:
            reply = await sender.request("GET", f"/{HYCO}/slow/200?i={i}", headers=auth)
            assert (reply.status, reply.json()["url"]) == (200, f"/{HYCO}/slow/200?i={i}")
        elif kind == 3:
            reply = await sender.request("GET", f"/{HYCO}/big/{100_000 + i}", headers=auth)
            assert (reply.status, reply.body) == (200, pattern_bytes(100_000 + i)), i
        else:
            reply = await sender.request("GET", f"/{HYCO}/g?i={i}", headers=auth)
            assert (reply.status, reply.json()["url"]) == (200, f"/{HYCO}/g?i={i}")
        assert_via(reply)

    async with asyncio.timeout(seconds(30)):
        await asyncio.gather(*(one(i) for i in range(30)))
    for _ in range(30):
        await hyco.seen()


async def test_keep_alive_many_requests_on_one_connection(hyco: Hyco, tmp_path: Path) -> None:
    created: list[object] = []
    reused: list[object] = []

    async def on_create(*_: object) -> None:
        created.append(None)

    async def on_reuse(*_: object) -> None:
        reused.append(None)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(limit=1)
    blob = random.Random(3).randbytes(ONE_MIB)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        sender = AiohttpSender(session, hyco.base)
        auth = hyco.auth()
        steps = [
            ("GET", f"/{HYCO}/a?n=1", None, 200),
            ("POST", f"/{HYCO}/echo", b"small", 200),
            ("GET", f"/{HYCO}/big/{200 * 1024}", None, 200),
            ("GET", f"/{HYCO}/status/404", None, 404),
            ("POST", f"/{HYCO}/echo", blob, 200),
            ("GET", f"/{HYCO}/b?n=2", None, 200),
            # Last: aiohttp's client does not reuse a connection after a HEAD answer without
            # Content-Length (hyco-https never sends one); the relay itself keeps it open.
            ("HEAD", f"/{HYCO}/big/10", None, 200),
        ]
        for method, target, body, status in steps:
            reply = await sender.request(method, target, headers=auth, body=body)
            assert reply.status == status, (method, target, reply.body[:200])
            if body is not None:
                assert reply.body == body
            assert_via(reply)
            await hyco.seen()
    assert len(created) == 1, f"{len(created)} connections for {len(steps)} requests"
    assert len(reused) == len(steps) - 1

    # curl: several URLs in one run share its connection too.
    urls = [f"{hyco.base}/{HYCO}/c{i}" for i in range(3)]
    args = ["-H", f"ServiceBusAuthorization: {hyco.token()}"]
    for url in urls:
        args += ["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n", url]
    out = (await run_curl(args)).decode().split()
    assert out == ["200", "1", "200", "0", "200", "0"], out
    for _ in urls:
        await hyco.seen()


async def test_tls_get_and_1_mib_post(
    relay_process_factory: ProcessFactory,
    node_modules: Path,
    tls_files: TlsFiles,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    body = random.Random(9).randbytes(ONE_MIB)
    async with hyco_stack(relay_process_factory, tls_files) as stack:
        assert stack.base.startswith("https://localhost:")
        for sender in stack.senders(session, tmp_path):
            reply = await sender.request("GET", f"/{HYCO}/tls?x=1", headers=stack.auth())
            assert reply.status == 200, sender.name
            assert reply.json()["url"] == f"/{HYCO}/tls?x=1"
            assert_via(reply)
            await stack.seen()
            reply = await sender.request("POST", f"/{HYCO}/echo", headers=stack.auth(), body=body)
            assert reply.status == 200, sender.name
            assert reply.headers["x-body-sha256"] == sha256(body)
            assert sha256(reply.body) == sha256(body)
            assert_via(reply)
            await stack.seen()
