"""Hypothesis strategies for hostile input: control messages, HTTP requests, frame sequences.

Examples are frozen dataclasses, so a failure report shows exactly what was sent.
Anything that depends on the running relay (its port, a freshly signed token) is a
placeholder (:class:`TokenSpec`, :class:`AddressSpec`) that the target fills in when it
sends the example. Most examples are plausible with one thing wrong; a few are garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from hypothesis import strategies as st

from tests.harness.raw_ws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT

__all__ = [
    "AGENT_EXAMPLES",
    "ANSWER_EXAMPLES",
    "CONTROL_EXAMPLES",
    "HTTP_EXAMPLES",
    "SPLICE_EXAMPLES",
    "AddressSpec",
    "AgentExample",
    "AgentMessage",
    "AnswerExample",
    "ControlExample",
    "ControlMessage",
    "FrameSpec",
    "HttpExample",
    "SpliceExample",
    "TokenSpec",
]

# -------------------------------------------------------------------------------------------- JSON

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Text that makes HTTP and log code branch: CR, LF, NUL, ESC, DEL, C1, a lone surrogate,
# quotes, separators, non-ASCII.
NASTY_TEXT = st.text(
    alphabet=st.sampled_from(
        list("aZ09 -_.:;,/\\\"'=%&?#@\t\r\n\x00\x1b\x7f\x85\x9béü\u2028\ufeff\ud800\U0001f600")
    ),
    max_size=24,
)
SOME_TEXT = st.one_of(st.text(max_size=16), NASTY_TEXT)


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """A SAS token the target signs when it sends the example.

    ``valid``, ``listen_rule`` and ``namespace`` are tokens the relay must accept (root
    key for the entity, the entity's Listen rule, root key for the whole namespace); the
    others it must refuse.
    """

    kind: Literal[
        "valid", "listen_rule", "namespace", "expired", "bad_signature", "other_hc", "send_only"
    ]


ACCEPTED_TOKENS: Final = frozenset({"valid", "listen_rule", "namespace"})
TOKENS = st.sampled_from(
    [
        TokenSpec("valid"),
        TokenSpec("listen_rule"),
        TokenSpec("namespace"),
        TokenSpec("expired"),
        TokenSpec("bad_signature"),
        TokenSpec("other_hc"),
        TokenSpec("send_only"),
    ]
)
TOKEN_FIELD = st.one_of(TOKENS, TOKENS, JSON_VALUE, NASTY_TEXT)
EXTRA_FIELDS = st.dictionaries(
    st.sampled_from(["x", "id", "token", "", "\u00e9"]), JSON_LEAF, max_size=2
)

HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "X-App",
            "Set-Cookie",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Upgrade",
            "Via",
            "Location",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Protocol",
            "",
            ":",
            " X-Lead",
            "X-Trail ",
            "X\r\nInjected",
            "X:Colon",
            "X\x00Nul",
            "\ud800",
            "Ünicode",
        ]
    ),
    NASTY_TEXT,
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["text/plain", "1", "0", "chunked", "close", "a\r\nX-Injected: 1", " padded "]),
    NASTY_TEXT,
    st.integers(min_value=-5, max_value=10**6),
    JSON_LEAF,
)
HEADER_MAPS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4)
STATUS_FIELD = st.one_of(
    st.sampled_from([200, 201, 204, 304, 400, 404, 418, 500, 502, 599]),
    st.integers(min_value=-1, max_value=1200),
    st.sampled_from(["200", "404", "099", "1e3", " 200", "2OO", "", "600"]),
    JSON_LEAF,
)

# ------------------------------------------------------------- control channel (listener -> relay)

_RESPONSE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "requestId": st.one_of(st.uuids().map(str), SOME_TEXT, JSON_LEAF),
        "statusCode": STATUS_FIELD,
        "statusDescription": st.one_of(NASTY_TEXT, JSON_LEAF),
        "responseHeaders": st.one_of(HEADER_MAPS, JSON_VALUE),
        "body": st.one_of(st.booleans(), st.booleans(), JSON_LEAF),
    },
)
# Messages a listener may send, well formed: the frames after them still get judged.
PLAUSIBLE_LISTENER_DOCS = st.one_of(
    st.builds(lambda token: {"renewToken": {"token": token}}, TOKENS),
    st.builds(
        lambda request_id, status, headers, body: {
            "response": {
                "requestId": request_id,
                "statusCode": status,
                "responseHeaders": headers,
                "body": body,
            }
        },
        st.uuids().map(str),
        st.sampled_from([200, 404, "204"]),
        st.dictionaries(st.sampled_from(["X-A", "Content-Type"]), st.sampled_from(["1", "a b"])),
        st.booleans(),
    ),
)
LISTENER_DOCS = st.one_of(
    PLAUSIBLE_LISTENER_DOCS,
    PLAUSIBLE_LISTENER_DOCS,
    st.builds(
        lambda token, extra: {"renewToken": {**extra, "token": token}}, TOKEN_FIELD, EXTRA_FIELDS
    ),
    st.builds(lambda fields: {"response": fields}, _RESPONSE_FIELDS),
    # Kinds a listener may not send, unknown kinds, more than one key, not an object.
    st.builds(
        lambda kind, body: {kind: body},
        st.sampled_from(["accept", "request", "ping", "renewtoken", "Response", "", "__proto__"]),
        st.one_of(
            JSON_VALUE, st.dictionaries(st.sampled_from(["address", "id", "token"]), SOME_TEXT)
        ),
    ),
    st.builds(lambda token: {"renewToken": {"token": token}, "response": {}}, TOKENS),
    JSON_VALUE,
)

RAW_EDITS = ("none",) * 6 + ("truncate", "junk", "bom", "dupkey", "nan", "deep", "big", "spaces")


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One message a hostile listener sends on its control channel.

    ``doc`` is rendered as JSON (``ensure_ascii`` as given) and then edited by ``edit``;
    ``raw`` is sent as is when ``doc`` is None. ``fragments`` splits it into that many
    frames; ``ping_inside`` puts a ping between the first two.
    """

    doc: object = None
    raw: bytes = b""
    opcode: int = TEXT
    ensure_ascii: bool = True
    edit: str = "none"
    fragments: int = 1
    ping_inside: bool = False


CONTROL_MESSAGES = st.one_of(
    st.builds(
        ControlMessage,
        doc=LISTENER_DOCS,
        opcode=st.sampled_from([TEXT, TEXT, TEXT, TEXT, BINARY]),
        ensure_ascii=st.booleans(),
        edit=st.sampled_from(RAW_EDITS),
        fragments=st.sampled_from([1, 1, 1, 2, 3]),
        ping_inside=st.booleans(),
    ),
    st.builds(
        ControlMessage,
        raw=st.one_of(st.binary(max_size=64), st.text(max_size=32).map(str.encode)),
        opcode=st.sampled_from([TEXT, BINARY]),
    ),
)

# Frame-level breaches, appended after the messages: each must close the channel (1002).
CONTROL_BREACHES = (
    "rsv",
    "opcode",
    "continuation",
    "long_ping",
    "fragmented_ping",
    "bad_close_code",
    "unmasked",
)


@dataclass(frozen=True, slots=True)
class ControlExample:
    messages: tuple[ControlMessage, ...]
    breach: str | None = None


CONTROL_EXAMPLES = st.builds(
    ControlExample,
    messages=st.lists(CONTROL_MESSAGES, max_size=3).map(tuple),
    breach=st.one_of(st.none(), st.sampled_from(CONTROL_BREACHES)),
)

# --------------------------------------------------------------------- HTTP mode (sender -> relay)

GOOD_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
METHODS = st.one_of(
    st.sampled_from([*GOOD_METHODS, "HEAD", "HEAD", "CONNECT", "TRACE", "get", "PRI"]),
    st.sampled_from(["", "G\x00T", "GET ", "M" * 300, "\u00c9T", "POST\t", "BREW"]),
)
PATH_TEXT = st.text(alphabet="aZ09-._~%2e2fF/\\?#&=;:@+$!*'() \x00\x7f\u00e9", max_size=24)
GOOD_TARGETS = st.sampled_from(
    [
        "/fuzz-open",
        "/fuzz-open/",
        "/fuzz-open/a/b?c=d&e",
        "/fuzz-open/%41%20b?x=%2F",
        "/fuzz-http/api?sb-hc-token={TOKEN}",
        "/fuzz-http/x",
    ]
)
TARGETS = st.one_of(
    GOOD_TARGETS,
    st.builds(
        lambda entity, rest: entity + rest, st.sampled_from(["/fuzz-open", "/fuzz-http"]), PATH_TEXT
    ),
    st.sampled_from(
        [
            "*",
            "/",
            "",
            "fuzz-open",
            "http://127.0.0.1/fuzz-open/abs",
            "//fuzz-open",
            "/%66uzz-open/x",
            "/fuzz-open/../fuzz-http/x",
            "/fuzz-open/%2e%2e/fuzz-http",
            "/fuzz-open/%zz",
            "/fuzz-open/%00",
            "/nonexistent/x",
            "/$hc/fuzz-open?sb-hc-action=connect",
            "/$hc/fuzz-open?sb-hc-action=listen",
            "/%24hc/fuzz-open",
            "/healthz",
            "/readyz",
            "/metrics",
            "/$mgmt/v1/hybridConnections",
            "/fuzz-open?" + "q" * 9000,
            "/fuzz-open/" + "p" * 9000,
            "/fuzz-open/%0d%0aevent=forged",
        ]
    ),
)
VERSIONS = st.sampled_from(
    ["HTTP/1.1"] * 6
    + ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1 extra", "http/1.1", "", "HTTP/1.10"]
)
_HEADER_PAIRS = st.one_of(
    st.tuples(
        st.sampled_from(
            ["X-App", "Accept", "User-Agent", "Content-Type", "X-Forwarded-For", "Cookie"]
        ),
        st.text(alphabet="azAZ09 -_.,;=/", max_size=20).map(str.strip),
    ),
    st.tuples(
        st.sampled_from(
            [
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "Upgrade",
                "Expect",
                "Host",
                "Authorization",
                "ServiceBusAuthorization",
                "Forwarded",
                "Sec-WebSocket-Key",
                "Trailer",
                "TE",
            ]
        ),
        st.sampled_from(
            [
                "0",
                "5",
                "-1",
                "+5",
                "5, 5",
                "5, 6",
                "0x10",
                "99999999999999999999",
                "chunked",
                "Chunked",
                "chunked, gzip",
                "gzip, chunked",
                " chunked",
                "identity",
                "close",
                "keep-alive",
                "upgrade",
                "websocket",
                "100-continue",
                "",
            ]
        ),
    ),
    st.tuples(HEADER_NAMES, NASTY_TEXT),
    st.tuples(st.just("X-Big"), st.sampled_from([8000, 33000, 70000]).map(lambda n: "v" * n)),
)
FRAMINGS = st.sampled_from(
    [
        "none",
        "length",
        "length",
        "chunked",
        "chunked",
        "length_short",
        "length_long",
        "chunked_bad",
        "both",
    ]
)
EOLS = st.sampled_from(["\r\n"] * 8 + ["\n", "\r", "mixed"])


@dataclass(frozen=True, slots=True)
class HttpExample:
    """One HTTP/1.1 request (or what an attacker calls one) sent to the relay in raw bytes.

    ``{TOKEN}`` in ``target`` and a :class:`TokenSpec` header value are filled in with a
    token when sent. ``framing`` decides how ``body`` is delimited; ``edits`` replace
    single bytes of the final request; ``trailing`` follows it on the same connection.
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str | TokenSpec], ...]
    body: bytes
    framing: str
    chunk_size: int
    eol: str
    trailing: bytes
    edits: tuple[tuple[int, int], ...]
    token: TokenSpec | None

    @property
    def well_formed(self) -> bool:
        """Valid HTTP/1.1 that an HC listener must receive intact (HC §2.6-2.7, RFC 9112)."""
        special = {
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "expect",
            "host",
            "authorization",
            "servicebusauthorization",
            "forwarded",
            "sec-websocket-key",
            "trailer",
            "te",
        }
        return (
            self.method in GOOD_METHODS
            and self.target in WELL_FORMED_TARGETS
            and self.version == "HTTP/1.1"
            and self.framing in ("none", "length", "chunked")
            and not (self.framing == "none" and self.body)
            and self.eol == "\r\n"
            and not self.trailing
            and not self.edits
            and (self.token is None or self.token.kind == "valid")
            and all(
                isinstance(value, str) and name.lower() not in special and _plain(name, value)
                for name, value in self.headers
            )
        )


def _plain(name: str, value: str) -> bool:
    token_chars = set(
        "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    )
    return (
        bool(name)
        and set(name) <= token_chars
        and all(0x20 <= ord(c) < 0x7F for c in value)
        and len(value) < 4000
    )


_BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.sampled_from([70_000, 200_000]).map(lambda n: bytes(range(256)) * (n // 256)),
)
# Requests an HC listener must receive intact: the baseline the mutants are judged against.
WELL_FORMED_TARGETS: Final = (
    "/fuzz-open",
    "/fuzz-open/",
    "/fuzz-open/a/b?c=d&e",
    "/fuzz-open/%41%20b?x=%2F",
    "/fuzz-http/api?sb-hc-token={TOKEN}",
)
WELL_FORMED_HTTP = st.builds(
    lambda method, target, headers, body, framing, chunk_size, token: HttpExample(
        method=method,
        target=target,
        version="HTTP/1.1",
        headers=headers,
        body=body if framing != "none" else b"",
        framing=framing,
        chunk_size=chunk_size,
        eol="\r\n",
        trailing=b"",
        edits=(),
        token=token,
    ),
    st.sampled_from(GOOD_METHODS),
    st.sampled_from(WELL_FORMED_TARGETS),
    st.dictionaries(  # distinct names: Content-Type may appear once (RFC 9110 §5.3)
        st.sampled_from(["X-App", "Accept", "User-Agent", "Content-Type", "Cookie"]),
        st.text(alphabet="azAZ09-_.,;=/", min_size=1, max_size=20),
        max_size=3,
    ).map(lambda headers: tuple(headers.items())),
    _BODIES,
    st.sampled_from(["none", "length", "chunked"]),
    st.sampled_from([1, 7, 4096, 65536]),
    st.sampled_from([None, TokenSpec("valid")]),
)
MUTANT_HTTP = st.builds(
    HttpExample,
    method=METHODS,
    target=TARGETS,
    version=VERSIONS,
    headers=st.lists(_HEADER_PAIRS, max_size=4).map(tuple),
    body=_BODIES,
    framing=FRAMINGS,
    chunk_size=st.sampled_from([1, 7, 4096, 65536]),
    eol=EOLS,
    trailing=st.one_of(
        st.just(b""),
        st.just(b""),
        st.sampled_from(
            [b"GET /fuzz-open/2 HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n", b"junk", b"\x00" * 4]
        ),
    ),
    edits=st.one_of(
        st.just(()),
        st.just(()),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3).map(tuple),
    ),
    token=st.one_of(st.none(), st.just(TokenSpec("valid")), TOKENS),
)
HTTP_EXAMPLES = st.one_of(WELL_FORMED_HTTP, MUTANT_HTTP, MUTANT_HTTP)

# ----------------------------------------------------------------------------------- splice frames


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """One frame a hostile peer sends on a spliced stream; ``length`` may lie."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    length: int | None = None


_PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"hello", "h\u00e9llo".encode(), b"\xff\xfe", b"\xc3"]),
    st.sampled_from([126, 65_535, 65_536, 300_000]).map(lambda n: b"\xab" * n),
)
_CONTROL_PAYLOADS = st.one_of(
    st.binary(max_size=125),
    st.sampled_from([b"", b"\x03", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xe8\xff", b"x" * 126]),
    st.builds(
        lambda code, reason: code.to_bytes(2, "big") + reason,
        st.integers(0, 65535),
        st.binary(max_size=8),
    ),
)
FRAMES = st.one_of(
    # A frame header and then nothing: the peer vanishes before any payload byte.
    st.builds(
        FrameSpec, opcode=st.sampled_from([TEXT, BINARY]), length=st.sampled_from([10, 70_000])
    ),
    st.builds(
        FrameSpec,
        opcode=st.sampled_from([TEXT, BINARY, BINARY, CONTINUATION]),
        payload=_PAYLOADS,
        fin=st.booleans(),
    ),
    st.builds(
        FrameSpec, opcode=st.sampled_from([PING, PING, PONG, CLOSE]), payload=_CONTROL_PAYLOADS
    ),
    st.builds(
        FrameSpec,
        opcode=st.sampled_from([TEXT, BINARY, CONTINUATION, PING, CLOSE, 3, 7, 0xB, 0xF]),
        payload=st.binary(max_size=130),
        fin=st.booleans(),
        rsv=st.sampled_from([0, 0, 1, 4, 7]),
        masked=st.sampled_from([True, True, False]),
        length=st.one_of(
            st.none(), st.none(), st.sampled_from([0, 1, 125, 126, 65_536, 1 << 63, (1 << 64) - 1])
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class SpliceExample:
    """Frames one leg of a relayed stream sends; the other leg is a well-behaved peer.

    ``ending``: ``close`` sends a close frame (``close_code``, ``close_reason``) after the
    frames, ``eof`` half-closes the TCP connection, ``abort`` resets it. ``cut`` sends
    only that many bytes of the stream; ``edits`` overwrite single bytes of it.
    """

    side: Literal["sender", "listener"]
    frames: tuple[FrameSpec, ...]
    ending: Literal["close", "eof", "abort"]
    close_code: int = 1000
    close_reason: bytes = b""
    cut: int | None = None
    edits: tuple[tuple[int, int], ...] = ()

    @property
    def exact(self) -> bool:
        """Unmutated and every length honest: the relay's forwarding can be predicted."""
        return self.cut is None and not self.edits and all(f.length is None for f in self.frames)


SPLICE_EXAMPLES = st.builds(
    SpliceExample,
    side=st.sampled_from(["sender", "listener"]),
    frames=st.lists(FRAMES, max_size=6).map(tuple),
    ending=st.sampled_from(["close", "close", "eof", "abort"]),
    close_code=st.sampled_from([1000, 1001, 1002, 1011, 3000, 4999, 999, 1004, 1005, 1015, 5000]),
    close_reason=st.sampled_from([b"", b"bye", "\u00e9".encode(), b"\xff"]),
    cut=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 200)),
    edits=st.one_of(
        st.just(()),
        st.just(()),
        st.just(()),
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=3).map(
            tuple
        ),
    ),
)

# ------------------------------------------------------------------- listener answers in HTTP mode


@dataclass(frozen=True, slots=True)
class AnswerExample:
    """A hostile listener's answer to one HTTP-mode request (HC §3.3, §4)."""

    method: Literal["GET", "POST", "HEAD"]
    status: object
    description: object
    headers: object
    body: object  # the "body" field
    body_bytes: bytes | None  # the binary message after the header, if any
    via: Literal["control", "rendezvous"]
    extra: dict[str, object]


# The "body" field and the binary message after the header: mostly consistent (a body
# promised is sent), sometimes not, sometimes not even a boolean.
_ANSWER_BODIES = st.one_of(
    st.tuples(st.just(True), st.one_of(st.binary(max_size=64), st.just(b"x" * 70_000))),
    st.tuples(st.just(False), st.just(None)),
    st.tuples(st.just(False), st.just(None)),
    st.tuples(st.just(False), st.binary(max_size=8)),
    st.tuples(JSON_LEAF, st.none()),
)
# Mostly answers the codec takes (so the relay's own checks are what is tested), with
# one field off: a status out of range, a header name or value no HTTP peer may send.
_ANSWER_STATUS = st.one_of(
    st.sampled_from([200, 201, 204, 304, 404, 418, 503, 599]),
    st.integers(min_value=100, max_value=999),
    st.sampled_from([100, 101, 103, 199, "200", "600", 600, 999]),
    STATUS_FIELD,
)
_PLAIN_VALUES = st.text(alphabet="azAZ09 -_.,;=/", max_size=20)
_ANSWER_HEADERS = st.one_of(
    st.dictionaries(
        st.sampled_from(["X-App", "Set-Cookie", "Cache-Control"]), _PLAIN_VALUES, max_size=3
    ),
    st.dictionaries(HEADER_NAMES, st.one_of(_PLAIN_VALUES, NASTY_TEXT), max_size=3),
    st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3),
    JSON_VALUE,
)
ANSWER_EXAMPLES = st.builds(
    lambda method, status, description, headers, body, via, extra: AnswerExample(
        method=method,
        status=status,
        description=description,
        headers=headers,
        body=body[0],
        body_bytes=body[1],
        via=via,
        extra=extra,
    ),
    method=st.sampled_from(["GET", "GET", "POST", "HEAD"]),
    status=_ANSWER_STATUS,
    description=st.one_of(st.none(), st.none(), st.none(), NASTY_TEXT, JSON_LEAF),
    headers=_ANSWER_HEADERS,
    body=_ANSWER_BODIES,
    via=st.sampled_from(["control", "control", "control", "rendezvous"]),
    extra=st.one_of(
        st.just({}),
        st.just({}),
        st.dictionaries(st.sampled_from(["x", "requestTarget", "id"]), JSON_LEAF, max_size=1),
    ),
)

# ---------------------------------------------------------------- control channel (relay -> agent)


@dataclass(frozen=True, slots=True)
class AddressSpec:
    """A rendezvous address a hostile relay hands the agent, filled in when sent.

    ``relay``: the relay's own host and port; ``foreign``: another host (127.0.0.2) the
    agent must never dial; ``closed``: a port nobody listens on; ``garbage``: ``text``.
    """

    kind: Literal["relay", "foreign", "closed", "garbage", "wss"]
    action: Literal["accept", "request"] = "accept"
    text: str = ""


ADDRESSES = st.one_of(
    st.builds(
        AddressSpec,
        kind=st.sampled_from(["relay", "relay", "relay", "foreign", "closed", "wss"]),
        action=st.sampled_from(["accept", "request"]),
        text=st.one_of(st.just(""), PATH_TEXT),
    ),
    st.builds(
        AddressSpec,
        kind=st.just("garbage"),
        text=st.sampled_from(
            ["", "accept", "ws:", "ws://", "ws://[::1", "ws://127.0.0.1:notaport/x", "ftp://127.0.0.1/x",
             "ws://127.0.0.1:99999/x", "/$hc/x", "ws://user@127.0.0.1:1/x"]
        ),
    ),
)  # fmt: skip
_CONNECT_HEADERS = st.one_of(
    st.fixed_dictionaries(
        {"Sec-WebSocket-Key": st.sampled_from(["dGhlIHNhbXBsZSBub25jZQ==", "", "x"])},
        optional={
            "Sec-WebSocket-Protocol": st.sampled_from(["", "mqtt", ",", "a, b", "\x00"]),
            "Host": SOME_TEXT,
        },
    ),
    HEADER_MAPS,
    JSON_VALUE,
)
_ENDPOINT = st.one_of(
    st.none(),
    st.fixed_dictionaries({"address": SOME_TEXT, "port": st.integers(-1, 70_000)}),
    JSON_VALUE,
)
RELAY_DOCS = st.one_of(
    st.builds(
        lambda address, ident, headers, endpoint: {
            "accept": {
                "address": address,
                "id": ident,
                "connectHeaders": headers,
                "remoteEndpoint": endpoint,
            }
        },
        st.one_of(ADDRESSES, ADDRESSES, JSON_LEAF),
        st.one_of(st.uuids().map(str), SOME_TEXT, JSON_LEAF),
        _CONNECT_HEADERS,
        _ENDPOINT,
    ),
    st.builds(
        lambda address, ident, fields: {"request": {"address": address, "id": ident, **fields}},
        st.one_of(st.just(AddressSpec("relay", "request")), ADDRESSES, JSON_LEAF),
        st.one_of(st.uuids().map(str), SOME_TEXT),
        st.fixed_dictionaries(
            {},
            optional={
                "requestTarget": st.one_of(
                    st.sampled_from(["/fuzz-agent/x", "/", "", "*"]), PATH_TEXT, JSON_LEAF
                ),
                "method": st.one_of(st.sampled_from(["GET", "POST", "HEAD"]), SOME_TEXT, JSON_LEAF),
                "requestHeaders": st.one_of(HEADER_MAPS, JSON_VALUE),
                "remoteEndpoint": _ENDPOINT,
                "body": st.one_of(st.booleans(), st.booleans(), JSON_LEAF),
            },
        ),
    ),
    st.builds(lambda fields: {"response": fields}, _RESPONSE_FIELDS),
    st.builds(lambda token: {"renewToken": {"token": token}}, SOME_TEXT),
    JSON_VALUE,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """One message a hostile relay sends on the agent's control channel."""

    doc: object = None
    raw: bytes = b""
    binary: bool = False


@dataclass(frozen=True, slots=True)
class AgentExample:
    messages: tuple[AgentMessage, ...]
    # How the hostile relay answers the agent's rendezvous dials: open the WebSocket and
    # close it, refuse with 410 or 404, or open it and send ``rendezvous_text``.
    dial_answer: Literal["accept_close", "gone", "not_found", "send"]
    rendezvous_text: object = None


AGENT_MESSAGES = st.one_of(
    st.builds(AgentMessage, doc=RELAY_DOCS),
    st.builds(AgentMessage, doc=RELAY_DOCS),
    st.builds(AgentMessage, raw=st.binary(max_size=64), binary=st.booleans()),
)
# The full request a rendezvous-only request promises (HC §3.2), sent on its socket.
_RENDEZVOUS_REQUESTS = st.builds(
    lambda method, body, headers: {
        "request": {
            "address": AddressSpec("relay", "request"),
            "id": "rendezvous",
            "requestTarget": "/fuzz-agent/r",
            "method": method,
            "requestHeaders": headers,
            "body": body,
        }
    },
    st.sampled_from(["GET", "POST", "HEAD"]),
    st.booleans(),
    st.one_of(st.just({}), HEADER_MAPS),
)
# A rendezvous-only request for the agent to fetch, with a plausible accept now and then.
_PLAUSIBLE_RELAY_DOCS = st.one_of(
    st.builds(
        lambda ident: {"request": {"address": AddressSpec("relay", "request"), "id": ident}},
        st.uuids().map(str),
    ),
    st.builds(
        lambda ident, protocol: {
            "accept": {
                "address": AddressSpec("relay", "accept"),
                "id": ident,
                "connectHeaders": {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **protocol},
            }
        },
        st.uuids().map(str),
        st.sampled_from([{}, {"Sec-WebSocket-Protocol": "mqtt"}]),
    ),
)
AGENT_EXAMPLES = st.builds(
    AgentExample,
    messages=st.lists(
        st.one_of(AGENT_MESSAGES, st.builds(AgentMessage, doc=_PLAUSIBLE_RELAY_DOCS)),
        min_size=1,
        max_size=4,
    ).map(tuple),
    dial_answer=st.sampled_from(["accept_close", "gone", "not_found", "send", "send"]),
    rendezvous_text=st.one_of(_RENDEZVOUS_REQUESTS, _RENDEZVOUS_REQUESTS, RELAY_DOCS, SOME_TEXT),
)
