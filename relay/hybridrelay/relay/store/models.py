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
from fnmatch import fnmatchcase
from typing import Final, Generic, Literal, TypeVar

from hybridrelay.errors import ForbiddenError, ValidationError
from hybridrelay.protocol.codes import MAX_LISTENERS_PER_HC
from hybridrelay.protocol.sas import Rights
from hybridrelay.relay.config import MAX_RULES_PER_SCOPE, validate_entity_name
from hybridrelay.relay.store.schema import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    STRING,
    TIME,
    Codec,
    Field,
    Schema,
    decode_object,
    decode_optional_str,
    decode_str,
    decode_str_tuple,
    enum_codec,
    format_time,
    parse_time,
    ref,
)

__all__ = [
    "CHANGE_DETAILS",
    "DEVICE",
    "DEVICE_ID_MAX",
    "GRANTS",
    "HYBRID_CONNECTION",
    "MAX_PAGE",
    "MAX_RULES_PER_SCOPE",
    "RULE",
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
    HYBRID_CONNECTION.check(hc)


def _check_sas_key(where: str, key: str) -> None:
    # IoT Hub: a device key is base64 of 16 to 64 bytes.
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValidationError(where, "must be base64") from exc
    if not 16 <= len(raw) <= 64:
        raise ValidationError(where, "must be base64 of 16 to 64 bytes")


# --- rights (the codec of a rule's "rights") -------------------------------------------


def rights_to_json(rights: Rights) -> list[str]:
    """``Rights.LISTEN | Rights.SEND`` as ``["Listen", "Send"]`` (Azure's spelling)."""
    return [name for right, name in _RIGHT_NAMES if right in rights]


def rights_from_json(where: str, value: object) -> Rights:
    """Parse ``["Listen", "Send"]``; raises ValidationError for unknown or no rights."""
    names = decode_str_tuple(where, value)
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
        return RULE.encode(self, secrets=include_keys)

    @classmethod
    def from_json(cls, value: object) -> Rule:
        """Decode :meth:`to_json` output (with keys); raises ValidationError."""
        return cls(**RULE.decode(value))


def _check_rule_name(where: str, name: str) -> None:
    check_rule_name(name)


_RIGHTS: Final[Codec[Rights]] = Codec(
    rights_from_json,
    rights_to_json,
    {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "enum": [name for _, name in _RIGHT_NAMES]},
    },
)
RULE: Final = Schema(
    "Rule",
    where="rule",
    fields=(
        Field(
            "name",
            "name",
            STRING,
            settable=False,
            always=True,
            check=_check_rule_name,
        ),
        Field("rights", "rights", _RIGHTS, always=True),
        Field(
            "configOwned",
            "config_owned",
            BOOLEAN,
            default=False,
            settable=False,
            always=True,
        ),
        Field(
            "primaryKey",
            "primary_key",
            STRING,
            settable=False,
            secret=True,
            description="Not in lists.",
        ),
        Field(
            "secondaryKey",
            "secondary_key",
            STRING,
            nullable=True,
            default=None,
            settable=False,
            secret=True,
            description="Not in lists.",
        ),
    ),
    input_name="RuleInput",
)

HcStatus = Literal["enabled", "disabled"]


def ensure_enabled(hc: HybridConnection) -> HybridConnection:
    """Refuse listeners and senders of a disabled hybrid connection (403)."""
    if hc.status == "disabled":
        raise ForbiddenError("the hybrid connection is disabled")
    return hc


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
        return HYBRID_CONNECTION.encode(self)

    @classmethod
    def from_json(cls, value: object, *, name: str | None = None) -> HybridConnection:
        """Decode a hybrid connection body; ``name`` (from the URL) wins over the body's.

        Server-set fields (createdAt, updatedAt, etag, configOwned) are read when present
        so a stored document round-trips; the stores ignore them on writes.

        Raises:
            ValidationError: A field has the wrong type or an invalid value.
        """
        given = {} if name is None else {"name": name}
        return cls(**HYBRID_CONNECTION.decode(value, **given))


def _check_entity_name(where: str, name: str) -> None:
    why = validate_entity_name(name)
    if why:
        raise ValidationError(where, why)


