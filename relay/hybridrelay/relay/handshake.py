"""Server side of the WebSocket opening handshake, on plain header mappings (RFC 6455 §4.2).

The relay answers each leg's 101 itself (instead of aiohttp's WebSocketResponse)
because the splice reads frames straight off the transport. No extension is
ever negotiated (HC §5: the clients' permessage-deflate offers are declined).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hybridrelay.errors import ProtocolError

__all__ = [
    "ClientHandshake",
    "accept_headers",
    "accept_response",
    "is_websocket",
    "parse_client_handshake",
]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


@dataclass(frozen=True, slots=True)
class ClientHandshake:
    key: str
    protocols: tuple[str, ...]


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def is_websocket(value: str) -> bool:
    """Whether an ``Upgrade`` value is exactly the token ``websocket``, in any ASCII case.

    HTTP tokens are ASCII and compare case-insensitively in ASCII only; ``str.lower()``
    folds some other letters into ASCII ones (U+212A KELVIN SIGN into "k"), which aiohttp's
    parser does not, so such a value would be an upgrade to us and not to it.
    """
    return value.isascii() and value.lower() == "websocket"


def _has_token(value: str, token: str) -> bool:
    if not value.isascii():
        return False  # no Unicode case folding into an ASCII token (is_websocket)
    # The usual single-token values ("websocket", "Upgrade") need no splitting.
    lowered = value.lower()
    return lowered == token or (token in lowered and token in _tokens(value))


def parse_client_handshake(method: str, headers: Mapping[str, str]) -> ClientHandshake:
    """Validate an upgrade request; raises ProtocolError (400) naming what is wrong."""
    if method != "GET":
        raise ProtocolError("WebSocket upgrade requires GET")
    if not _has_token(headers.get("Upgrade", ""), "websocket"):
        raise ProtocolError("This endpoint is only for web-socket requests.")
    if not _has_token(headers.get("Connection", ""), "upgrade"):
        raise ProtocolError("missing 'Connection: Upgrade'")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ProtocolError("Sec-WebSocket-Version must be 13")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        raw = binascii.a2b_base64(key.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError):  # binascii.Error is a ValueError
        raw = b""
    if len(raw) != 16:
        raise ProtocolError("invalid Sec-WebSocket-Key")
    offered: list[str] = []
    for value in _all(headers, "Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    for protocol in offered:
        # RFC 6455 §4.1: each subprotocol is a token. Anything else would reach the
        # listener's connectHeaders and its own handshake code (which may choke on it).
        if not _TOKEN.fullmatch(protocol):
            raise ProtocolError("Sec-WebSocket-Protocol offers a value that is not a token")
    return ClientHandshake(key=key, protocols=tuple(offered))


def _all(headers: Mapping[str, str], name: str) -> Sequence[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: Sequence[str] = getall(name, [])
        return values
    value = headers.get(name)
    return [value] if value else []


def _accept_key(handshake: ClientHandshake) -> bytes:
    digest = hashlib.sha1((handshake.key + _GUID).encode("ascii")).digest()  # noqa: S324 - RFC 6455
    return base64.b64encode(digest)


def accept_headers(handshake: ClientHandshake, protocol: str | None) -> dict[str, str]:
    """Headers of the 101 answer; ``protocol`` is echoed only if it was offered."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": _accept_key(handshake).decode("ascii"),
    }
    if protocol is not None and protocol in handshake.protocols:
        headers["Sec-WebSocket-Protocol"] = protocol
    return headers


def accept_response(handshake: ClientHandshake, protocol: str | None) -> bytes:
    """The whole 101 answer (status line and headers of :func:`accept_headers`) as bytes.

    A relayed connection's legs get their 101 written straight to the transport the
    splice takes over: no aiohttp response object, header serialisation or
    ``on_response_prepare`` round per leg (issue 7, connect latency).
    """
    head = _SWITCHING + _accept_key(handshake) + b"\r\n"
    if protocol is not None and protocol in handshake.protocols:
        # Header values came through aiohttp's parser: no CR/LF; keep their exact bytes.
        head += b"Sec-WebSocket-Protocol: " + protocol.encode("utf-8", "surrogateescape") + b"\r\n"
    return head + b"\r\n"
