"""What the store holds: hybrid connections, rules and device identities, with their JSON codecs.

The records are frozen dataclasses; a :class:`Device` validates itself on
construction, so an invalid identity cannot exist (h11 ``_events.py``). The JSON
field names are the IoT Hub identity registry's (``deviceId``, ``generationId``,
``etag``, ``status``, ``statusReason``, ``statusUpdateTime``, ``connectionState``,
``connectionStateUpdatedTime``, ``lastActivityTime``, ``authentication``) plus our
``grants``; camelCase <-> snake_case happens only in the codecs here (style §3.5).

Times are Unix seconds (floats, quantised to microseconds by the stores) and None
for "never", which the JSON spells as IoT Hub does: ``0001-01-01T00:00:00Z``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Final, Generic, Literal, TypeVar

from hybridrelay.errors import ForbiddenError, ValidationError
from hybridrelay.protocol.codes import MAX_LISTENERS_PER_HC
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import MAX_RULES_PER_SCOPE, validate_entity_name

__all__ = [
    "CHANGE_DETAILS",
    "DEVICE_ID_MAX",
    "MAX_PAGE",
    "MAX_RULES_PER_SCOPE",
    "STATUS_REASON_MAX",
    "USER_METADATA_MAX",
    "AuthType",
    "Authentication",
    "ChangeDetail",
    "ChangeEvent",
    "ChangeKind",
    "ChangeOp",
    "ConnectionState",
    "Device",
    "DeviceStatus",
    "Grants",
    "HybridConnection",
    "KeyKind",
    "Page",
    "Rule",
    "SymmetricKey",
    "X509Thumbprint",
    "check_hybrid_connection",
    "check_rule_name",
    "ensure_enabled",
    "format_time",
    "parse_time",
    "rights_from_json",
    "rights_to_json",
    "validate_device_id",
]

T = TypeVar("T")

DEVICE_ID_MAX: Final = 128
STATUS_REASON_MAX: Final = 128
USER_METADATA_MAX: Final = 1024  # bytes of UTF-8
MAX_PAGE: Final = 1000  # IoT Hub lists at most 1,000 identities per page
_MAX_GRANTS: Final = 100
_NEVER: Final = "0001-01-01T00:00:00Z"
# IoT Hub: ASCII letters and digits plus these specials; case-sensitive.
_DEVICE_ID_SPECIALS: Final = "-.+%_#*?!(),:=@$'"
_DEVICE_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + _DEVICE_ID_SPECIALS
)
# The same rule-name pattern as relay/config.py (rules from the config and the API agree).
_RULE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_THUMBPRINT: Final = re.compile(r"^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")  # SHA-1 or SHA-256
_GRANT: Final = re.compile(r"^[A-Za-z0-9*?][A-Za-z0-9._*?/-]{0,259}$")

CHECK_IN_INTERVAL_MAX: Final = 366 * 24 * 3600  # a device that wakes once a year
DeviceStatus = Literal["enabled", "disabled"]
ConnectionState = Literal["connected", "disconnected"]
AuthType = Literal["sas", "selfSigned", "certificateAuthority"]
KeyKind = Literal["primary", "secondary"]
ChangeKind = Literal["hybridConnection", "rule", "device", "certificate", "reset"]
ChangeOp = Literal["created", "updated", "deleted"]
# What an "updated" change was, when the store can tell (the lifecycle events name it).
ChangeDetail = Literal["disabled", "enabled", "keys", "verificationCode", "verified"]
CHANGE_DETAILS: Final[tuple[ChangeDetail, ...]] = (
    "disabled",
    "enabled",
    "keys",
    "verificationCode",
    "verified",
)

_AUTH_TYPES: Final[tuple[AuthType, ...]] = ("sas", "selfSigned", "certificateAuthority")
_AUTH_BY_NAME: Final[dict[str, AuthType]] = {t: t for t in _AUTH_TYPES}
_STATUS_BY_NAME: Final[dict[str, DeviceStatus]] = {"enabled": "enabled", "disabled": "disabled"}
_STATE_BY_NAME: Final[dict[str, ConnectionState]] = {
    "connected": "connected",
    "disconnected": "disconnected",
}
_RIGHT_NAMES: Final = ((Rights.LISTEN, "Listen"), (Rights.SEND, "Send"), (Rights.MANAGE, "Manage"))


# --- validation -------------------------------------------------------------------------


def validate_device_id(device_id: str) -> str:
    """Check a deviceId against the IoT Hub rules and return it unchanged.

    Args:
        device_id: Up to 128 ASCII letters, digits and ``- . + % _ # * ? ! ( ) , : = @ $ '``;
            case-sensitive.

    Returns:
        ``device_id``.

    Raises:
        ValidationError: ``field`` is ``"deviceId"``; the reason names the first bad
            character and its position, or the length.
    """
    if not device_id:
        raise ValidationError("deviceId", "must not be empty")
    for position, char in enumerate(device_id):
        if char not in _DEVICE_ID_CHARS:
            raise ValidationError(
                "deviceId",
                f"invalid character {char!r} (U+{ord(char):04X}) at position {position}; "
                f"allowed: ASCII letters, digits and {_DEVICE_ID_SPECIALS}",
            )
    if len(device_id) > DEVICE_ID_MAX:
        raise ValidationError(
            "deviceId", f"at most {DEVICE_ID_MAX} characters (got {len(device_id)})"
        )
    return device_id


def check_rule_name(name: str) -> None:
    """Raise ValidationError unless ``name`` is a valid rule name (as in the config)."""
    if not _RULE_NAME.match(name):
        raise ValidationError(
            "name", "rule names are 1-256 letters, digits, '.', '_' and '-', starting alphanumeric"
        )


def check_hybrid_connection(hc: HybridConnection) -> None:
    """Raise ValidationError unless ``hc``'s client-settable fields are valid."""
    why = validate_entity_name(hc.name)
    if why:
        raise ValidationError("name", why)
    if len(hc.user_metadata.encode("utf-8", "surrogatepass")) > USER_METADATA_MAX:
        raise ValidationError("userMetadata", f"at most {USER_METADATA_MAX} bytes of UTF-8")
    if not 1 <= hc.max_listeners <= 10_000:
        raise ValidationError("maxListeners", "must be between 1 and 10000")
    if hc.request_timeout is not None and not 0.1 <= hc.request_timeout <= 3600:
        raise ValidationError("requestTimeout", "must be between 0.1 and 3600 seconds")


