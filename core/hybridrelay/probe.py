"""Probe a relay before serving: is the URL right, is the relay there, do the key and name fit?

``hybridrelay forward`` and ``listen`` call :func:`probe_relay` at start so that a
configuration mistake (an ``https://`` URL, a wrong key, a wrong hybrid connection
name, a CA the relay's certificate does not chain to) fails at once with one line,
instead of at the first client or never; ``hybridrelay check --probe`` calls it too.

The probe is a connect (or listen) handshake with a ``Hybridrelay-Probe`` header and no
``Sec-WebSocket-Key``: hybridrelay relays answer it 204 (with the number of listeners
online) once the entity and the token pass, before anything is created, dispatched or
attached, and refuse it like the real handshake otherwise (404, 401, 403). No server
upgrades a handshake without a key, so a relay that does not know probes (Azure Relay,
an older hybridrelay) refuses it with 400, and the probe says it could not tell
(:attr:`ProbeOutcome.UNSUPPORTED`): nothing reaches a listener either way.

:func:`classify` (status, headers, body -> result) is pure; :func:`probe_relay` is the
thin I/O around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import ssl
import time
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from hybridrelay.protocol.addresses import connect_uri, listen_uri
from hybridrelay.protocol.sas import TokenProvider, audience_for

__all__ = [
    "LISTENERS_HEADER",
    "PROBE_HEADER",
    "ProbeOutcome",
    "ProbeResult",
    "Setting",
    "advice",
    "classify",
    "probe_relay",
    "relay_url_problem",
]

PROBE_HEADER: Final = "Hybridrelay-Probe"
LISTENERS_HEADER: Final = "Hybridrelay-Listeners"

# A probe answer is a status line, a few headers and a short JSON error: bounded.
_HEAD_LIMIT: Final = 16 * 1024
_BODY_LIMIT: Final = 4 * 1024
_DETAIL_LIMIT: Final = 200
_SCHEME_HINTS: Final = {"https": "wss", "http": "ws"}

Action = Literal["connect", "listen"]
# The setting a fatal outcome points at (a CLI maps it to its flag, a config to its key).
Setting = Literal["relay", "key", "hc", "ca_file"]


class ProbeOutcome(enum.StrEnum):
    OK = "ok"  # the relay knows the entity and accepts the token for the action
    BAD_URL = "bad-url"  # not a ws:// or wss:// URL with a host
    # 401/403: wrong key or rule name, expired, lacks the right
    BAD_TOKEN = "bad-token"  # noqa: S105 - a verdict, not a secret
    NO_SUCH_ENTITY = "no-such-entity"  # 404: no such hybrid connection (or not for this use)
    TLS_ERROR = "tls-error"  # handshake failed: untrusted certificate, not a TLS port...
    UNREACHABLE = "unreachable"  # no TCP connection, refused, reset, timed out, DNS
    UNAVAILABLE = "unavailable"  # the relay is there but cannot serve now (draining, 503)
    UNSUPPORTED = "unsupported"  # the relay does not answer probes (400): nothing known
    UNEXPECTED = "unexpected"  # another answer


# Mistakes in the configuration: retrying cannot fix them.
_FATAL: Final = frozenset(
    {
        ProbeOutcome.BAD_URL,
        ProbeOutcome.BAD_TOKEN,
        ProbeOutcome.NO_SUCH_ENTITY,
        ProbeOutcome.TLS_ERROR,
    }
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe found.

    Attributes:
        outcome: The verdict.
        detail: One line for a person: the relay's message or the local error.
        status: The relay's HTTP status, when it answered.
        listeners: Listeners online for the hybrid connection (OK from hybridrelay only).
    """

    outcome: ProbeOutcome
    detail: str
    status: int | None = None
    listeners: int | None = None
    untrusted: bool = False  # TLS_ERROR: the certificate did not verify (else: not TLS)

    @property
    def fatal(self) -> bool:
        """A configuration mistake: fail now instead of retrying."""
        return self.outcome in _FATAL

    @property
    def ok(self) -> bool:
        return self.outcome is ProbeOutcome.OK

    @property
    def setting(self) -> Setting | None:
        """Which setting is wrong, for a fatal outcome."""
        if self.outcome is ProbeOutcome.TLS_ERROR and not self.untrusted:
            return "relay"  # no TLS on that port: the URL, not the CA
        return _SETTINGS.get(self.outcome)


