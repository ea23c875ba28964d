"""Device SAS tokens: what a device of the relay's identity registry signs (issue 5, issue 12).

A device authenticates like an Azure IoT Hub device, not like a SAS rule::

    SharedAccessSignature sr={url-encoded host/devices/{deviceId}}&sig={signature}&se={expiry}

- ``sr`` is ``{host}/devices/{deviceId}``: the relay's host name (no scheme; a port is
  ignored by the relay), the literal ``devices`` and the deviceId, the whole of it
  percent-encoded once (Python's ``quote(..., safe="")``, as the azure-iot-device SDK does);
- there is no ``skn`` (the deviceId in ``sr`` says whose key signed it);
- ``sig`` is base64 of HMAC-SHA256 over ``sr + "\\n" + se`` (``sr`` as encoded in the
  token), keyed with the **base64-decoded** device key. Rule tokens are keyed with the
  key's text instead (:mod:`hybridrelay.protocol.sas`); the relay accepts both for devices,
  this module signs the IoT Hub way so the same token works against IoT Hub tooling.

Tokens are read (parsed, verified) by :mod:`hybridrelay.protocol.sas` only
(``parse_device_token``, ``device_signed_with``), where rule tokens are read too.

The token says nothing about the hybrid connection: what a device may do is its grants
in the registry. Nothing here reads the clock; callers pass ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlsplit

from hybridrelay.errors import InvalidAddressError

__all__ = [
    "DEVICE_ID_MAX",
    "DeviceConnectionString",
    "DeviceTokenProvider",
    "check_device_id",
    "create_device_token",
    "decode_device_key",
    "device_resource",
    "parse_device_connection_string",
]

DEVICE_ID_MAX: Final = 128
# IoT Hub's deviceId alphabet (the relay's registry enforces the same).
_DEVICE_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.+%_#*?!(),:=@$'"
)
_KEY_BYTES_MIN: Final = 16
_KEY_BYTES_MAX: Final = 64
_MAX_CONNECTION_STRING_CHARS: Final = 4 * 1024


def check_device_id(device_id: str) -> str | None:
    """Why ``device_id`` cannot be a deviceId, or None when it can.

    Args:
        device_id: The id as the user wrote it.

    Returns:
        A reason fit for an error message, or None.
    """
    if not device_id:
        return "must not be empty"
    if len(device_id) > DEVICE_ID_MAX:
        return f"must be at most {DEVICE_ID_MAX} characters"
    bad = next((c for c in device_id if c not in _DEVICE_ID_CHARS), None)
    if bad is not None:
        return f"{bad!r} is not allowed (ASCII letters, digits and -.+%_#*?!(),:=@$' only)"
    return None


def decode_device_key(key: str) -> bytes:
    """The bytes a device key stands for: standard base64 of 16 to 64 bytes, as the
    registry shows it (``hybridrelay admin device show ID --keys``).

    Raises:
        ValueError: The key is not base64 or decodes to a length no device key has.
            The message never contains the key.
    """
    text = key.strip()
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise ValueError(
            "a device key must be base64 (the primaryKey or secondaryKey of the device)"
        ) from None
    if not _KEY_BYTES_MIN <= len(raw) <= _KEY_BYTES_MAX:
        raise ValueError(
            f"a device key must be base64 of {_KEY_BYTES_MIN} to {_KEY_BYTES_MAX} bytes"
            f" (this one has {len(raw)})"
        )
    return raw


def _host_of(uri_or_host: str) -> str:
    """The bare host a token's ``sr`` names: from a URI, or a ``host[:port]`` as given."""
    text = uri_or_host.strip()
    try:
        host = urlsplit(text if "://" in text else f"//{text}").hostname
    except ValueError as exc:
        raise InvalidAddressError("the relay address is malformed") from exc
    if not host:
        raise InvalidAddressError("the relay address has no host")
    return f"[{host}]" if ":" in host else host


def device_resource(host: str, device_id: str) -> str:
    """``{host}/devices/{deviceId}``, the resource a device token names (before encoding).

    Args:
        host: The relay's host, or any URI of it (scheme, port and path are dropped).
        device_id: The deviceId.

    Raises:
        InvalidAddressError: ``host`` has no host.
        ValueError: ``device_id`` is not a valid deviceId.
    """
    why = check_device_id(device_id)
    if why:
        raise ValueError(f"device id {why}")
    return f"{_host_of(host)}/devices/{device_id}"


