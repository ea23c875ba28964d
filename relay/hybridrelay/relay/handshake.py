"""Server side of the WebSocket opening handshake, on plain header mappings (RFC 6455 §4.2).

The relay answers each leg's 101 itself (instead of aiohttp's WebSocketResponse)
because the splice reads frames straight off the transport. No extension is
ever negotiated (HC §5: the clients' permessage-deflate offers are declined).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hybridrelay.errors import ProtocolError

__all__ = ["ClientHandshake", "accept_headers", "parse_client_handshake"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class ClientHandshake:
    key: str
    protocols: tuple[str, ...]


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def parse_client_handshake(method: str, headers: Mapping[str, str]) -> ClientHandshake:
    """Validate an upgrade request; raises ProtocolError (400) naming what is wrong."""
    if method != "GET":
        raise ProtocolError("WebSocket upgrade requires GET")
    if "websocket" not in _tokens(headers.get("Upgrade", "")):
        raise ProtocolError("This endpoint is only for web-socket requests.")
    if "upgrade" not in _tokens(headers.get("Connection", "")):
        raise ProtocolError("missing 'Connection: Upgrade'")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ProtocolError("Sec-WebSocket-Version must be 13")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise ProtocolError("invalid Sec-WebSocket-Key")
    offered: list[str] = []
    for value in _all(headers, "Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    return ClientHandshake(key=key, protocols=tuple(offered))


def _all(headers: Mapping[str, str], name: str) -> Sequence[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values: Sequence[str] = getall(name, [])
        return values
    value = headers.get(name)
    return [value] if value else []


def accept_headers(handshake: ClientHandshake, protocol: str | None) -> dict[str, str]:
    """Headers of the 101 answer; ``protocol`` is echoed only if it was offered."""
    digest = hashlib.sha1((handshake.key + _GUID).encode("ascii")).digest()  # noqa: S324 - RFC 6455
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": base64.b64encode(digest).decode("ascii"),
    }
    if protocol is not None and protocol in handshake.protocols:
        headers["Sec-WebSocket-Protocol"] = protocol
    return headers
