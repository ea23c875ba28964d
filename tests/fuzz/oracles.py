"""Pure halves of the fuzz targets: examples as bytes, and what the relay must do with them.

No sockets and no clock here. Each oracle is an independent reading of the rule it
checks (RFC 6455 for frames, RFC 9110/9112 for HTTP, HC §3 for control messages), so a
target compares the relay with the rule, not with itself. Where the rule is the
relay's own codec (which messages a control channel accepts), the codec is what the
pure fuzz tests in ``test_protocol_fuzz.py`` cover.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from hybridrelay.errors import InvalidMessageError, PayloadTooBigError
from hybridrelay.protocol.messages import RenewToken, Response, decode
from tests.fuzz.strategies import (
    AddressSpec,
    AnswerExample,
    ControlExample,
    ControlMessage,
    FrameSpec,
    HttpExample,
    SpliceExample,
    TokenSpec,
)
from tests.fuzz.wire import client_frame, valid_close_code
from tests.harness.raw_ws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, close_payload

__all__ = [
    "AnswerVerdict",
    "SpliceModel",
    "answer_verdict",
    "control_frames",
    "control_verdict",
    "materialize",
    "render_answer",
    "render_http",
    "splice_model",
    "splice_stream",
]

Signer = Callable[[TokenSpec], str]
Addresser = Callable[[AddressSpec], str]

# aiohttp's WebSocketResponse(max_msg_size=...) of the control channel (hc_endpoints.py).
CONTROL_WS_MAX: Final = 1 << 20


def materialize(doc: object, sign: Signer, address: Addresser | None = None) -> object:
    """``doc`` with every placeholder replaced by the token or address it stands for."""
    if isinstance(doc, TokenSpec):
        return sign(doc)
    if isinstance(doc, AddressSpec):
        return address(doc) if address is not None else "ws://127.0.0.1:1/"
    if isinstance(doc, dict):
        return {key: materialize(value, sign, address) for key, value in doc.items()}
    if isinstance(doc, list):
        return [materialize(value, sign, address) for value in doc]
    return doc


def to_bytes(text: str) -> bytes:
    """UTF-8, with lone surrogates kept as the (invalid) bytes an attacker can send."""
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------- control channel


def render_control(message: ControlMessage, sign: Signer) -> bytes:
    """The payload of one control message, after its edit."""
    if message.doc is None:
        return message.raw
    doc = materialize(message.doc, sign)
    text = json.dumps(doc, ensure_ascii=message.ensure_ascii)
    edit = message.edit
    if edit == "truncate":
        text = text[: len(text) // 2]
    elif edit == "junk":
        text += "}x"
    elif edit == "bom":
        text = "\ufeff" + text
    elif edit == "spaces":
        text = " \n\t" + text + "\r\n "
    elif edit == "dupkey" and isinstance(doc, dict) and doc:
        first = json.dumps(next(iter(doc)))
        text = "{" + first + ":null," + text[1:]
    elif edit == "nan":
        text = text.replace("null", "NaN", 1) if "null" in text else '{"renewToken":NaN}'
    elif edit == "deep":
        text = "[" * 100_000 + "]" * 100_000
    elif edit == "big":
        text = json.dumps({"renewToken": {"token": "A" * 70_000}})
    return to_bytes(text)


def control_verdict(opcode: int, payload: bytes, accepted_tokens: Collection[str]) -> int | None:
    """The close code a relay must answer one listener message with, or None (kept open).

    HC §3: a listener may send ``renewToken`` (a refused token closes with 1008) and
    ``response``; anything else that is not one JSON message of those kinds closes
    with 1002, an oversized one with 1009; RFC 6455 §8.1: invalid UTF-8 text, 1007.
    Binary messages outside an HTTP response are ignored.
    """
    if opcode == BINARY:
        return None
    if len(payload) > CONTROL_WS_MAX:
        return 1009
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return 1007
    try:
        message = decode(text)
    except PayloadTooBigError:
        return 1009
    except InvalidMessageError:
        return 1002
    if isinstance(message, RenewToken):
        return None if message.token in accepted_tokens else 1008
    if isinstance(message, Response):
        return None
    return 1002


def _fragments(payload: bytes, count: int) -> list[bytes]:
    if count <= 1 or len(payload) < count:
        return [payload]
    size = len(payload) // count
    parts = [payload[i * size : (i + 1) * size] for i in range(count - 1)]
    return [*parts, payload[(count - 1) * size :]]


_BREACH_FRAMES: Final = {
    "rsv": client_frame(TEXT, b"{}", rsv=4),
    "opcode": client_frame(3, b""),
    "continuation": client_frame(CONTINUATION, b"x"),
    "long_ping": client_frame(PING, b"x" * 126),
    "fragmented_ping": client_frame(PING, b"x", fin=False),
    "bad_close_code": client_frame(CLOSE, close_payload(999)),
    "unmasked": client_frame(BINARY, b"unmasked", mask=None),
}


def control_frames(
    example: ControlExample, sign: Signer, accepted_tokens: Collection[str]
) -> tuple[bytes, int | None]:
    """The bytes a hostile listener sends, and the close code it must get (None: none).

    ``accepted_tokens`` may be filled in by ``sign`` while the messages are rendered.
    """
    stream = bytearray()
    expected: int | None = None
    for message in example.messages:
        payload = render_control(message, sign)
        parts = _fragments(payload, message.fragments)
        for index, part in enumerate(parts):
            opcode = message.opcode if index == 0 else CONTINUATION
            stream += client_frame(opcode, part, fin=index == len(parts) - 1)
            if message.ping_inside and index == 0:
                stream += client_frame(PING, b"inside")
        if expected is None:
            expected = control_verdict(message.opcode, payload, accepted_tokens)
    if example.breach is not None:
        stream += _BREACH_FRAMES[example.breach]
        if expected is None:
            expected = 1002
    return bytes(stream), expected


# --------------------------------------------------------------------------------------- HTTP mode


_EOL_MIXED: Final = ("\r\n", "\n")


def render_http(example: HttpExample, sign: Signer) -> bytes:
    """The request bytes of an :class:`HttpExample` (tokens signed for its entity)."""
    token = sign(example.token or TokenSpec("valid"))
    target = example.target.replace("{TOKEN}", quote(token, safe=""))
    lines = [f"{example.method} {target} {example.version}".rstrip(), "Host: fuzz"]
    if example.token is not None:
        lines.append(f"ServiceBusAuthorization: {token}")
    for name, value in example.headers:
        lines.append(f"{name}: {sign(value) if isinstance(value, TokenSpec) else value}")
    body = example.body
    framing = example.framing
    tail = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        tail = body
    elif framing == "length_short":
        lines.append(f"Content-Length: {len(body) + 10}")
        tail = body
    elif framing == "length_long":
        lines.append(f"Content-Length: {max(len(body) - 3, 0)}")
        tail = body
    elif framing in ("chunked", "chunked_bad", "both"):
        lines.append("Transfer-Encoding: chunked")
        if framing == "both":
            lines.append(f"Content-Length: {len(body)}")
        tail = _chunked(body, example.chunk_size, broken=framing == "chunked_bad")
    else:
        tail = body
    eol = example.eol
    if eol == "mixed":
        head = "".join(line + _EOL_MIXED[i % 2] for i, line in enumerate(lines)) + "\r\n"
    else:
        head = eol.join(lines) + eol + eol
    data = bytearray(to_bytes(head) + tail)
    for position, byte in example.edits:
        if data:
            data[position % len(data)] = byte
    return bytes(data) + example.trailing


def _chunked(body: bytes, size: int, *, broken: bool) -> bytes:
    out = bytearray()
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        out += f"{len(chunk):x}".encode() + (b"zz\r\n" if broken else b"\r\n") + chunk + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


def entity_of(example: HttpExample) -> str:
    return "fuzz-http" if "fuzz-http" in example.target else "fuzz-open"


# Statuses the relay documents for HTTP mode (HC Part 1 §7, docs/security.md) plus the
# listener's own 200 and aiohttp's answers to malformed requests.
DOCUMENTED_HTTP_STATUSES: Final = frozenset(
    {100, 200, 400, 401, 403, 404, 405, 408, 411, 413, 414, 417, 429, 431, 501, 502, 503, 504, 505}
)


# ------------------------------------------------------------------------------------------ splice


@dataclass(frozen=True, slots=True)
class SpliceModel:
    """What RFC 6455 says happens to a frame sequence a relay reads from one client.

    ``forwarded``: data frames (fin, opcode, payload) the other leg must get, in order;
    ``pongs``: payloads of the pongs the sending leg must get; ``close``: the payload
    of the valid close frame that ended the sequence (forwarded), or None;
    ``error``: the close code the relay must fail the sending leg with, or None;
    ``stopped_early``: more frames followed the one that ended the sequence (a close
    or a protocol error); RFC 6455 §1.4 says they are discarded unread.
    """

    forwarded: tuple[tuple[bool, int, bytes], ...]
    pongs: tuple[bytes, ...]
    close: bytes | None
    error: int | None
    stopped_early: bool = False


def _close_error(payload: bytes) -> int | None:
    if not payload:
        return None
    if len(payload) == 1:
        return 1002
    if not valid_close_code(int.from_bytes(payload[:2], "big")):
        return 1002
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return 1007
    return None


def splice_model(frames: Sequence[FrameSpec], ending_close: bytes | None) -> SpliceModel:
    """Apply RFC 6455 §5 to the frames (honest lengths only) and an optional final close."""
    forwarded: list[tuple[bool, int, bytes]] = []
    pongs: list[bytes] = []
    in_message = False
    all_frames = list(frames)
    if ending_close is not None:
        all_frames.append(FrameSpec(CLOSE, ending_close))

    def end(close: bytes | None, error: int | None, index: int) -> SpliceModel:
        early = index < len(all_frames) - 1
        return SpliceModel(tuple(forwarded), tuple(pongs), close, error, early)

    for index, frame in enumerate(all_frames):
        if frame.rsv or not frame.masked:
            return end(None, 1002, index)
        if frame.opcode in (CLOSE, PING, PONG):
            if not frame.fin or len(frame.payload) > 125:
                return end(None, 1002, index)
            if frame.opcode == PING:
                pongs.append(frame.payload)
            elif frame.opcode == CLOSE:
                error = _close_error(frame.payload)
                return end(None if error else frame.payload, error, index)
            continue
        if frame.opcode not in (CONTINUATION, TEXT, BINARY):
            return end(None, 1002, index)
        if (frame.opcode == CONTINUATION) != in_message:
            return end(None, 1002, index)
        in_message = not frame.fin
        forwarded.append((frame.fin, frame.opcode, frame.payload))
    return SpliceModel(tuple(forwarded), tuple(pongs), None, None)


def splice_stream(example: SpliceExample) -> bytes:
    """The bytes of the example's frames, cut and edited as it says (no ending)."""
    data = bytearray()
    for frame in example.frames:
        data += client_frame(
            frame.opcode,
            frame.payload,
            fin=frame.fin,
            rsv=frame.rsv,
            mask=b"\x11\x22\x33\x44" if frame.masked else None,
            length=frame.length,
        )
    if example.cut is not None:
        del data[example.cut :]
    for position, value in example.edits:
        if data:
            data[position % len(data)] = value
    return bytes(data)


