"""The client side of the WebSocket opening handshake, sans-I/O (RFC 6455 §4.1).

:class:`ClientHandshake` builds the upgrade request and reads the response as it
arrives: a 101 that passes the client's checks gives :class:`Accepted`, whose
``leftover`` (frames the server sent right after its head) goes to a
:class:`~hybridrelay.protocol.connection.Connection`; any other status raises
:class:`~hybridrelay.errors.HandshakeError` with the status, the headers and the
start of the body, which the listener and the client report (401, 403, 404, 410...).

Bounded: the response head may be ``max_head`` bytes, the body of a refusal is kept up
to ``max_error_body`` bytes. The glue bounds the time: when the body of a refusal stops
short (its wait timed out), :meth:`ClientHandshake.refusal` gives the error with what
came. :func:`parse_ws_url` turns a ``ws://`` / ``wss://`` URL into what the glue
connects to and the Host header and request target the handshake sends.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn
from urllib.parse import quote, urlsplit

from hybridrelay import errors
from hybridrelay.protocol.codes import CloseCode

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_RESPONSE_HEAD",
    "Accepted",
    "ClientHandshake",
    "WsUrl",
    "accept_value",
    "parse_ws_url",
]

MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_ERROR_BODY: Final = 4 * 1024

_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
# Headers the handshake writes itself; a caller must not override them.
_RESERVED_HEADERS: Final = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
_TOKEN_CHARS: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")

# Everything printable in ASCII except the space stays as it is in the request target
# (a literal ``$`` in ``/$hc/``, existing %-escapes); the rest is %-encoded as UTF-8.
_TARGET_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))

_HEAD: Final = 0  # reading the response head
_BODY: Final = 1  # a refusal: reading the start of its body
_DONE: Final = 2


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept a server answers ``key`` with."""
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True)
class WsUrl:
    """A parsed ``ws://`` / ``wss://`` URL."""

    secure: bool
    host: str  # for connecting and TLS SNI (IDNA-encoded)
    port: int
    resource: str  # request target: path + query, as given, escaped where needed
    host_header: str
    log_url: str  # scheme://host:port/path, never the query (it may carry sb-hc-token)


def _quote_target(text: str) -> str:
    # Printable ASCII without spaces is all in _TARGET_SAFE: quote() would return it as is.
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return quote(text, safe=_TARGET_SAFE)


def parse_ws_url(url: str) -> WsUrl:
    """Parse a WebSocket URL; path and query are kept as given (a literal ``$`` stays),
    only spaces, controls and non-ASCII are %-encoded.

    Raises:
        InvalidAddressError: not a ws/wss URL with a host.
    """
    # Query strings change with every rendezvous address and senders reuse their URL:
    # the part before the query is parsed once. Anything unusual takes the full path.
    base, _, query = url.partition("?")
    if not query or "#" in url or not (query.isascii() and query.isprintable()) or " " in query:
        return _parse_full_url(url)
    target = _parse_base_url(base)
    return WsUrl(
        target.secure,
        target.host,
        target.port,
        f"{target.resource}?{query}",
        target.host_header,
        target.log_url,
    )


# A memo of a pure function (same URL, same answer), not state: bounded, shared safely.
@functools.lru_cache(maxsize=64)
def _parse_base_url(url: str) -> WsUrl:
    return _parse_full_url(url)


