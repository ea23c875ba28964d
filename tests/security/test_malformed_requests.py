"""Malformed HTTP from anonymous peers (issue 11, robustness).

Every malformed request gets a well-formed, body-less 400 that closes the connection
(right for HEAD as well) and costs at most one info line: never aiohttp's error-level
traceback (about 1.5 KB per request, a disk-filling lever). Both WebSocket paths
refuse handshake headers with non-ASCII bytes with 400 through the one handshake
parser, never a 500.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ProcessFactory
from tests.harness.http_peers import HttpListener
from tests.harness.metrics import metric_value
from tests.harness.peers import RawListener, connect_url, listen_url, token_for
from tests.harness.raw_http import RawResponse, connect_raw, read_response
from tests.harness.relay import InProcessRelay, RelayProcess
from tests.harness.timing import seconds
from tests.security.conftest import assert_quiet

OPEN_HC = """
[[hybrid_connections]]
name = "open-a"
requires_client_authorization = false
"""

# What a fuzzer or a scanner sends; each one is refused by aiohttp's parser.
MALFORMED: dict[str, bytes] = {
    "bad_request_line": b"GARBAGE\r\n\r\n",
    "extra_request_line_token": b"GET / HTTP/1.1 extra\r\nHost: relay\r\n\r\n",
    "unknown_http_version": b"GET / HTTP/9.9\r\nHost: relay\r\n\r\n",
    "nul_in_target": b"GET /a\x00b HTTP/1.1\r\nHost: relay\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost: relay\r\nBad Header\r\n\r\n",
    "control_byte_in_value": b"GET / HTTP/1.1\r\nHost: relay\r\nX: a\x01b\r\n\r\n",
    "nul_in_name": b"GET / HTTP/1.1\r\nHost: relay\r\nX\x00Y: a\r\n\r\n",
    "non_ascii_name": b"GET / HTTP/1.1\r\nHost: relay\r\nX\xffY: a\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: relay\r\nX : a\r\n\r\n",
    "obsolete_line_folding": b"GET / HTTP/1.1\r\nHost: relay\r\nX: a\r\n  folded\r\n\r\n",
    "bare_lf_line_endings": b"GET / HTTP/1.1\nHost: relay\n\n",
    "oversize_header": b"GET / HTTP/1.1\r\nHost: relay\r\nX: " + b"a" * 10_000 + b"\r\n\r\n",
    "oversize_target": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n",
    "too_many_headers": b"GET / HTTP/1.1\r\nHost: relay\r\n"
    + b"".join(b"X-%d: a\r\n" % i for i in range(200))
    + b"\r\n",
    "bad_chunk_size": b"POST /open-a HTTP/1.1\r\nHost: relay\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "conflicting_content_lengths": b"POST /open-a HTTP/1.1\r\nHost: relay\r\n"
    b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "non_numeric_content_length": b"POST /open-a HTTP/1.1\r\nHost: relay\r\n"
    b"Content-Length: abc\r\n\r\n",
    "content_length_and_chunked": b"POST /open-a HTTP/1.1\r\nHost: relay\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "unknown_transfer_coding": b"POST /open-a HTTP/1.1\r\nHost: relay\r\n"
    b"Transfer-Encoding: gzip, chunked, foo\r\n\r\n",
    "head_with_bad_header": b"HEAD / HTTP/1.1\r\nHost: relay\r\nBad Header\r\n\r\n",
}


async def _exchange(relay: RelayProcess, data: bytes, *, head: bool = False) -> RawResponse:
    """Send ``data`` on a fresh connection; the one response, after which it must close."""
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(data)
        async with asyncio.timeout(seconds(10)):
            response = await read_response(reader, head_request=head)
            assert await reader.read() == b"", "bytes after the response, or still open"
        return response
    finally:
        writer.close()


async def test_malformed_requests_get_a_plain_400_and_no_error_log(
    relay_process_factory: ProcessFactory,
) -> None:
    """20 kinds of malformed request: a body-less 400 each, connection closed, no error logged."""
    relay = await relay_process_factory(extra=OPEN_HC)
    listener = await HttpListener(relay.url, "open-a").start()
    try:
        for name, data in MALFORMED.items():
            # Read as if answering a HEAD: a well-formed 400 here has no body at all.
            response = await _exchange(relay, data, head=True)
            assert response.status == 400, name
            assert response.header("Content-Length") == "0", name
            assert response.header("Transfer-Encoding") is None, name
        assert listener.requests.empty()
        malformed = await metric_value(
            relay.url, "hybridrelay_rejections_total", status="400", action="malformed"
        )
        assert malformed == len(MALFORMED)
    finally:
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


async def test_a_bad_chunk_after_the_head_is_the_senders_400(
    relay_process_factory: ProcessFactory,
) -> None:
    """A chunked HTTP-mode body turns malformed after the listener took the request: 400."""
    relay = await relay_process_factory(extra=OPEN_HC)
    listener = await HttpListener(relay.url, "open-a").start()
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(
            b"POST /open-a/x HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        async with asyncio.timeout(seconds(10)):
            request = await listener.next_request()
            assert not request.inline  # a chunked body is streamed over a rendezvous
            dial = asyncio.create_task(listener.fetch(request))
            writer.write(b"zz\r\n")  # not a chunk size
            response = await read_response(reader)
            await asyncio.wait({dial})  # the listener's socket is cut: the request is broken
        assert response.status == 400
    finally:
        writer.close()
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


async def test_head_refusals_carry_no_body(relay_process_factory: ProcessFactory) -> None:
    """HEAD with a malformed header, then a well-formed HEAD the relay refuses: heads only."""
    relay = await relay_process_factory()
    # aiohttp's parser refuses it: the head, Content-Length 0, then the connection's end.
    response = await _exchange(relay, MALFORMED["head_with_bad_header"], head=True)
    assert response.status == 400
    assert response.header("Content-Length") == "0"

    # The relay refuses it (no such hybrid connection): whatever Content-Length says, no
    # body follows, so the next response on the same connection starts right after.
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(
            b"HEAD /no-such-entity HTTP/1.1\r\nHost: relay\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(seconds(10)):
            refused = await read_response(reader, head_request=True)
            following = await read_response(reader)
            assert await reader.read() == b""
    finally:
        writer.close()
    assert refused.status == 404
    assert following.status == 200
    assert following.body.startswith(b"{")
    await relay.stop()
    assert_quiet(relay)


def _upgrade(path_and_query: str, token: str, *, version: bytes, key: bytes) -> bytes:
    return (
        f"GET {path_and_query} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nServiceBusAuthorization: {token}\r\n".encode()
        + b"Sec-WebSocket-Version: "
        + version
        + b"\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )


@pytest.mark.parametrize("action", ["listen", "connect"])
@pytest.mark.parametrize(
    ("version", "key"),
    [
        (b"\xff13", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"13", "ÄÖÜäöüßÄÖÜäöüßÄÖÜäöüß==".encode()),
        (b"13", "ÄÖÜäöüßÄÖÜäöüßÄÖÜäöüß==".encode("latin-1")),
    ],
    ids=["version_0xff", "key_utf8_letters", "key_latin1_letters"],
)
async def test_non_ascii_handshake_headers_are_refused_with_400(
    relay_process_factory: ProcessFactory, action: str, version: bytes, key: bytes
) -> None:
    """A listen or connect handshake with non-ASCII bytes in its WebSocket headers: 400, no 500."""
    relay = await relay_process_factory()
    url = listen_url(relay.url, "hc-ws") if action == "listen" else connect_url(relay.url, "hc-ws")
    path_and_query = url[url.index("/$hc/") :]
    reader, writer = await connect_raw(relay.url)
    try:
        writer.write(_upgrade(path_and_query, token_for(url), version=version, key=key))
        async with asyncio.timeout(seconds(10)):
            response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 400
    await relay.stop()
    assert_quiet(relay)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
async def test_other_http_versions_are_answered_505_in_http_1(
    relay_process_factory: ProcessFactory, version: str
) -> None:
    """A request line naming HTTP/2.0 or 0.9: a 505 an HTTP/1 client reads, nothing relayed."""
    relay = await relay_process_factory(extra=OPEN_HC)
    listener = await HttpListener(relay.url, "open-a").start()
    try:
        request = f"GET /open-a/x {version}\r\nHost: relay\r\n\r\n".encode()
        response = await _exchange(relay, request, head=True)
        assert (response.version, response.status) in {("HTTP/1.0", 505), ("HTTP/1.1", 505)}
        assert listener.requests.empty()
    finally:
        await listener.stop()
    await relay.stop()
    assert_quiet(relay)


@pytest.mark.parametrize("offer", ["a b", "mqtt, (x)", 'x"y', "ä"])
async def test_a_subprotocol_offer_that_is_not_a_token_is_refused_before_any_listener(
    relay: InProcessRelay, offer: str
) -> None:
    """Sender offers a Sec-WebSocket-Protocol that is no token: 400, the listener sees nothing."""
    control = await RawListener(relay.url, "echo", behaviour=None).start()
    try:
        url = connect_url(relay.url, "echo")
        path_and_query = url[url.index("/$hc/") :]
        reader, writer = await connect_raw(relay.url)
        try:
            writer.write(
                _upgrade(
                    path_and_query, token_for(url), version=b"13", key=b"dGhlIHNhbXBsZSBub25jZQ=="
                )[:-2]
                + b"Sec-WebSocket-Protocol: "
                + offer.encode()
                + b"\r\n\r\n"
            )
            async with asyncio.timeout(seconds(10)):
                response = await read_response(reader)
        finally:
            writer.close()
        assert response.status == 400
        assert control.accepts.empty()
    finally:
        await control.stop()