def _check_user_metadata(where: str, text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > USER_METADATA_MAX:
        raise ValidationError(where, f"at most {USER_METADATA_MAX} bytes of UTF-8")


HYBRID_CONNECTION: Final = Schema(
    "HybridConnection",
    where="hybridConnection",
    fields=(
        Field(
            "name",
            "name",
            STRING,
            settable=False,
            always=True,
            check=_check_entity_name,
        ),
        Field(
            "status",
            "status",
            enum_codec(("enabled", "disabled"), "must be 'enabled' or 'disabled'"),
            default="enabled",
            documented_default=True,
            description="disabled: listeners and senders are refused and open ones closed (1001).",
        ),
        Field(
            "requiresClientAuthorization",
            "requires_client_authorization",
            BOOLEAN,
            default=True,
            documented_default=True,
        ),
        Field(
            "http",
            "http",
            BOOLEAN,
            nullable=True,
            default=None,
            description="true: HTTP-mode listeners only; false: WebSocket only; null: both.",
        ),
        # The default is the relay's max_listeners_per_hc (the handler fills it in).
        Field(
            "maxListeners",
            "max_listeners",
            INTEGER,
            default=MAX_LISTENERS_PER_HC,
            minimum=1,
            maximum=10000,
        ),
        Field(
            "requestTimeout",
            "request_timeout",
            NUMBER,
            nullable=True,
            default=None,
            minimum=0.1,
            maximum=3600,
            unit="seconds",
            description="HTTP mode, seconds; null: the relay's setting.",
        ),
        Field(
            "userMetadata",
            "user_metadata",
            STRING,
            default="",
            null_is_default=True,
            check=_check_user_metadata,
            description="At most 1 KiB of UTF-8.",
        ),
        Field(
            "createdAt",
            "created_at",
            TIME,
            default=None,
            settable=False,
            always=True,
        ),
        Field(
            "updatedAt",
            "updated_at",
            TIME,
            default=None,
            settable=False,
            always=True,
        ),
        Field(
            "listenerCount",
            None,
            INTEGER,
            settable=False,
            always=True,
            minimum=0,
            description="Listeners connected now (cluster-wide).",
        ),
        Field(
            "configOwned",
            "config_owned",
            BOOLEAN,
            default=False,
            settable=False,
            always=True,
            description="Imported from the config file: the API cannot change or delete it.",
        ),
        Field(
            "etag",
            "etag",
            STRING,
            default="",
            null_is_default=True,
            settable=False,
            always=True,
        ),
    ),
    input_name="HybridConnectionInput",
    input_description="PUT replaces every field (omitted ones take their defaults); "
    "PATCH changes the fields given.",
)


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
        doc = decode_object("authentication", value)
        auth_type = _AUTH_BY_NAME.get(decode_str("authentication.type", doc.get("type", "sas")))
        if auth_type is None:
            raise ValidationError(
                "authentication.type", "must be sas, selfSigned or certificateAuthority"
            )
        sk_doc = decode_object("authentication.symmetricKey", doc.get("symmetricKey") or {})
        primary = decode_optional_str(
            "authentication.symmetricKey.primaryKey", sk_doc.get("primaryKey")
        )
        secondary = decode_optional_str(
            "authentication.symmetricKey.secondaryKey", sk_doc.get("secondaryKey")
        )
        symmetric: SymmetricKey | None = None
        if primary or secondary:
            if not (primary and secondary):
                raise ValidationError(
                    "authentication.symmetricKey", "give both keys or neither (generated)"
                )
            symmetric = SymmetricKey(primary_key=primary, secondary_key=secondary)
        x5_doc = decode_object("authentication.x509Thumbprint", doc.get("x509Thumbprint") or {})
        x5_primary = decode_optional_str(
            "authentication.x509Thumbprint.primaryThumbprint", x5_doc.get("primaryThumbprint")
        )
        x5_secondary = decode_optional_str(
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
        return GRANTS.encode(self)

    @classmethod
    def from_json(cls, value: object) -> Grants:
        return cls(**GRANTS.decode(value))


# The entries' pattern and count are checked by Grants.__post_init__ (they are a record's
# invariant); the declaration says them to the document.
_GRANT_LIST: Final[Codec[tuple[str, ...]]] = Codec(
    decode_str_tuple,
    list,
    {"type": "array", "items": {"type": "string"}, "maxItems": _MAX_GRANTS},
)
GRANTS: Final = Schema(
    "Grants",
    where="grants",
    prefix="grants.",
    fields=(
        Field("listen", "listen", _GRANT_LIST, default=()),
        Field("send", "send", _GRANT_LIST, default=()),
    ),
    description="Hybrid connection names or fnmatch patterns the device may use.",
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
        return DEVICE.encode(self)

    @classmethod
    def from_json(cls, value: object, *, device_id: str | None = None) -> Device:
        """Decode an identity document; ``device_id`` (from the URL) must match the body's.

        Unknown fields are ignored (IoT Hub documents carry more, e.g. ``capabilities``).

        Raises:
            ValidationError: A field has the wrong type or an invalid value.
        """
        if device_id is None:
            return cls(**DEVICE.decode(value))
        doc = decode_object(DEVICE.where, value)
        body_id = doc.get("deviceId")
        if body_id is not None and body_id != device_id:
            raise ValidationError("deviceId", "does not match the deviceId in the path")
        return cls(**DEVICE.decode(doc, device_id=device_id))


def _decode_connection_state(where: str, value: object) -> ConnectionState:
    state = _STATE_BY_NAME.get(decode_str(where, value).lower())
    if state is None:
        raise ValidationError(where, "must be Connected or Disconnected")
    return state


def _encode_connection_state(state: ConnectionState) -> str:
    return state.capitalize()  # IoT Hub capitalises the connection state on the wire


def _decode_seconds(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(where, "must be a whole number of seconds")
    return value


_SECONDS: Final[Codec[int]] = Codec(_decode_seconds, int, {"type": "integer"})


def _decode_authentication(where: str, value: object) -> Authentication:
    return Authentication.from_json(value)


def _decode_grants(where: str, value: object) -> Grants:
    return Grants.from_json(value)


_AUTHENTICATION: Final[Codec[Authentication]] = Codec(
    _decode_authentication, Authentication.to_json, ref("Authentication")
)
_GRANTS: Final[Codec[Grants]] = Codec(_decode_grants, Grants.to_json, ref("Grants"))
_DEVICE_STATUS: Final = enum_codec(
    ("enabled", "disabled"), "must be enabled or disabled", strings_first=True
)
_CONNECTION_STATE: Final[Codec[ConnectionState]] = Codec(
    _decode_connection_state,
    _encode_connection_state,
    {"type": "string", "enum": ["Connected", "Disconnected"]},
)
# The deviceId, status reason and enum values are checked by Device.__post_init__ (an
# invalid identity cannot be built, decoded or not), so their fields declare no check.
DEVICE: Final = Schema(
    "Device",
    where="device",
    fields=(
        Field(
            "deviceId",
            "device_id",
            STRING,
            always=True,
            input_required=False,
            input_openapi={"description": "Must equal the path's deviceId."},
        ),
        Field(
            "generationId",
            "generation_id",
            STRING,
            default="",
            null_is_default=True,
            settable=False,
            always=True,
            description="Differs when a deleted deviceId is created again.",
        ),
        Field(
            "etag",
            "etag",
            STRING,
            default="",
            null_is_default=True,
            settable=False,
            always=True,
            description="Changes on every write.",
        ),
        Field("status", "status", _DEVICE_STATUS, default="enabled", always=True),
        Field(
            "statusReason",
            "status_reason",
            STRING,
            nullable=True,
            default=None,
            input_openapi={"maxLength": STATUS_REASON_MAX},
        ),
        Field(
            "statusUpdateTime",
            "status_update_time",
            TIME,
            default=None,
            settable=False,
        ),
        Field(
            "connectionState",
            "connection_state",
            _CONNECTION_STATE,
            default="disconnected",
            settable=False,
            always=True,
        ),
        Field(
            "connectionStateUpdatedTime",
            "connection_state_updated_time",
            TIME,
            default=None,
            settable=False,
        ),
        Field(
            "lastActivityTime",
            "last_activity_time",
            TIME,
            default=None,
            settable=False,
        ),
        Field(
            "authentication",
            "authentication",
            _AUTHENTICATION,
            default=Authentication(),
            null_is_default=True,
        ),
        Field("grants", "grants", _GRANTS, default=Grants(), null_is_default=True),
        Field(
            "checkInIntervalSeconds",
            "check_in_interval",
            _SECONDS,
            nullable=True,
            default=None,
            minimum=1,
            maximum=CHECK_IN_INTERVAL_MAX,
            description="How often the device is expected to be heard from, in seconds (null: "
            "no schedule). GET /devices/{deviceId}/timeline says onSchedule or overdue "
            "against it.",
        ),
    ),
    input_name="DeviceInput",
    input_description="Server-set fields (generationId, etag, times, connectionState) "
    "are ignored when sent.",
)


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
