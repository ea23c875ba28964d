"""Device search: what a device listing is narrowed to, and how far one page may look.

``GET /$mgmt/v1/devices?prefix=&contains=&status=&connectionState=`` (and the
dashboard's search box) must answer as quickly over 100,000 devices as over ten, so a
page never examines more than ``scan_limit`` devices (``[relay] device_search_scan``):

- ``prefix`` is a range of the store's ordered index (SQLite's primary key, Redis's
  lexicographic sorted set), so only matching ids are ever read;
- ``status`` and ``connectionState`` are served by an index of their own in SQLite
  (``devices_by_status``, ``devices_by_connection``); Redis reads them from each
  device's hash;
- ``contains`` (case-insensitive) has no index: it is checked on each id examined.

A page holds at most ``limit`` matches. When ``scan_limit`` devices were examined
before ``limit`` matched and more are left, the page is short (possibly empty) and
still carries a continuation token: where the next page resumes looking. (Each store
reads one id past the budget to tell "more left" from "done".) Tokens carry only a position;
the caller repeats the conditions with each page (the API's ``nextLink`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hybridrelay.errors import ValidationError
from hybridrelay.relay.store.models import ConnectionState, Device, DeviceStatus
from hybridrelay.relay.store.records import encode_continuation

__all__ = [
    "DEFAULT_SCAN_LIMIT",
    "ID_END",
    "DeviceQuery",
    "ScanResult",
    "parse_device_query",
]

DEFAULT_SCAN_LIMIT: Final = 10_000
# Every deviceId character sorts below DEL, so [prefix, prefix + ID_END) holds exactly
# the ids that start with prefix (in byte order, as both stores order them).
ID_END: Final = "\x7f"
_MAX_TERM: Final = 128  # a deviceId's length
_STATUSES: Final[dict[str, DeviceStatus]] = {"enabled": "enabled", "disabled": "disabled"}
_STATES: Final[dict[str, ConnectionState]] = {
    "connected": "connected",
    "disconnected": "disconnected",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceQuery:
    """Conditions a listed device must meet (all of them); empty ones match everything."""

    prefix: str = ""
    contains: str = ""
    status: DeviceStatus | None = None
    connection_state: ConnectionState | None = None

    @property
    def narrows(self) -> bool:
        """Whether any condition is set (else a plain listing is cheaper)."""
        return bool(
            self.prefix or self.contains or self.status or self.connection_state is not None
        )

    def id_matches(self, device_id: str) -> bool:
        """The conditions on the id alone (``prefix`` and ``contains``)."""
        return device_id.startswith(self.prefix) and (
            not self.contains or self.contains.lower() in device_id.lower()
        )

    def fields_match(self, status: str, connection_state: str) -> bool:
        """The conditions on the stored status and connection state."""
        return (self.status is None or status == self.status) and (
            self.connection_state is None or connection_state == self.connection_state
        )

    def matches(self, device: Device) -> bool:
        return self.id_matches(device.device_id) and self.fields_match(
            device.status, device.connection_state
        )


@dataclass(slots=True)
class ScanResult:
    """What a bounded scan found: matches in id order and where it stopped."""

    limit: int
    scan_limit: int
    matched: list[str]
    examined: int = 0
    last_examined: str | None = None
    more: bool = False  # ids are left beyond the scan_limit examined

    def full(self) -> bool:
        """One match more than a page: the page is complete and another follows."""
        return len(self.matched) > self.limit

    def budget_spent(self) -> bool:
        """Call before examining an id: True (and ``more`` set) when the page may not."""
        if self.examined >= self.scan_limit:
            self.more = True
        return self.more

    def examine(self, device_id: str, matches: bool) -> None:
        self.examined += 1
        self.last_examined = device_id
        if matches:
            self.matched.append(device_id)

    def continuation(self) -> str | None:
        """The token of the next page; None when nothing is left to look at."""
        if self.full():
            return encode_continuation(self.matched[self.limit - 1])
        if self.more and self.last_examined is not None:
            return encode_continuation(self.last_examined)
        return None


def _term(field: str, value: str | None) -> str:
    if value is None:
        return ""
    if len(value) > _MAX_TERM or not value.isascii() or not value.isprintable():
        raise ValidationError(field, f"must be at most {_MAX_TERM} printable ASCII characters")
    return value


def parse_device_query(
    *,
    prefix: str | None = None,
    contains: str | None = None,
    status: str | None = None,
    connection_state: str | None = None,
) -> DeviceQuery:
    """Check a search's terms (the API's query parameters) and build the query.

    Raises:
        ValidationError: A term is too long or not printable ASCII, a status is not
            ``enabled``/``disabled``, a connection state not ``connected``/``disconnected``
            (both case-insensitive, as the API spells them either way).
    """
    wanted_status: DeviceStatus | None = None
    if status:
        wanted_status = _STATUSES.get(status.lower())
        if wanted_status is None:
            raise ValidationError("status", "must be enabled or disabled")
    wanted_state: ConnectionState | None = None
    if connection_state:
        wanted_state = _STATES.get(connection_state.lower())
        if wanted_state is None:
            raise ValidationError("connectionState", "must be connected or disconnected")
    return DeviceQuery(
        prefix=_term("prefix", prefix),
        contains=_term("contains", contains),
        status=wanted_status,
        connection_state=wanted_state,
    )