_SETTINGS: Final[dict[ProbeOutcome, Setting]] = {
    ProbeOutcome.BAD_URL: "relay",
    ProbeOutcome.BAD_TOKEN: "key",
    ProbeOutcome.NO_SUCH_ENTITY: "hc",
    ProbeOutcome.TLS_ERROR: "ca_file",
}


def advice(result: ProbeResult, hc: str, action: Action) -> str:
    """One line for a person: what the probe found, and for a mistake what to check."""
    right = "Send" if action == "connect" else "Listen"
    detail = result.detail
    match result.outcome:
        case ProbeOutcome.OK:
            online = "" if result.listeners is None else f", {result.listeners} listener(s) online"
            return f"the relay accepts the key for {right} on {hc!r}{online}"
        case ProbeOutcome.BAD_TOKEN:
            return (
                f"the relay refused the key for {right} on {hc!r} (HTTP {result.status}: "
                f"{detail}); check the key name (or device id) and the key"
            )
        case ProbeOutcome.NO_SUCH_ENTITY:
            line = f"the relay has no hybrid connection {hc!r} ({detail})"
            if action == "connect":
                line += (
                    "; if the relay creates hybrid connections on first listen,"
                    " start the listener first"
                )
            return line
        case ProbeOutcome.TLS_ERROR if result.untrusted:
            return f"{detail}; trust the relay's CA with --ca-file (ca_file in a config file)"
        case ProbeOutcome.TLS_ERROR:
            return f"{detail}; if the relay serves plain ws:// on that port, use ws://"
        case ProbeOutcome.UNREACHABLE | ProbeOutcome.UNAVAILABLE:
            return f"the relay is not reachable now ({detail})"
        case _:
            return detail


def relay_url_problem(url: str) -> str | None:
    """Why ``url`` is not a relay base URL (with a did-you-mean for http(s)://), or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme in _SCHEME_HINTS:
        fixed = _SCHEME_HINTS[scheme] + url[len(scheme) :]
        return f"relay URL must be ws:// or wss://, not {scheme}:// (did you mean {fixed}?)"
    if scheme not in ("ws", "wss"):
        return f"relay URL must look like ws://host:port or wss://host, not {url!r}"
    if not parts.hostname:
        return f"relay URL {url!r} has no host"
    return None


def _one_line(text: str) -> str:
    clean = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(clean.split())[:_DETAIL_LIMIT]


def _message(body: bytes, reason: str) -> str:
    """The relay's error message from its JSON body, else the reason phrase."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str) and message:
            return _one_line(message)
    except (ValueError, KeyError, TypeError):
        pass
    # The relay's reason phrase ends with its tracking id: the message is enough here.
    return _one_line(reason.split(" TrackingId:")[0])


def classify(status: int, reason: str, headers: dict[str, str], body: bytes) -> ProbeResult:
    """The verdict on a relay's answer to a probe (``headers`` keys lower-case)."""
    message = _message(body, reason)
    if status == 204 or status == 101:
        listeners: int | None = None
        raw = headers.get(LISTENERS_HEADER.lower(), "")
        if raw.isdigit():
            listeners = int(raw)
        return ProbeResult(
            ProbeOutcome.OK, "token and hybrid connection accepted", status, listeners
        )
    if status in (401, 403):
        return ProbeResult(ProbeOutcome.BAD_TOKEN, message, status)
    if status == 404:
        return ProbeResult(ProbeOutcome.NO_SUCH_ENTITY, message, status)
    if status == 400:
        return ProbeResult(ProbeOutcome.UNSUPPORTED, "the relay does not answer probes", status)
    if status in (408, 429) or 500 <= status <= 599:
        return ProbeResult(ProbeOutcome.UNAVAILABLE, message, status)
    return ProbeResult(ProbeOutcome.UNEXPECTED, f"HTTP {status} {message}".strip(), status)