def _signed(sr: str, se: str, key: bytes) -> str:
    digest = hmac.new(key, f"{sr}\n{se}".encode("ascii"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def create_device_token(host: str, device_id: str, key: str, expiry: int) -> str:
    """Create a device SAS token (see the module docstring for the format).

    Args:
        host: The relay's host, or any URI of it (``wss://relay.example.com``).
        device_id: The deviceId registered in the relay.
        key: The device's primary or secondary key, base64 as the registry shows it.
        expiry: The absolute expiry, seconds since the Unix epoch.

    Returns:
        ``SharedAccessSignature sr=...&sig=...&se=...`` (no ``skn``).

    Raises:
        InvalidAddressError: ``host`` has no host.
        ValueError: ``device_id`` or ``key`` is malformed.
    """
    return _token(device_resource(host, device_id), decode_device_key(key), expiry)


def _token(resource: str, key: bytes, expiry: int) -> str:
    sr = quote(resource, safe="")
    se = str(expiry)
    sig = quote(_signed(sr, se, key), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={se}"


@dataclass(frozen=True, slots=True)
class DeviceConnectionString:
    """A device's IoT Hub style connection string, parsed.

    ``HostName={relay host[:port]};DeviceId={deviceId};SharedAccessKey={base64 key}``:
    what the dashboard copies for a device (``Devices`` page) and what
    :func:`parse_device_connection_string` reads. The key never appears in ``repr``.
    """

    host: str
    device_id: str
    key: str = field(repr=False)

    @property
    def relay_url(self) -> str:
        """The relay's address for ``connect``/``Listener`` (``wss://`` + HostName)."""
        return f"wss://{self.host}"

    def token_provider(self, *, ttl: int = 3600) -> DeviceTokenProvider:
        """A provider of this device's tokens (for ``token_provider=``)."""
        return DeviceTokenProvider(self.device_id, self.key, ttl=ttl)


def parse_device_connection_string(text: str) -> DeviceConnectionString:
    """Read ``HostName=...;DeviceId=...;SharedAccessKey=...`` (names case-insensitive).

    Other fields IoT Hub tooling may add (``GatewayHostName``, ``x509``) are ignored;
    ``ModuleId`` is refused (the relay has no modules).

    Raises:
        ValueError: A field is missing or malformed, the key is not a device key, or the
            text is longer than 4 KiB. The message never contains the key.
    """
    if len(text) > _MAX_CONNECTION_STRING_CHARS:
        raise ValueError("a device connection string is at most 4 KiB")
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")  # a base64 key ends in '=': split once
        if not sep:
            raise ValueError("a device connection string is Name=value pairs separated by ;")
        fields[name.strip().lower()] = value.strip()
    if "moduleid" in fields:
        raise ValueError("module connection strings are not supported (no ModuleId)")
    missing = [n for n in ("HostName", "DeviceId", "SharedAccessKey") if not fields.get(n.lower())]
    if missing:
        raise ValueError(f"the device connection string lacks {', '.join(missing)}")
    host, device_id, key = fields["hostname"], fields["deviceid"], fields["sharedaccesskey"]
    why = check_device_id(device_id)
    if why:
        raise ValueError(f"DeviceId {why}")
    try:
        _host_of(host)
    except InvalidAddressError as exc:
        raise ValueError(f"HostName: {exc}") from None
    decode_device_key(key)
    return DeviceConnectionString(host=host, device_id=device_id, key=key)


class DeviceTokenProvider:
    """Makes device SAS tokens for one device and reuses them until they near expiry.

    A :class:`~hybridrelay.protocol.sas.TokenProvider`: give it to ``connect``,
    ``Listener``, ``Forwarder`` or ``RelayHttpClient`` as ``token_provider``. Without
    ``host`` the token names the host of the audience it is asked for (the relay being
    connected to), so a listener moving to another relay node signs for that node's
    host. A cached token is reissued once less than a quarter of its lifetime remains,
    as :class:`~hybridrelay.protocol.sas.SasTokenProvider` does, so a listener renewing
    on schedule never presents a stale one. The key never appears in ``repr``.
    """

    __slots__ = ("_cache", "_device_id", "_host", "_key", "_ttl")

    def __init__(self, device_id: str, key: str, *, host: str | None = None, ttl: int = 3600):
        """Set up the provider.

        Args:
            device_id: The deviceId registered in the relay.
            key: The device's primary or secondary key (base64, as the registry shows it).
            host: The host every token names (e.g. the relay's public name when it sits
                behind a proxy under another name); None: the audience's host.
            ttl: Token lifetime in seconds.

        Raises:
            ValueError: ``device_id`` or ``key`` is malformed, ``ttl`` is not positive.
            InvalidAddressError: ``host`` has no host.
        """
        why = check_device_id(device_id)
        if why:
            raise ValueError(f"device id {why}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._device_id = device_id
        self._key = decode_device_key(key)
        self._host = _host_of(host) if host is not None else None
        self._ttl = ttl
        self._cache: dict[str, tuple[str, int]] = {}

    @property
    def device_id(self) -> str:
        """The deviceId the tokens name."""
        return self._device_id

    @property
    def ttl(self) -> int:
        """The lifetime of a new token, in seconds."""
        return self._ttl

    def __repr__(self) -> str:
        return f"DeviceTokenProvider(device_id={self._device_id!r}, ttl={self._ttl})"

    def token_for(self, audience: str, now: float) -> str:
        """Return a device token for the host of ``audience`` (or the fixed ``host``).

        Args:
            audience: Any URI of the resource; only its host counts.
            now: The current time, seconds since the Unix epoch.

        Returns:
            A token valid for at least a quarter of ``ttl`` after ``now``.

        Raises:
            InvalidAddressError: ``audience`` has no host (and no ``host`` was given).
        """
        host = self._host if self._host is not None else _host_of(audience)
        cached = self._cache.get(host)
        if cached is not None and cached[1] - now >= self._ttl / 4:
            return cached[0]
        expiry = math.floor(now) + self._ttl
        token = _token(f"{host}/devices/{self._device_id}", self._key, expiry)
        # Drop expired entries so a long-lived provider does not grow without bound.
        self._cache = {h: entry for h, entry in self._cache.items() if entry[1] > now}
        self._cache[host] = (token, expiry)
        return token