def _parse_full_url(url: str) -> WsUrl:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise errors.InvalidAddressError(f"invalid WebSocket URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise errors.InvalidAddressError(f"WebSocket URL scheme must be ws or wss, not {scheme!r}")
    host = parts.hostname
    if not host:
        raise errors.InvalidAddressError("WebSocket URL has no host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    if port is None:
        port = default_port
    host_literal = f"[{host}]" if ":" in host else host
    host_header = host_literal if port == default_port else f"{host_literal}:{port}"
    path = parts.path or "/"
    resource = _quote_target(path + ("?" + parts.query if parts.query else ""))
    log_url = f"{scheme}://{host_literal}:{port}{_quote_target(path)}"
    return WsUrl(secure, host, port, resource, host_header, log_url)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server switched protocols. Header names are in lower case."""

    subprotocol: str | None
    headers: Mapping[str, str] = field(repr=False)
    leftover: bytes = b""  # bytes after the head: the first frames, for the Connection


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


def _check_header(name: str, value: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"invalid header name {name!r}")
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"invalid value for header {name!r}")


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise errors.ProtocolError(f"malformed HTTP status line {status_line[:100]!r}")
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and last:  # obsolete line folding (RFC 9112 §5.2)
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise errors.ProtocolError(f"malformed HTTP header line {line[:100]!r}")
        last = name.lower()
        value = value.strip()
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    return status, reason, headers


def _dechunk(data: bytes) -> bytes:
    """Best effort: the chunks of a ``Transfer-Encoding: chunked`` body that arrived whole."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(data[pos:end].split(b";", 1)[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
        if pos > len(data):
            break
    return bytes(out)


class _KeySource:
    """Sec-WebSocket-Keys from 16 random bytes each (RFC 6455 §4.1), read 64 keys at a time.

    One getrandom() system call per 64 opening handshakes instead of one per handshake
    (a listener dials one per relayed connect); each byte comes from os.urandom and is
    used once.
    """

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[bytes] = []

    def reset(self) -> None:
        self._pool = []

    def __call__(self) -> str:
        if not self._pool:
            raw = os.urandom(16 * 64)
            self._pool = [raw[i : i + 16] for i in range(0, len(raw), 16)]
        return base64.b64encode(self._pool.pop()).decode("ascii")


_new_key = _KeySource()
# A forked child must not send the keys its parent will send too.
os.register_at_fork(after_in_child=_new_key.reset)


class ClientHandshake:
    """One opening handshake: :attr:`request` to write, then feed the response.

    Args:
        host: the Host header value (``host[:port]``, brackets around IPv6).
        resource: the request target, path and query, already escaped.
        subprotocols: offered in Sec-WebSocket-Protocol.
        headers: extra request headers; Host may be replaced, the WebSocket ones not.
        key: the Sec-WebSocket-Key (default: 16 random bytes, as §4.1 requires).
        max_head: bytes the response head may have (PayloadTooBigError beyond).
        max_error_body: bytes of a refusal's body kept for the error.

    Raises:
        ValueError: a header or subprotocol is not valid, or is reserved.
    """

    __slots__ = (
        "_body",
        "_buf",
        "_chunked",
        "_headers",
        "_max_error_body",
        "_max_head",
        "_phase",
        "_reason",
        "_status",
        "_subprotocols",
        "_want",
        "key",
        "request",
    )

    def __init__(
        self,
        host: str,
        resource: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        max_head: int = MAX_RESPONSE_HEAD,
        max_error_body: int = MAX_ERROR_BODY,
    ) -> None:
        self.key = key if key is not None else _new_key()
        self._subprotocols = tuple(subprotocols)
        self._max_head = max_head
        self._max_error_body = max_error_body
        self.request = self._build_request(host, resource, headers)
        self._phase = _HEAD
        self._buf = bytearray()
        self._status = 0
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._chunked = False
        self._want = 0

    def _build_request(self, host: str, resource: str, headers: Mapping[str, str] | None) -> bytes:
        _check_header("Host", host)
        if not resource or any(c in resource for c in " \r\n\x00"):
            raise ValueError(f"invalid request target {resource[:100]!r}")
        extra: list[tuple[str, str]] = []
        for name, value in (headers or {}).items():
            _check_header(name, value)
            lname = name.lower()
            if lname in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the WebSocket client itself")
            if lname == "host":
                host = value
            else:
                extra.append((name, value))
        lines = [
            f"GET {resource} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self._subprotocols:
            for proto in self._subprotocols:
                if not proto or not set(proto) <= _TOKEN_CHARS:
                    raise ValueError(f"invalid subprotocol {proto!r}")
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(self._subprotocols)}")
        lines.extend(f"{name}: {value}" for name, value in extra)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    @property
    def refused(self) -> bool:
        """The head said another status than 101; its body is being read."""
        return self._phase == _BODY

    def receive_data(self, data: bytes) -> Accepted | None:
        """Feed response bytes; None while more are needed.

        Raises:
            HandshakeError: a refusal (non-101), once its body is in or reached its cap.
            PayloadTooBigError: the head is over ``max_head`` bytes.
            ProtocolError: the head is malformed or the 101 fails a check of §4.1.
        """
        if self._phase == _BODY:
            self._body += data
            self._check_body_done()
            return None
        if self._phase == _DONE:
            raise RuntimeError("the handshake is over")
        start = max(0, len(self._buf) - 3)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", start)
        if end < 0 or end + 4 > self._max_head:
            if len(self._buf) > self._max_head:
                self._phase = _DONE
                raise errors.PayloadTooBigError(f"HTTP response head over {_size(self._max_head)}")
            return None
        head = bytes(self._buf[: end + 4])
        rest = bytes(self._buf[end + 4 :])
        self._buf = bytearray()
        try:
            status, reason, headers = _parse_head(head)
        except errors.ProtocolError:
            self._phase = _DONE
            raise
        if status == 101:
            self._phase = _DONE
            return Accepted(self._check_accept(headers), headers, rest)
        self._status, self._reason, self._headers = status, reason, headers
        self._chunked = "chunked" in _tokens(headers.get("transfer-encoding", ""))
        length = headers.get("content-length", "").strip()
        self._want = self._max_error_body
        if not self._chunked and length.isdigit():
            self._want = min(int(length), self._max_error_body)
        self._phase = _BODY
        self._body += rest
        self._check_body_done()
        return None

    def receive_eof(self) -> NoReturn:
        """The connection ended: the refusal with what came of its body, or 1006."""
        if self._phase == _BODY:
            raise self.refusal()
        self._phase = _DONE
        raise errors.ConnectionClosedError(
            CloseCode.ABNORMAL, "connection closed during the opening handshake"
        )

    def refusal(self) -> errors.HandshakeError:
        """The error for a refusal whose body is not all in (the glue's wait ended)."""
        if self._phase != _BODY:
            raise RuntimeError("no refusal was received")
        self._phase = _DONE
        body = bytes(self._body[: self._want])
        if self._chunked:
            body = _dechunk(body)
        return errors.HandshakeError(
            self._status, self._reason, body.decode("utf-8", "replace"), headers=self._headers
        )

    def _check_body_done(self) -> None:
        body = self._body
        if len(body) >= self._want or (
            self._chunked and (body.startswith(b"0\r\n") or b"\r\n0\r\n" in body)
        ):
            raise self.refusal()

    def _check_accept(self, headers: dict[str, str]) -> str | None:
        # RFC 6455 §4.1, the client's checks of the server's handshake
        if "websocket" not in _tokens(headers.get("upgrade", "")):
            raise errors.ProtocolError("101 response without 'Upgrade: websocket'")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            raise errors.ProtocolError("101 response without 'Connection: Upgrade'")
        if headers.get("sec-websocket-accept", "").strip() != accept_value(self.key):
            raise errors.ProtocolError("101 response with a wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-extensions", "").strip():
            raise errors.ProtocolError("server negotiated an extension; none was offered")
        proto = headers.get("sec-websocket-protocol")
        if proto is None:
            return None
        proto = proto.strip()
        if proto not in self._subprotocols:
            raise errors.ProtocolError(
                f"server chose subprotocol {proto[:100]!r}, which was not offered"
            )
        return proto