# -------------------------------------------------------------------------------- listener answers

_TOKEN_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: no CTL in a field value (HTAB allowed); C1 controls are refused too.
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def render_answer(example: AnswerExample, request_id: str) -> str:
    """The ``response`` message text of an :class:`AnswerExample` for one request."""
    fields: dict[str, object] = dict(example.extra)
    fields["requestId"] = request_id
    fields["statusCode"] = example.status
    if example.description is not None:
        fields["statusDescription"] = example.description
    fields["responseHeaders"] = example.headers
    fields["body"] = example.body
    return json.dumps({"response": fields})


@dataclass(frozen=True, slots=True)
class AnswerVerdict:
    """How a relay must pass on a listener's answer.

    ``decodable``: the relay's codec takes it (else the control channel closes with 1002
    and the sender gets 502). ``valid``: status 200-599 and every header name a token,
    every value free of control characters (issue 11, trust). ``status`` and
    ``headers`` are what the sender must then see.
    """

    decodable: bool
    valid: bool
    status: int | None
    headers: tuple[tuple[str, str], ...]


def answer_verdict(text: str) -> AnswerVerdict:
    try:
        message = decode(text)
    except (InvalidMessageError, PayloadTooBigError):
        return AnswerVerdict(False, False, None, ())
    if not isinstance(message, Response):
        return AnswerVerdict(False, False, None, ())
    headers = tuple(message.response_headers.items())
    valid = 200 <= message.status_code <= 599 and all(
        _TOKEN_NAME.fullmatch(name) and not _BAD_VALUE.search(value) for name, value in headers
    )
    return AnswerVerdict(True, valid, message.status_code, headers)
