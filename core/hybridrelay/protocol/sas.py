"""Shared Access Signature tokens: create, parse, verify and scope-check them (HC §8).

Tokens look like ``SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={rule}``.
They are created the way Microsoft's Node clients (hyco-ws, hyco-https) create them, so the
test vectors of HC §8.3 come out byte for byte, and verified in the way that accepts every
client family: the signature is checked over the ``sr`` and ``se`` text exactly as it
appears in the token, because clients differ in how they percent-encode ``sr``.

Nothing here reads the clock: expiry checks and token renewal take ``now`` from the caller.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
from collections.abc import Iterable, Set as AbstractSet
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from hybridrelay.errors import AuthError, InvalidAddressError

__all__ = [
    "DeviceToken",
    "Rights",
    "SasToken",
    "SasTokenProvider",
    "TokenProvider",
    "audience_for",
    "create_sas_token",
    "device_signed_with",
    "parse_device_token",
    "parse_sas_token",
    "resource_covers",
    "token_expiry",
    "verify_signature",
]

_SCHEME_WORD: Final = "SharedAccessSignature"
_MAX_TOKEN_BYTES: Final = 4 * 1024
_MAX_SE_DIGITS: Final = 15
_SIGNATURE_BYTES: Final = 32  # HMAC-SHA256
# What JavaScript's encodeURIComponent leaves alone; hyco encodes sr and sig with it (HC Part 2 §4).
_URI_COMPONENT_SAFE: Final = "-_.!~*'()"
_SR_SCHEMES: Final = frozenset({"http", "https", "sb", "ws", "wss"})
_FIELDS: Final = ("sr", "sig", "se", "skn")


class Rights(enum.Flag):
    """The rights a SAS rule grants (HC §8.5)."""

    LISTEN = enum.auto()
    SEND = enum.auto()
    MANAGE = enum.auto()

    @classmethod
    def parse(cls, names: Iterable[str]) -> Rights:
        """Combine rule right names such as ``["Listen", "Send"]``.

        Args:
            names: ``"Listen"``, ``"Send"`` or ``"Manage"`` in any case, surrounding
                spaces ignored. A single string is read as a comma-separated list.

        Returns:
            The union of the named rights (empty when no name is given).

        Raises:
            ValueError: A name is not one of the three; the message names it.
        """
        if isinstance(names, str):
            names = names.split(",") if names.strip() else []
        result = cls(0)
        for name in names:
            key = name.strip()
            right = _RIGHT_NAMES.get(key.lower()) if key.isascii() else None
            if right is None:
                raise ValueError(f"unknown right {name!r} (expected Listen, Send or Manage)")
            result |= right
        return result

    def effective(self) -> Rights:
        """Return these rights with Manage expanded to Manage, Listen and Send (HC §8.5)."""
        if Rights.MANAGE in self:
            return self | Rights.LISTEN | Rights.SEND
        return self

    def allows(self, needed: Rights) -> bool:
        """Tell whether these rights include ``needed`` (Manage implies Listen and Send).

        Args:
            needed: The rights an action needs, e.g. ``Rights.LISTEN`` for ``listen``.

        Returns:
            True when every needed right is granted.
        """
        return (needed & self.effective()) == needed


_RIGHT_NAMES: Final[dict[str, Rights]] = {
    "listen": Rights.LISTEN,
    "send": Rights.SEND,
    "manage": Rights.MANAGE,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SasToken:
    """A parsed SAS token.

    Attributes:
        raw_sr: ``sr`` exactly as it appears in the token, still percent-encoded; the
            signature covers this text (HC §8.1).
        raw_se: ``se`` exactly as it appears in the token; the signature covers it too.
        signature: The base64-decoded ``sig`` (32 bytes).
        expiry: ``se`` as an integer, seconds since the Unix epoch.
        key_name: ``skn``, percent-decoded: the name of the rule that signed the token.
        resource: ``raw_sr`` decoded once, for scope checks only.
    """

    raw_sr: str
    raw_se: str
    signature: bytes
    expiry: int
    key_name: str
    resource: str

    def __repr__(self) -> str:
        # Keep signatures out of logs and tracebacks.
        return (
            f"SasToken(resource={self.resource!r}, expiry={self.expiry}, "
            f"key_name={self.key_name!r})"
        )


def audience_for(uri: str) -> str:
    """Normalise a URI into the token audience hyco's ``createRelayToken`` signs (HC §8.2).

    The scheme becomes ``http``, user info, query and fragment go, the host is
    lower-cased (Node's ``url.parse`` does that), the port stays, an empty path becomes
    "/" and the first ``$hc/`` in the path is removed.

    Args:
        uri: A relay URI such as ``"wss://localhost:8443/$hc/hyco?sb-hc-action=connect"``.

    Returns:
        The audience, e.g. ``"http://localhost:8443/hyco"``.

    Raises:
        InvalidAddressError: The URI is malformed or has no host.
    """
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidAddressError("token audience URI is malformed") from exc
    host = parts.netloc.rpartition("@")[2].lower()
    if not host:
        raise InvalidAddressError("token audience URI has no host")
    path = (parts.path or "/").replace("$hc/", "", 1)
    return f"http://{host}{path}"


def _sign(key: str, raw_sr: str, raw_se: str) -> bytes:
    # HC §8.1: HMAC-SHA256 keyed with the UTF-8 bytes of the key text (not base64-decoded).
    message = f"{raw_sr}\n{raw_se}".encode("utf-8", "surrogatepass")
    return hmac.new(key.encode("utf-8", "surrogatepass"), message, hashlib.sha256).digest()


def create_sas_token(resource_uri: str, key_name: str, key: str, expiry: int) -> str:
    """Create a token the way hyco's ``createRelayToken`` does (HC Part 2 §4, vectors in §8.3).

    Args:
        resource_uri: Any URI of the resource; it is normalised with :func:`audience_for`,
            so a listen/connect URI, an HTTP URI or a namespace URI all work.
        key_name: The rule name (``skn``). hyco sends it raw; it is percent-encoded here
            only where it holds characters outside ``encodeURIComponent``'s safe set,
            which plain rule names never do.
        key: The rule's key text as shown in the portal.
        expiry: The absolute expiry, seconds since the Unix epoch.

    Returns:
        ``SharedAccessSignature sr=...&sig=...&se=...&skn=...``.

    Raises:
        InvalidAddressError: ``resource_uri`` has no host.
    """
    sr = quote(audience_for(resource_uri), safe=_URI_COMPONENT_SAFE)
    se = str(expiry)
    sig = base64.b64encode(_sign(key, sr, se)).decode("ascii")
    return (
        f"{_SCHEME_WORD} sr={sr}&sig={quote(sig, safe=_URI_COMPONENT_SAFE)}"
        f"&se={se}&skn={quote(key_name, safe=_URI_COMPONENT_SAFE)}"
    )


def _decode_signature(raw_sig: str) -> bytes:
    # HC §8.1: decode sig once before comparing. unquote, not unquote_plus: a raw "+" in
    # sig is the base64 character. A space can only come from someone form-decoding the
    # token on the way in, so it is mapped back to the "+" it was.
    text = unquote(raw_sig).replace(" ", "+")
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthError("sig is not valid base64") from exc
    if len(signature) != _SIGNATURE_BYTES:
        raise AuthError("sig is not an HMAC-SHA256 signature")
    return signature


def _token_fields(text: str) -> list[tuple[str, str]]:
    """Split a ``SharedAccessSignature`` token into (lower-case name, raw value) pairs.

    The one reader of the token's outer shape, for rule tokens and device tokens alike:
    the 4 KiB cap counts UTF-8 bytes (what crosses the wire), the scheme word and the
    field names are case-insensitive (ASCII only: ``str.lower`` would fold e.g. the
    Kelvin sign into ``k``), empty fields are skipped.

    Raises:
        AuthError: Over 4 KiB, not a SharedAccessSignature, or a field without ``=``.
    """
    if (
        len(text) > _MAX_TOKEN_BYTES
        or len(text.encode("utf-8", "surrogatepass")) > _MAX_TOKEN_BYTES
    ):
        raise AuthError("token longer than 4 KiB", limit="sas_token_size")
    word, sep, rest = text.strip().partition(" ")
    if not sep or word.lower() != _SCHEME_WORD.lower():
        # e.g. a JWT, which NET sends in the same header (HC §8.4).
        raise AuthError("not a SharedAccessSignature")
    pairs: list[tuple[str, str]] = []
    for part in rest.lstrip(" ").split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise AuthError("malformed token field")
        pairs.append((name.lower() if name.isascii() else name, value))
    return pairs


def parse_sas_token(text: str) -> SasToken:
    """Parse a ``SharedAccessSignature`` token (HC §8.1).

    Field names are case-insensitive and may come in any order; unknown fields are
    ignored. The scheme word is case-insensitive too. Error messages never contain
    the signature.

    Args:
        text: The raw token, as found in the ``ServiceBusAuthorization`` header or in
            ``sb-hc-token`` after one percent-decoding.

    Returns:
        The parsed token; its signature is not checked yet (see :func:`verify_signature`).

    Raises:
        AuthError: The token is missing, over 4 KiB, not a SharedAccessSignature, has a
            malformed, missing, empty or repeated field, a non-integer ``se`` or a ``sig``
            that is not base64 of 32 bytes.
    """
    if not text or text.isspace():
        raise AuthError("token missing")
    fields: dict[str, str] = {}
    for name, value in _token_fields(text):
        if name in _FIELDS:
            if name in fields:
                raise AuthError(f"duplicate field {name}")
            fields[name] = value
    for name in _FIELDS:
        if name not in fields:
            raise AuthError(f"missing field {name}")
        if not fields[name]:
            raise AuthError(f"empty field {name}")
    raw_se = fields["se"]
    if not (raw_se.isascii() and raw_se.isdigit() and len(raw_se) <= _MAX_SE_DIGITS):
        raise AuthError("se is not an integer")
    raw_sr = fields["sr"]
    return SasToken(
        raw_sr=raw_sr,
        raw_se=raw_se,
        signature=_decode_signature(fields["sig"]),
        expiry=int(raw_se),
        key_name=unquote(fields["skn"]),
        # Every known encoder (hyco's encodeURIComponent, NET's WebUtility.UrlEncode,
        # Python's quote(safe="")) writes a literal "+" as %2B; only NET writes a raw
        # "+", and it means a space (HC §8.1).
        resource=unquote_plus(raw_sr),
    )


# --- device SAS tokens (IoT Hub style; created by hybridrelay.protocol.device_sas) --------

_DEVICES_SEGMENT: Final = "devices"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceToken:
    """A parsed device SAS token; its signature is not checked yet.

    Attributes:
        raw_sr: ``sr`` exactly as sent (the signature covers this text).
        raw_se: ``se`` exactly as sent.
        signature: The decoded ``sig`` (32 bytes).
        expiry: ``se`` as Unix seconds.
        host: The host (and port) part of ``sr``; may be empty.
        device_id: The deviceId of ``sr``, percent-decoded once.
    """

    raw_sr: str
    raw_se: str
    signature: bytes
    expiry: int
    host: str
    device_id: str

    def __repr__(self) -> str:  # never the signature
        return f"DeviceToken(device_id={self.device_id!r}, host={self.host!r}, se={self.expiry})"

    @property
    def candidate_ids(self) -> tuple[str, ...]:
        """The deviceId as decoded once and, when it still holds escapes, twice."""
        twice = unquote(self.device_id)
        return (self.device_id,) if twice == self.device_id else (self.device_id, twice)


def _device_resource(resource: str) -> tuple[str, str] | None:
    """``[scheme://]host/devices/{id}[/]`` → (host, id), or None for any other shape."""
    rest = resource.partition("://")[2] if "://" in resource else resource
    host, slash, path = rest.partition("/")
    if not slash:
        return None
    segment, slash, device_id = path.rstrip("/").partition("/")
    if not slash or segment.lower() != _DEVICES_SEGMENT or not device_id or "/" in device_id:
        return None
    return host, device_id


def parse_device_token(text: str | None) -> DeviceToken | None:
    """Recognise a device SAS token (``skn`` absent or empty, ``sr`` naming a device).

    Args:
        text: A token as sent; SAS tokens of rules, JWTs and garbage are not device tokens.

    Returns:
        The parsed token, or None when ``text`` is not shaped like a device token (the
        caller then treats it as any other token, which reports what is wrong with it).

    Raises:
        AuthError: The token names a device but its ``se`` or ``sig`` is malformed.
    """
    if not text:
        return None
    fields: dict[str, str] = {}
    try:
        pairs = _token_fields(text)
    except AuthError:
        return None
    for name, value in pairs:
        if name in fields:  # any field twice: not a device token
            return None
        fields[name] = value
    if fields.get("skn") or not fields.get("sr"):
        return None
    raw_sr = fields["sr"]
    # No unquote_plus: "+" is a legal deviceId character and no device SDK writes spaces.
    target = _device_resource(unquote(raw_sr))
    if target is None:
        return None
    raw_se = fields.get("se", "")
    if not (raw_se.isascii() and raw_se.isdigit() and len(raw_se) <= _MAX_SE_DIGITS):
        raise AuthError("se is not an integer")
    host, device_id = target
    return DeviceToken(
        raw_sr=raw_sr,
        raw_se=raw_se,
        signature=_decode_signature(fields.get("sig", "")),
        expiry=int(raw_se),
        host=host,
        device_id=device_id,
    )


def _device_key_bytes(key: str) -> Iterable[bytes]:
    yield key.encode("utf-8", "surrogatepass")  # as the relay's rule tokens are signed
    try:
        yield base64.b64decode(key, validate=True)  # as IoT Hub device tokens are signed
    except (binascii.Error, ValueError):
        return


def device_signed_with(token: DeviceToken, key: str) -> bool:
    """Whether ``key`` (a device's primary or secondary key) signed ``token``.

    The key is tried as its text (how the relay's rule tokens are signed) and
    base64-decoded (how IoT Hub and its device SDKs sign), so both kinds of tooling work.
    """
    message = f"{token.raw_sr}\n{token.raw_se}".encode("utf-8", "surrogatepass")
    return any(
        hmac.compare_digest(hmac.new(k, message, hashlib.sha256).digest(), token.signature)
        for k in _device_key_bytes(key)
    )


def verify_signature(token: SasToken, key: str) -> bool:
    """Check a token's signature against a rule key, in constant time (HC §8.1).

    Args:
        token: A parsed token.
        key: The key text of the rule named by ``token.key_name``.

    Returns:
        True when ``sig`` is HMAC-SHA256 of ``raw_sr + "\\n" + raw_se`` under ``key``.
    """
    return hmac.compare_digest(_sign(key, token.raw_sr, token.raw_se), token.signature)


def _path_segments(path: str) -> list[str]:
    return [segment.casefold() for segment in path.split("/")]


def resource_covers(
    resource: str, *, host: str | AbstractSet[str] | None, entity_path: str
) -> bool:
    """Tell whether a token's resource scopes an entity (HC §8.2 scope rule).

    The scheme (http, https, sb, ws, wss) and port are ignored; the host is compared
    case-insensitively unless ``host`` is None; query and fragment are ignored. A
    leading ``$hc/`` segment and trailing "/" are dropped from the resource path, and
    the entity path must equal it or extend it at a "/" boundary, case-insensitively.
    An empty resource path (``http://ns/``) covers every entity of the host.

    Args:
        resource: The decoded resource (``SasToken.resource``). It is not decoded
            again: an escape left in it never widens the scope.
        host: The host the token must name (a port is ignored); a set of lower-case
            host names (no ports) any of which it may name, such as a relay's
            configured public names; or None to skip the host check.
        entity_path: The registered entity, e.g. ``"hyco"`` or ``"a/b/c"``.

    Returns:
        True when the token may be used for the entity.
    """
    try:
        parts = urlsplit(resource)
        sr_host = parts.hostname
        wanted = {urlsplit(f"//{host}").hostname} if isinstance(host, str) else host
    except ValueError:
        return False
    if parts.scheme.lower() not in _SR_SCHEMES or not sr_host:
        return False
    if wanted is not None and sr_host not in wanted:
        return False
    path = parts.path.removeprefix("/")
    if path.lower() == "$hc" or path[:4].lower() == "$hc/":
        path = path[4:]
    path = path.rstrip("/")
    if not path:
        return True
    scope = _path_segments(path)
    entity = _path_segments(entity_path.strip("/"))
    return entity[: len(scope)] == scope


def token_expiry(token_text: str) -> int | None:
    """Return a token's ``se``, or None when it is not a well-formed SAS token.

    A rule's token and a device's (no ``skn``, :mod:`hybridrelay.protocol.device_sas`)
    both count: a listener renews either on this schedule.

    Args:
        token_text: A raw token.

    Returns:
        The expiry in seconds since the Unix epoch, or None.
    """
    try:
        return parse_sas_token(token_text).expiry
    except AuthError:
        pass
    try:
        device = parse_device_token(token_text)
    except AuthError:
        return None
    return device.expiry if device is not None else None


class TokenProvider(Protocol):
    """Something that hands out a token for an audience (a SAS key, a JWT source...)."""

    def token_for(self, audience: str, now: float) -> str:
        """Return a token valid for ``audience`` at time ``now`` (Unix seconds)."""
        ...


class SasTokenProvider:
    """Makes SAS tokens from one rule key and reuses them until they near expiry.

    A cached token is reissued once less than a quarter of its lifetime remains, so a
    listener that renews on the provider's schedule never presents a stale token.
    The key never appears in ``repr``.
    """

    __slots__ = ("_cache", "_key", "_key_name", "_ttl")

    def __init__(self, key_name: str, key: str, ttl: int = 3600) -> None:
        """Set up the provider.

        Args:
            key_name: The rule name (``skn``).
            key: The rule's key text.
            ttl: Token lifetime in seconds (hyco and NET default to one hour, HC §6).

        Raises:
            ValueError: ``ttl`` is not positive.
        """
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._key_name = key_name
        self._key = key
        self._ttl = ttl
        self._cache: dict[str, tuple[str, int]] = {}

    @property
    def key_name(self) -> str:
        """The rule name the tokens carry."""
        return self._key_name

    @property
    def ttl(self) -> int:
        """The lifetime of a new token, in seconds."""
        return self._ttl

    def __repr__(self) -> str:
        return f"SasTokenProvider(key_name={self._key_name!r}, ttl={self._ttl})"

    def token_for(self, audience: str, now: float) -> str:
        """Return a token for ``audience``, reusing the cached one while it is fresh.

        Args:
            audience: Any URI of the resource (normalised with :func:`audience_for`).
            now: The current time, seconds since the Unix epoch.

        Returns:
            A token valid for at least a quarter of ``ttl`` after ``now``.

        Raises:
            InvalidAddressError: ``audience`` has no host.
        """
        cached = self._cache.get(audience)
        if cached is not None and cached[1] - now >= self._ttl / 4:
            return cached[0]
        expiry = math.floor(now) + self._ttl  # hyco floors the expiry (HC §8.1)
        token = create_sas_token(audience, self._key_name, self._key, expiry)
        # Drop expired entries so a long-lived provider does not grow without bound.
        self._cache = {a: entry for a, entry in self._cache.items() if entry[1] > now}
        self._cache[audience] = (token, expiry)
        return token
