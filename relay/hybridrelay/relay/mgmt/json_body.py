"""A management caller's body: read within its limits, then one JSON object or why not.

Reading (:func:`read_body`, :func:`body_chunks`): a body stalled for ``body_idle_timeout``
gets 408, one over its size 413 (``max_management_body_size``), both counted by the
middleware; a malformed one (bad chunk framing) 400. Decoding
(:func:`parse_json_object`): hostile input gets a 400, never a 500: NaN/Infinity,
numbers beyond 64 bits, lone surrogates that cannot be stored, and nesting deep
enough to exhaust the stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from hybridrelay.errors import (
    PayloadTooBigError,
    ProtocolError,
    RequestTimeoutError,
    ValidationError,
)

__all__ = ["body_chunks", "parse_json_object", "read_body"]

_MAX_JSON_INT: Final = 2**63
_CHUNK: Final = 64 * 1024
# What a body beyond its cap is counted under, unless the caller names its own limit.
LIMIT_MANAGEMENT_BODY: Final = "max_management_body_size"


async def body_chunks(request: web.Request, idle: float, size: int) -> AsyncIterator[bytes]:
    """The body in chunks of at most ``size``; 408 when none comes for ``idle`` seconds."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.read(size)
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"the request body stalled for {idle:g} s", limit="body_idle_timeout"
            ) from exc
        except (RequestPayloadError, HttpProcessingError) as exc:
            raise ProtocolError("the request body is malformed") from exc
        if not chunk:
            return
        yield chunk


async def read_body(
    request: web.Request,
    *,
    max_size: int,
    idle: float,
    limit: str = LIMIT_MANAGEMENT_BODY,
) -> bytes:
    """The whole body, at most ``max_size`` bytes (413 beyond, counted under ``limit``)."""
    too_big = PayloadTooBigError(
        f"a management request body is at most {max_size} bytes", limit=limit
    )
    length = request.content_length
    if length is not None and length > max_size:
        raise too_big
    parts: list[bytes] = []
    total = 0
    async for chunk in body_chunks(request, idle, _CHUNK):
        total += len(chunk)
        if total > max_size:
            raise too_big
        parts.append(chunk)
    return b"".join(parts)


def parse_json_object(raw: bytes | str, field: str) -> dict[str, object]:
    """The JSON object in ``raw``; ValidationError naming ``field`` otherwise."""

    def reject_constant(name: str) -> object:
        raise ValidationError(field, f"{name} is not a JSON number")

    try:
        doc = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValidationError(field, "not valid JSON") from exc
    _check_values(doc, field)
    if not isinstance(doc, dict):
        raise ValidationError(field, "must be a JSON object")
    return {str(k): v for k, v in doc.items()}


def _check_values(doc: object, field: str) -> None:
    # Iterative, so a deeply nested document cannot exhaust the stack here.
    stack: list[object] = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValidationError(field, "strings must be valid Unicode text") from exc
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not -_MAX_JSON_INT <= value <= _MAX_JSON_INT:
                raise ValidationError(field, "a number is out of range")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
