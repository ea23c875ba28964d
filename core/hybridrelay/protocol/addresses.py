"""Hybrid Connections addresses: ``/$hc/{entity}[/suffix]`` paths and their ``sb-hc-*`` parameters.

The relay sees four kinds of WebSocket dial under ``/$hc/`` (HC §2.2-2.6): a listener's
control channel (``listen``), a sender (``connect``, also when the action is missing),
and the listener's rendezvous dials (``accept``, or ``accept`` plus a status code for a
reject, and ``request`` in HTTP mode). :func:`parse_hc_target` turns the raw path and
query of such a dial into an :class:`HcAddress`; :func:`build_rendezvous_address` makes
the one-shot address that goes into ``accept.address`` / ``request.address``.
:func:`listen_uri` and :func:`connect_uri` build the two dials a client of the relay
makes; an ``accept`` or ``request`` dial is the relay's address as given, and
:func:`reject_uri` turns an accept address into a reject (HC §2.5). These are the only
places the ``sb-hc-*`` parameters of a dial are spelt.

Everything here is pure string work on the *raw* request target: no sockets, no clock.

Paths never walk: a ``.`` or ``..`` segment, an encoded ``/``, ``.`` or ``\\`` (``%2F``,
``%2E``, ``%5C`` in any case, also encoded twice) or a raw backslash in an entity path
or suffix is refused (:func:`path_escape_reason`). Token scopes are compared segment by
segment on the decoded path, while the listener (and the on-prem service behind it)
sees the raw one and may resolve such segments: ``hc1/public/../private`` would be
covered by a token for ``hc1/public`` and reach ``/private`` behind the listener's base
path. Microsoft's clients never send any of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote

from hybridrelay.errors import InvalidAddressError

__all__ = [
    "RENDEZVOUS_PARAM",
    "Action",
    "HcAddress",
    "HttpTarget",
    "build_rendezvous_address",
    "connect_uri",
    "entity_uri",
    "listen_uri",
    "match_entity",
    "parse_hc_target",
    "parse_http_target",
    "path_escape_reason",
    "reject_uri",
    "strip_relay_params",
]

Action = Literal["listen", "connect", "accept", "request"]

RENDEZVOUS_PARAM: Final = "sb-hc-rdv"
"""Our own rendezvous capability parameter (HC §2.4 INF: listeners pass unknown sb-hc-* through)."""

_ACTIONS: Final[dict[str, Action]] = {
    "listen": "listen",
    "connect": "connect",
    "accept": "accept",
    "request": "request",
}
_MAX_PART_LEN: Final = 8 * 1024
_PREFIXES: Final = ("/$hc/", "/%24hc/")  # HC §2.1: "$" is sent literally; accept "%24" too (INF)
_RELAY_PREFIX: Final = "sb-hc-"
_SAS_PLUS_PREFIX: Final = "sharedaccesssignature+"

# Lower-cased parameter name -> the canonical name used in error messages and for
# duplicate detection. HC §2.5/§2.8: the Node libraries send the reject parameters
# without the "sb-hc-" prefix, so both spellings map to one field.
_PARAMS: Final[dict[str, str]] = {
    "sb-hc-action": "sb-hc-action",
    "sb-hc-id": "sb-hc-id",
    "sb-hc-token": "sb-hc-token",
    "sb-hc-statuscode": "sb-hc-statusCode",
    "statuscode": "sb-hc-statusCode",
    "sb-hc-statusdescription": "sb-hc-statusDescription",
    "statusdescription": "sb-hc-statusDescription",
    RENDEZVOUS_PARAM: RENDEZVOUS_PARAM,
}

_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
# What may stay as it is in a query (RFC 3986 §3.4: pchar / "/" / "?"), plus "%" so that the
# sender's escapes (and a stray "%", which no delimiter is) pass byte for byte. quote()
# always keeps letters, digits and "_.-~". Everything else (a "#" above all, which would
# turn the rest of the address into a fragment) is %-encoded as UTF-8.
_QUERY_SAFE: Final = "!$&'()*+,;=:@/?%"
_CONTROL_CHAR: Final = re.compile(r"[\x00-\x1f\x7f]")
# "%2F", "%2E", "%5C" in any case: a "/", "." or "\\" some later decoder may act on.
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:2[EeFf]|5[Cc])")
_DOT_SEGMENTS: Final = frozenset({".", ".."})
# RFC 3986 unreserved characters: what quote() never encodes, whatever ``safe`` says. A
# relay's tracking ids, keys and usual entity names are nothing else; quote() costs
# about 1 µs each on a path every connect and HTTP-mode request takes.
_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class HcAddress:
    """What a ``/$hc/...`` dial asks for.

    Attributes:
        path: The percent-decoded path after ``/$hc/`` (entity plus suffix), no leading "/".
        action: ``sb-hc-action``, lower-cased; ``"connect"`` when missing (HC §2.3).
        tracking_id: ``sb-hc-id``, or None when absent or empty.
        token: ``sb-hc-token``, decoded once, or None when absent or empty.
        status_code: The reject status (``sb-hc-statusCode`` or ``statusCode``), 100..599.
        status_description: The reject reason (``sb-hc-statusDescription`` or its alias).
        rendezvous_key: Our ``sb-hc-rdv`` capability, or None.
        app_query: The raw query minus every relay parameter, order kept, without "?".
    """

    path: str
    action: Action = "connect"
    tracking_id: str | None = None
    token: str | None = None
    status_code: int | None = None
    status_description: str | None = None
    rendezvous_key: str | None = None
    app_query: str = ""


def _short(value: str) -> str:
    """Quote a peer-supplied value for an error message, cut so errors stay small."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _strict_unquote(text: str, what: str, *, plus_is_space: bool = False) -> str:
    """Percent-decode once, refusing broken escapes and invalid UTF-8 (HC §2.1 INF)."""
    if _BAD_ESCAPE.search(text):
        raise InvalidAddressError(f"bad percent-escape in {what}")
    if plus_is_space:
        text = text.replace("+", " ")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidAddressError(f"{what} is not valid UTF-8 after percent-decoding") from exc