def _request(url: str, action: Action, token: str | None) -> tuple[str, int, bool, bytes]:
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    literal = f"[{host}]" if ":" in host else host
    host_header = literal if port == (443 if secure else 80) else f"{literal}:{port}"
    lines = [
        f"GET {parts.path}?{parts.query} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        f"{PROBE_HEADER}: {action}",
    ]
    if token is not None:
        lines.append(f"ServiceBusAuthorization: {token}")
    return host, port, secure, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]] | None:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


async def _exchange(
    host: str, port: int, ssl_context: ssl.SSLContext | None, request: bytes
) -> ProbeResult:
    reader, writer = await asyncio.open_connection(
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
        limit=_HEAD_LIMIT,
    )
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return ProbeResult(ProbeOutcome.UNEXPECTED, "the relay closed without an answer")
        except asyncio.LimitOverrunError:
            return ProbeResult(ProbeOutcome.UNEXPECTED, "the relay's answer head is too large")
        parsed = _parse_head(head[:-4])
        if parsed is None:
            return ProbeResult(ProbeOutcome.UNEXPECTED, "the answer is not HTTP")
        status, reason, headers = parsed
        body = b""
        length = headers.get("content-length", "")
        if status != 204 and length.isdigit():
            try:
                body = await reader.readexactly(min(int(length), _BODY_LIMIT))
            except asyncio.IncompleteReadError as exc:
                body = exc.partial
        return classify(status, reason, headers, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # a reset after the answer changes nothing
            await writer.wait_closed()


async def probe_relay(
    relay: str,
    hc: str,
    *,
    token_provider: TokenProvider | None,
    action: Action = "connect",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - one bound for the CLI to pass on
) -> ProbeResult:
    """Ask the relay whether ``token_provider``'s token may ``action`` on ``hc``.

    Args:
        relay: relay base URL, ``ws://host:port`` or ``wss://host``.
        hc: hybrid connection name.
        token_provider: what the client itself would sign with (None: anonymous sender).
        action: ``connect`` (a sender: forward, the client library) or ``listen``.
        ssl_context: TLS context for ``wss://`` (default: the system's trust store).
        timeout: bound on the whole probe.

    Returns:
        The verdict; never raises for what the network or the relay does.
    """
    problem = relay_url_problem(relay)
    if problem is not None:
        return ProbeResult(ProbeOutcome.BAD_URL, problem)
    url = listen_uri(relay, hc) if action == "listen" else connect_uri(relay, hc)
    token = None
    if token_provider is not None:
        token = token_provider.token_for(audience_for(url), time.time())
    host, port, secure, request = _request(url, action, token)
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    elif not secure:
        ssl_context = None
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(host, port, ssl_context, request)
    except ssl.SSLCertVerificationError as exc:
        detail = _one_line(exc.verify_message or str(exc))
        return ProbeResult(
            ProbeOutcome.TLS_ERROR, f"certificate not trusted: {detail}", untrusted=True
        )
    except ssl.SSLError as exc:
        detail = _one_line(exc.reason or str(exc))
        return ProbeResult(ProbeOutcome.TLS_ERROR, f"TLS handshake failed ({detail})")
    except TimeoutError:
        return ProbeResult(ProbeOutcome.UNREACHABLE, f"no answer within {timeout:g} s")
    except OSError as exc:
        return ProbeResult(ProbeOutcome.UNREACHABLE, _one_line(exc.strerror or str(exc)))