def _check_sas_key(where: str, key: str) -> None:
    # IoT Hub: a device key is base64 of 16 to 64 bytes.
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValidationError(where, "must be base64") from exc
    if not 16 <= len(raw) <= 64:
        raise ValidationError(where, "must be base64 of 16 to 64 bytes")


# --- time -------------------------------------------------------------------------------


def format_time(t: float | None) -> str:
    """Unix seconds as IoT Hub's ISO 8601 UTC text; None is ``0001-01-01T00:00:00Z``."""
    if t is None:
        return _NEVER
    text = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def parse_time(where: str, value: object) -> float | None:
    """Parse :func:`format_time` text (or null) back; year 1 means never."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(where, "must be an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(where, "must be an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise ValidationError(where, "must carry a time zone (Z)")
    if parsed.year == 1:
        return None
    return parsed.timestamp()


# --- JSON decode helpers (the decode boundary: objects are checked as they are read) ----


def _obj(where: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValidationError(where, "must be a JSON object")
    return {str(k): v for k, v in value.items()}


def _str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(where, "must be a string")
    return value


def _opt_str(where: str, value: object) -> str | None:
    return None if value is None else _str(where, value)


def _bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(where, "must be true or false")
    return value


def _int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, "must be an integer")
    return value


def _opt_float(where: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, "must be a number")
    return float(value)


def _str_tuple(where: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError(where, "must be a list of strings")
    return tuple(_str(f"{where}[{i}]", v) for i, v in enumerate(value))


def rights_to_json(rights: Rights) -> list[str]:
    """``Rights.LISTEN | Rights.SEND`` as ``["Listen", "Send"]`` (Azure's spelling)."""
    return [name for right, name in _RIGHT_NAMES if right in rights]


def rights_from_json(where: str, value: object) -> Rights:
    """Parse ``["Listen", "Send"]``; raises ValidationError for unknown or no rights."""
    names = _str_tuple(where, value)
    try:
        rights = Rights.parse(names)
    except ValueError as exc:
        raise ValidationError(where, str(exc)) from exc
    if not rights:
        raise ValidationError(where, "must list at least one of Listen, Send, Manage")
    return rights


# --- hybrid connections and rules -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A SAS authorization rule on the namespace or on one hybrid connection."""

    name: str
    primary_key: str
    secondary_key: str | None
    rights: Rights
    config_owned: bool = False

    def __repr__(self) -> str:  # keys never reach a log line
        return f"Rule(name={self.name!r}, rights={self.rights!r})"

    def to_json(self, *, include_keys: bool = True) -> dict[str, object]:
        """The rule as Azure spells it; keys only with ``include_keys`` (listKeys)."""
        doc: dict[str, object] = {
            "name": self.name,
            "rights": rights_to_json(self.rights),
            "configOwned": self.config_owned,
        }
        if include_keys:
            doc["primaryKey"] = self.primary_key
            doc["secondaryKey"] = self.secondary_key
        return doc

    @classmethod
    def from_json(cls, value: object) -> Rule:
        """Decode :meth:`to_json` output (with keys); raises ValidationError."""
        doc = _obj("rule", value)
        name = _str("name", doc.get("name"))
        check_rule_name(name)
        return cls(
            name=name,
            primary_key=_str("primaryKey", doc.get("primaryKey")),
            secondary_key=_opt_str("secondaryKey", doc.get("secondaryKey")),
            rights=rights_from_json("rights", doc.get("rights")),
            config_owned=_bool("configOwned", doc.get("configOwned", False)),
        )


HcStatus = Literal["enabled", "disabled"]


def ensure_enabled(hc: HybridConnection) -> HybridConnection:
    """Refuse listeners and senders of a disabled hybrid connection (403)."""
    if hc.status == "disabled":
        raise ForbiddenError("the hybrid connection is disabled")
    return hc


def _hc_status(value: object) -> HcStatus:
    if value == "enabled":
        return "enabled"
    if value == "disabled":
        return "disabled"
    raise ValidationError("status", "must be 'enabled' or 'disabled'")


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridConnection:
    """A hybrid connection (an entity listeners and senders meet on) with its own rules."""

    name: str
    requires_client_authorization: bool = True
    http: bool | None = None
    max_listeners: int = MAX_LISTENERS_PER_HC
    request_timeout: float | None = None  # HTTP mode; None: the relay-wide value
    rules: tuple[Rule, ...] = ()
    config_owned: bool = False
    user_metadata: str = ""  # at most 1 KiB of UTF-8
    created_at: float | None = None  # set by the store
    updated_at: float | None = None  # set by the store
    etag: str = ""  # set by the store; changes on every write
    # A disabled hybrid connection refuses listeners and senders; its open ones are closed.
    status: HcStatus = "enabled"

    def to_json(self) -> dict[str, object]:
        """The management API's view; rules are a separate resource and not included."""
        return {
            "name": self.name,
            "status": self.status,
            "requiresClientAuthorization": self.requires_client_authorization,
            "http": self.http,
            "maxListeners": self.max_listeners,
            "requestTimeout": self.request_timeout,
            "userMetadata": self.user_metadata,
            "createdAt": format_time(self.created_at),
            "updatedAt": format_time(self.updated_at),
            "configOwned": self.config_owned,
            "etag": self.etag,
        }

    @classmethod
    def from_json(cls, value: object, *, name: str | None = None) -> HybridConnection:
        """Decode a hybrid connection body; ``name`` (from the URL) wins over the body's.

        Server-set fields (createdAt, updatedAt, etag, configOwned) are read when present
        so a stored document round-trips; the stores ignore them on writes.

        Raises:
            ValidationError: A field has the wrong type or an invalid value.
        """
        doc = _obj("hybridConnection", value)
        hc_name = name if name is not None else _str("name", doc.get("name"))
        http = doc.get("http")
        hc = cls(
            name=hc_name,
            requires_client_authorization=_bool(
                "requiresClientAuthorization", doc.get("requiresClientAuthorization", True)
            ),
            http=None if http is None else _bool("http", http),
            max_listeners=_int("maxListeners", doc.get("maxListeners", MAX_LISTENERS_PER_HC)),
            request_timeout=_opt_float("requestTimeout", doc.get("requestTimeout")),
            user_metadata=_str("userMetadata", doc.get("userMetadata", "") or ""),
            created_at=parse_time("createdAt", doc.get("createdAt")),
            updated_at=parse_time("updatedAt", doc.get("updatedAt")),
            config_owned=_bool("configOwned", doc.get("configOwned", False)),
            etag=_str("etag", doc.get("etag", "") or ""),
            status=_hc_status(doc.get("status", "enabled")),
        )
        check_hybrid_connection(hc)
        return hc


# --- devices ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SymmetricKey:
    """A device's two SAS keys (base64 of 16 to 64 bytes each)."""

    primary_key: str
    secondary_key: str

    def __post_init__(self) -> None:
        _check_sas_key("authentication.symmetricKey.primaryKey", self.primary_key)
        _check_sas_key("authentication.symmetricKey.secondaryKey", self.secondary_key)

    def __repr__(self) -> str:
        return "SymmetricKey(***)"


@dataclass(frozen=True, slots=True, kw_only=True)
class X509Thumbprint:
    """SHA-1 or SHA-256 thumbprints of a device's self-signed certificates (upper-case hex)."""

    primary_thumbprint: str
    secondary_thumbprint: str | None = None

    def __post_init__(self) -> None:
        names = ("primary_thumbprint", "secondary_thumbprint")
        for attr, where in zip(names, ("primaryThumbprint", "secondaryThumbprint"), strict=True):
            value = getattr(self, attr)
            if value is None:
                continue
            if not isinstance(value, str) or not _THUMBPRINT.match(value):
                raise ValidationError(
                    f"authentication.x509Thumbprint.{where}", "must be 40 or 64 hex digits"
                )
            object.__setattr__(self, attr, value.upper())


@dataclass(frozen=True, slots=True, kw_only=True)
class Authentication:
    """How a device proves who it is.

    ``sas`` with ``symmetric_key`` None asks the store to generate both keys (as IoT Hub
    does); ``selfSigned`` needs a primary thumbprint; ``certificateAuthority`` needs
    neither (the chain to a registered CA identifies the device).
    """

    type: AuthType = "sas"
    symmetric_key: SymmetricKey | None = None
    x509_thumbprint: X509Thumbprint | None = None

    def __post_init__(self) -> None:
        if self.type not in _AUTH_TYPES:
            raise ValidationError(
                "authentication.type", "must be sas, selfSigned or certificateAuthority"
            )
        if self.type != "sas" and self.symmetric_key is not None:
            raise ValidationError(
                "authentication.symmetricKey", f"not allowed with type {self.type}"
            )
        if self.type == "selfSigned" and self.x509_thumbprint is None:
            raise ValidationError("authentication.x509Thumbprint", "required with type selfSigned")
        if self.type != "selfSigned" and self.x509_thumbprint is not None:
            raise ValidationError(
                "authentication.x509Thumbprint", f"not allowed with type {self.type}"
            )

    def to_json(self) -> dict[str, object]:
        sk = self.symmetric_key
        x5 = self.x509_thumbprint
        return {
            "type": self.type,
            "symmetricKey": {
                "primaryKey": sk.primary_key if sk else None,
                "secondaryKey": sk.secondary_key if sk else None,
            },
            "x509Thumbprint": {
                "primaryThumbprint": x5.primary_thumbprint if x5 else None,
                "secondaryThumbprint": x5.secondary_thumbprint if x5 else None,
            },
        }

    @classmethod
    def from_json(cls, value: object) -> Authentication:
        doc = _obj("authentication", value)
        auth_type = _AUTH_BY_NAME.get(_str("authentication.type", doc.get("type", "sas")))
        if auth_type is None:
            raise ValidationError(
                "authentication.type", "must be sas, selfSigned or certificateAuthority"
            )
        sk_doc = _obj("authentication.symmetricKey", doc.get("symmetricKey") or {})
        primary = _opt_str("authentication.symmetricKey.primaryKey", sk_doc.get("primaryKey"))
        secondary = _opt_str("authentication.symmetricKey.secondaryKey", sk_doc.get("secondaryKey"))
        symmetric: SymmetricKey | None = None
        if primary or secondary:
            if not (primary and secondary):
                raise ValidationError(
                    "authentication.symmetricKey", "give both keys or neither (generated)"
                )
            symmetric = SymmetricKey(primary_key=primary, secondary_key=secondary)
        x5_doc = _obj("authentication.x509Thumbprint", doc.get("x509Thumbprint") or {})
        x5_primary = _opt_str(
            "authentication.x509Thumbprint.primaryThumbprint", x5_doc.get("primaryThumbprint")
        )
        x5_secondary = _opt_str(
            "authentication.x509Thumbprint.secondaryThumbprint", x5_doc.get("secondaryThumbprint")
        )
        thumbprint: X509Thumbprint | None = None
        if x5_primary or x5_secondary:
            if not x5_primary:
                raise ValidationError("authentication.x509Thumbprint.primaryThumbprint", "required")
            thumbprint = X509Thumbprint(
                primary_thumbprint=x5_primary, secondary_thumbprint=x5_secondary or None
            )
        return cls(type=auth_type, symmetric_key=symmetric, x509_thumbprint=thumbprint)


@dataclass(frozen=True, slots=True, kw_only=True)
class Grants:
    """The hybrid connections a device may listen on and send to.

    Entries are names or ``fnmatch`` patterns (``*``, ``?``), matched case-insensitively
    like hybrid connection names (HC §2.1); ``*`` also matches across ``/``.
    """

    listen: tuple[str, ...] = ()
    send: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for where, entries in (("grants.listen", self.listen), ("grants.send", self.send)):
            if len(entries) > _MAX_GRANTS:
                raise ValidationError(where, f"at most {_MAX_GRANTS} entries")
            for i, entry in enumerate(entries):
                if not _GRANT.match(entry):
                    raise ValidationError(
                        f"{where}[{i}]",
                        "a hybrid connection name or pattern: letters, digits, '.', '_', "
                        "'-', '/', '*' and '?', at most 260 characters",
                    )

    def allows(self, hc_name: str, right: Rights) -> bool:
        """Tell whether the grants cover ``right`` (Listen or Send) on ``hc_name``."""
        name = hc_name.strip("/").lower()
        patterns: list[str] = []
        if Rights.LISTEN in right:
            patterns.extend(self.listen)
        if Rights.SEND in right:
            patterns.extend(self.send)
        return any(fnmatchcase(name, p.lower()) for p in patterns)

    def to_json(self) -> dict[str, object]:
        return {"listen": list(self.listen), "send": list(self.send)}

    @classmethod
    def from_json(cls, value: object) -> Grants:
        doc = _obj("grants", value)
        return cls(
            listen=_str_tuple("grants.listen", doc.get("listen")),
            send=_str_tuple("grants.send", doc.get("send")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """A device identity (the IoT Hub identity registry model).

    ``generation_id``, ``etag``, ``status_update_time`` and the connection fields are
    server-set: the stores fill them in and ignore what a caller passes.

    Raises:
        ValidationError: On construction, for an invalid deviceId, a status other than
            enabled/disabled, a status reason over 128 characters or invalid
            authentication or grants.
    """

    device_id: str
    generation_id: str = ""
    etag: str = ""
    status: DeviceStatus = "enabled"
    status_reason: str | None = None
    status_update_time: float | None = None
    connection_state: ConnectionState = "disconnected"
    connection_state_updated_time: float | None = None
    last_activity_time: float | None = None
    authentication: Authentication = field(default_factory=Authentication)
    grants: Grants = field(default_factory=Grants)
    # How often the device is expected to be heard from, in seconds (None: no schedule),
    # so a device that wakes once a day is not "overdue" an hour after its last visit.
    check_in_interval: int | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.check_in_interval is not None and not (
            1 <= self.check_in_interval <= CHECK_IN_INTERVAL_MAX
        ):
            raise ValidationError(
                "checkInIntervalSeconds", f"must be between 1 and {CHECK_IN_INTERVAL_MAX}"
            )
        if self.status not in ("enabled", "disabled"):
            raise ValidationError("status", "must be enabled or disabled")
        if self.status_reason is not None and len(self.status_reason) > STATUS_REASON_MAX:
            raise ValidationError("statusReason", f"at most {STATUS_REASON_MAX} characters")
        if self.connection_state not in ("connected", "disconnected"):
            raise ValidationError("connectionState", "must be connected or disconnected")

    def to_json(self) -> dict[str, object]:
        """The identity document with IoT Hub's field names (keys included)."""
        return {
            "deviceId": self.device_id,
            "generationId": self.generation_id,
            "etag": self.etag,
            "status": self.status,
            "statusReason": self.status_reason,
            "statusUpdateTime": format_time(self.status_update_time),
            # IoT Hub capitalises the connection state on the wire.
            "connectionState": self.connection_state.capitalize(),
            "connectionStateUpdatedTime": format_time(self.connection_state_updated_time),
            "lastActivityTime": format_time(self.last_activity_time),
            "authentication": self.authentication.to_json(),
            "grants": self.grants.to_json(),
            "checkInIntervalSeconds": self.check_in_interval,
        }

    @classmethod
    def from_json(cls, value: object, *, device_id: str | None = None) -> Device:
        """Decode an identity document; ``device_id`` (from the URL) must match the body's.

        Unknown fields are ignored (IoT Hub documents carry more, e.g. ``capabilities``).

        Raises:
            ValidationError: A field has the wrong type or an invalid value.
        """
        doc = _obj("device", value)
        body_id = doc.get("deviceId")
        if device_id is None:
            dev_id = _str("deviceId", body_id)
        else:
            if body_id is not None and body_id != device_id:
                raise ValidationError("deviceId", "does not match the deviceId in the path")
            dev_id = device_id
        validate_device_id(dev_id)
        status = _STATUS_BY_NAME.get(_str("status", doc.get("status", "enabled")))
        if status is None:
            raise ValidationError("status", "must be enabled or disabled")
        state_text = _str("connectionState", doc.get("connectionState", "Disconnected"))
        state = _STATE_BY_NAME.get(state_text.lower())
        if state is None:
            raise ValidationError("connectionState", "must be Connected or Disconnected")
        return cls(
            device_id=dev_id,
            generation_id=_str("generationId", doc.get("generationId", "") or ""),
            etag=_str("etag", doc.get("etag", "") or ""),
            status=status,
            status_reason=_opt_str("statusReason", doc.get("statusReason")),
            status_update_time=parse_time("statusUpdateTime", doc.get("statusUpdateTime")),
            connection_state=state,
            connection_state_updated_time=parse_time(
                "connectionStateUpdatedTime", doc.get("connectionStateUpdatedTime")
            ),
            last_activity_time=parse_time("lastActivityTime", doc.get("lastActivityTime")),
            authentication=Authentication.from_json(doc.get("authentication") or {}),
            grants=Grants.from_json(doc.get("grants") or {}),
            check_in_interval=_check_in_interval(doc.get("checkInIntervalSeconds")),
        )


def _check_in_interval(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("checkInIntervalSeconds", "must be a whole number of seconds")
    return value


# --- paging and change events -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Page(Generic[T]):
    """One page of a listing; ``continuation`` is None on the last page."""

    items: tuple[T, ...]
    continuation: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeEvent:
    """Something in the store changed; subscribers drop caches and close what it affects.

    ``name`` is the hybrid connection name (as stored), the rule name or the deviceId;
    for rules, ``scope`` is the hybrid connection name or None for the namespace.
    ``kind="reset"`` means events may have been missed (a Redis reconnect): drop every cache.
    ``detail`` says what an update was when the writer knew: a status change of a device or
    hybrid connection (``disabled``/``enabled``), new keys (``keys``: a device's or a rule's
    regenerated), a certificate's ``verificationCode`` or ``verified``; None otherwise.
    """

    kind: ChangeKind
    op: ChangeOp
    name: str
    scope: str | None = None
    detail: ChangeDetail | None = None