def _query_parts(raw_query: str) -> list[str]:
    # A single leading "?" is tolerated so callers may pass either form.
    return raw_query.removeprefix("?").split("&")


def _is_relay_pair(part: str) -> bool:
    # HC §2.8: NET/JAVA hide only key=value pairs whose key starts with "sb-hc-",
    # compared case-insensitively ("sb-hc-undefined" without "=" stays).
    name, sep, _ = part.partition("=")
    head = name[: len(_RELAY_PREFIX)]
    return bool(sep) and head.isascii() and head.lower() == _RELAY_PREFIX


def _param_name(name: str) -> str | None:
    """Return the canonical name of a parameter we interpret, "" for other sb-hc-*, else None."""
    if name.isascii():
        canonical = _PARAMS.get(name.lower())
        if canonical is not None:
            return canonical
    head = name[: len(_RELAY_PREFIX)]
    if head.isascii() and head.lower() == _RELAY_PREFIX:
        return ""
    return None


def path_escape_reason(raw_path: str) -> str | None:
    """Why a raw path could reach beyond the entity or suffix it names, or None.

    Refused: a ``.`` or ``..`` segment (RFC 3986 §5.2.4 removes them, and so do most
    HTTP servers), ``%2F``/``%2E``/``%5C`` in any case (a server that decodes before it
    resolves sees ``/``, ``.`` or ``\\``), the same escapes encoded once more
    (``%252E``, for a server that decodes twice) and a raw backslash (a separator to
    Windows servers and to some URL parsers).

    Args:
        raw_path: A path as sent, still percent-encoded (with or without its leading "/",
            without the query).

    Returns:
        A short reason for an error message, or None when the path is safe to scope-check
        and to forward.
    """
    if "\\" in raw_path:
        return "backslash in path"
    if _ENCODED_SEPARATOR.search(raw_path) or _ENCODED_SEPARATOR.search(
        raw_path.replace("%25", "%")
    ):
        return "encoded '/', '.' or '\\' in path"
    if not _DOT_SEGMENTS.isdisjoint(raw_path.split("/")):
        return "'.' or '..' segment in path"
    return None


def _refuse_escape(raw_path: str) -> None:
    why = path_escape_reason(raw_path)
    if why is not None:
        raise InvalidAddressError(why)


def _parse_path(raw_path: str) -> str:
    if raw_path in ("/$hc", "/%24hc"):
        raise InvalidAddressError("empty entity path")
    for prefix in _PREFIXES:
        if raw_path.startswith(prefix):
            rest = raw_path[len(prefix) :]
            break
    else:
        raise InvalidAddressError("path is not under /$hc/")
    if "?" in rest or "#" in rest:
        # A caller passed a path with its query (aiohttp's request.raw_path does that).
        raise InvalidAddressError("path contains '?' or '#'")
    _refuse_escape(rest)  # before any decoding or scope check
    path = _strict_unquote(rest, "path")
    if not path or path.startswith("/"):
        raise InvalidAddressError("empty entity path")
    if _CONTROL_CHAR.search(path):
        raise InvalidAddressError("control character in path")
    return path


def _decode_param(canonical: str, raw_value: str) -> str:
    if canonical == "sb-hc-token":
        # HC §8.4: the token is decoded exactly once, with "+" kept, because the raw
        # token may legitimately hold "+" (NET's sr uses "+" for a space, and
        # signatures are verified over that raw text). The one "+" that means a space
        # is the separator after the scheme word: hyco's encodeURIComponent sends it as
        # "%20", NET's WebUtility.UrlEncode as "+".
        token = _strict_unquote(raw_value, canonical)
        if token[: len(_SAS_PLUS_PREFIX)].lower() == _SAS_PLUS_PREFIX:
            token = token[: len(_SAS_PLUS_PREFIX) - 1] + " " + token[len(_SAS_PLUS_PREFIX) :]
        return token
    # HC §2.5: NET encodes the reject description with WebUtility.UrlEncode (space -> "+").
    value = _strict_unquote(
        raw_value, canonical, plus_is_space=canonical == "sb-hc-statusDescription"
    )
    if _CONTROL_CHAR.search(value):
        # The description becomes an HTTP reason phrase and the id goes into logs.
        raise InvalidAddressError(f"control character in {canonical}")
    if canonical == "sb-hc-action":
        return value.lower() if value.isascii() else value
    return value


def _status_code(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise InvalidAddressError("sb-hc-statusCode is not an integer")
    code = int(value)
    if not 100 <= code <= 599:
        raise InvalidAddressError("sb-hc-statusCode is not in 100..599")
    return code


def parse_hc_target(raw_path: str, raw_query: str) -> HcAddress:
    """Parse the raw target of a WebSocket dial under ``/$hc/`` (HC §2.2-2.6, §2.8).

    Parameter names are matched case-insensitively, action values are lower-cased, and
    both reject spellings (``sb-hc-statusCode`` and the Node libraries' ``statusCode``,
    likewise the description) are understood. Relay parameters are decoded once; the
    reject description also turns "+" into a space (NET's encoding). Unknown ``sb-hc-*``
    parameters are ignored and, like every relay parameter, left out of ``app_query``.
    A parameter given twice must carry the same value each time.

    Args:
        raw_path: The request path as sent, starting with ``/$hc/`` or ``/%24hc/``,
            without the query.
        raw_query: The raw query string, without or with a leading "?".

    Returns:
        The parsed address.

    Raises:
        InvalidAddressError: The path is not under ``/$hc/``, the entity path is empty,
            a percent-escape is broken, the action is unknown, the status code is not an
            integer in 100..599, a parameter is repeated with a different value, a
            control character appears, the path could walk out of its entity
            (:func:`path_escape_reason`), or the path or query is over 8 KiB.
    """
    if len(raw_path) > _MAX_PART_LEN:
        raise InvalidAddressError("path is longer than 8 KiB", limit="address_part_size")
    if len(raw_query) > _MAX_PART_LEN:
        raise InvalidAddressError("query is longer than 8 KiB", limit="address_part_size")
    path = _parse_path(raw_path)

    values: dict[str, str] = {}
    kept: list[str] = []
    for part in _query_parts(raw_query):
        name, sep, raw_value = part.partition("=")
        canonical = _param_name(name) if sep else None
        if canonical is None:
            kept.append(part)
            continue
        if not canonical:
            continue  # another sb-hc-* parameter: not ours to interpret, never forwarded
        value = _decode_param(canonical, raw_value)
        if values.setdefault(canonical, value) != value:
            raise InvalidAddressError(f"{canonical} given twice with different values")

    raw_action = values.get("sb-hc-action", "connect")
    action = _ACTIONS.get(raw_action)
    if action is None:
        raise InvalidAddressError(f"unknown sb-hc-action {_short(raw_action)}")
    raw_code = values.get("sb-hc-statusCode")
    return HcAddress(
        path=path,
        action=action,
        tracking_id=values.get("sb-hc-id") or None,
        token=values.get("sb-hc-token") or None,
        status_code=None if raw_code is None else _status_code(raw_code),
        status_description=values.get("sb-hc-statusDescription") or None,
        rendezvous_key=values.get(RENDEZVOUS_PARAM) or None,
        app_query="&".join(kept),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpTarget:
    """An HTTP-mode request target (HC §2.7, §2.10)."""

    path: str  # percent-decoded path without the leading "/" (entity + suffix)
    token: str | None  # sb-hc-token from the query, decoded once
    request_target: str  # what the listener sees: raw path + query without sb-hc-* pairs


def parse_http_target(raw_path: str, raw_query: str) -> HttpTarget:
    """Parse the target of an HTTP-mode request (no ``$hc``).

    Args:
        raw_path: The path as sent, starting with "/".
        raw_query: The raw query, without "?" (empty when there is none).

    Returns:
        The decoded entity path, the query token if any, and the ``requestTarget`` for the
        listener: the raw path and query byte for byte, minus every ``sb-hc-*=`` pair.

    Raises:
        InvalidAddressError: The path is not absolute, is over 8 KiB, has a broken escape
            or a control character, could walk out of its entity or suffix
            (:func:`path_escape_reason`), holds a raw ``#``, or the query is over 8 KiB.
    """
    if len(raw_path) > _MAX_PART_LEN:
        raise InvalidAddressError("path is longer than 8 KiB", limit="address_part_size")
    if len(raw_query) > _MAX_PART_LEN:
        raise InvalidAddressError("query is longer than 8 KiB", limit="address_part_size")
    if not raw_path.startswith("/"):
        raise InvalidAddressError("path must start with '/'")
    if "#" in raw_path or "#" in raw_query:
        # RFC 9112 §3.2: a request target carries no fragment. Passed on, the listener's
        # URL for its target would end where the sender's "#" stood.
        raise InvalidAddressError("'#' in request target")
    _refuse_escape(raw_path)  # before any decoding or scope check
    path = _strict_unquote(raw_path[1:], "path")
    if _CONTROL_CHAR.search(path):
        raise InvalidAddressError("control character in path")
    token: str | None = None
    for part in _query_parts(raw_query):
        name, sep, raw_value = part.partition("=")
        if sep and _param_name(name) == "sb-hc-token":
            token = _decode_param("sb-hc-token", raw_value) or None
    kept = strip_relay_params(raw_query) if raw_query else ""
    target = raw_path + ("?" + kept if kept else "")
    return HttpTarget(path=path, token=token, request_target=target)


def strip_relay_params(raw_query: str) -> str:
    """Remove the relay's parameters from a query, keeping everything else byte for byte.

    HC §2.10: every ``key=value`` pair whose key starts with ``sb-hc-`` (any case) goes;
    pairs without "=", empty pairs, repeated keys and escapes stay as sent and in order.
    The ``statusCode`` aliases are not ``sb-hc-`` names and stay too.

    Args:
        raw_query: The raw query string, without or with a leading "?".

    Returns:
        The remaining query without "?" (for example ``"custom=value"`` from
        ``"?sb-hc-id=1&custom=value"``, and ``"&&&"`` from ``"?&&&"``).
    """
    return "&".join(part for part in _query_parts(raw_query) if not _is_relay_pair(part))


def match_entity(path: str, entities: Iterable[str]) -> tuple[str, str] | None:
    """Find the registered entity a decoded path addresses (HC §2.1).

    The longest entity that equals the path, or is a prefix of it ending at a "/"
    boundary, wins; the comparison ignores case. Among entities of equal length that
    both match, the first one given wins.

    Args:
        path: A decoded entity path with optional suffix, e.g. ``"a/b/sub/x"``.
        entities: The registered entity names, e.g. ``["a", "a/b"]``.

    Returns:
        ``(entity as registered, suffix)`` where the suffix is ``""`` or starts with
        "/", or None when no entity matches.
    """
    best: tuple[str, str] | None = None
    for entity in entities:
        n = len(entity)
        if not entity or n > len(path) or (best is not None and n <= len(best[0])):
            continue
        # Compare equal-length slices so case mapping can never shift the boundary.
        if path[:n].casefold() != entity.casefold():
            continue
        suffix = path[n:]
        if suffix and not suffix.startswith("/"):
            continue
        best = (entity, suffix)
    return best


def build_rendezvous_address(
    *,
    public_url: str,
    entity: str,
    suffix: str,
    app_query: str,
    action: Literal["accept", "request"],
    tracking_id: str,
    rendezvous_key: str,
) -> str:
    """Build the one-shot address a listener dials for one sender (HC §2.4, §2.6, §3.1).

    The path keeps the sender's suffix and the query keeps the sender's application
    parameters (HC §2.4), followed by ``sb-hc-action``, ``sb-hc-id`` and our
    ``sb-hc-rdv`` capability. :func:`parse_hc_target` reads it back.

    Args:
        public_url: The relay's public base URL, like ``"wss://relay.example.com"``; it
            decides the scheme, host and port of the listener's dial (HC §12.7).
        entity: The registered entity name (decoded).
        suffix: The decoded path suffix, ``""`` or starting with "/".
        app_query: The sender's raw application query (``HcAddress.app_query``).
        action: ``"accept"`` for WebSocket senders, ``"request"`` for HTTP mode.
        tracking_id: The id that also goes into the message's ``id`` field.
        rendezvous_key: The unguessable single-use key.

    Every part is encoded for its place: the sender's query keeps its pairs, separators and
    escapes, while characters that a URL parser would read differently (``#``, spaces,
    controls, non-ASCII) are %-encoded, so the listener decodes the same values and the
    relay's own parameters after them stay in the query.

    Returns:
        The address, e.g. ``wss://relay.example.com/$hc/hyco/x?a=1&sb-hc-action=accept&sb-hc-id=7&sb-hc-rdv=k``.

    Raises:
        InvalidAddressError: The query holds text that is not UTF-8 (undecodable bytes
            of the request line).
    """
    try:
        # surrogateescape: bytes the HTTP parser could not decode go back out as they came.
        query = quote(app_query, safe=_QUERY_SAFE, errors="surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidAddressError("query is not valid UTF-8") from exc
    query = f"{query}&" if query else ""
    return (
        f"{public_url.rstrip('/')}/$hc/{_quote(entity, '/')}{_quote(suffix, '/')}"
        f"?{query}sb-hc-action={action}&sb-hc-id={_quote(tracking_id, '')}"
        f"&{RENDEZVOUS_PARAM}={_quote(rendezvous_key, '')}"
    )


def _quote(text: str, safe: str) -> str:
    """``quote(text, safe=safe)``, skipped for text it would return unchanged anyway."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe=safe)


def entity_uri(host: str, entity: str) -> str:
    """Return the token audience of an entity, as hyco's HTTP sender builds it (HC §8.2).

    Args:
        host: The namespace host, with a port if the relay is not on the default one.
        entity: The entity name.

    Returns:
        ``f"http://{host}/{entity}"``.
    """
    return f"http://{host}/{entity}"


def _hc_uri(relay: str, hc: str, action: Literal["listen", "connect"]) -> str:
    return f"{relay.rstrip('/')}/$hc/{quote(hc.strip('/'), safe='/')}?sb-hc-action={action}"


def listen_uri(relay: str, hc: str, listener_id: str | None = None) -> str:
    """The control-channel address a listener dials (HC §2.2).

    Args:
        relay: The relay's base URL, ``ws://host:port`` or ``wss://host``.
        hc: The hybrid connection name (may contain "/").
        listener_id: Sent as ``sb-hc-id`` when given.

    Returns:
        ``{relay}/$hc/{hc}?sb-hc-action=listen[&sb-hc-id={listener_id}]``.
    """
    uri = _hc_uri(relay, hc, "listen")
    if listener_id:
        uri += f"&sb-hc-id={quote(listener_id, safe='')}"
    return uri


def connect_uri(relay: str, hc: str, tracking_id: str | None = None) -> str:
    """The address a WebSocket sender dials (HC §2.3).

    Args:
        relay: The relay's base URL.
        hc: The hybrid connection name (may contain "/").
        tracking_id: Sent as ``sb-hc-id`` when given.

    Returns:
        ``{relay}/$hc/{hc}?sb-hc-action=connect[&sb-hc-id={tracking_id}]``.
    """
    uri = _hc_uri(relay, hc, "connect")
    if tracking_id:
        uri += f"&sb-hc-id={quote(tracking_id, safe='')}"
    return uri


def reject_uri(address: str, status: int, description: str) -> str:
    """The dial that rejects an ``accept`` (HC §2.5): its address plus a status.

    Args:
        address: ``accept.address`` as the relay sent it (it has a query already).
        status: The HTTP status the sender gets.
        description: The reason phrase the sender gets.
    """
    return (
        f"{address}&sb-hc-statusCode={status}&sb-hc-statusDescription={quote(description, safe='')}"
    )
