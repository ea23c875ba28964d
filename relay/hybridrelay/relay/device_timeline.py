"""Per-device timelines: connects, disconnects with their reasons, and auth failures.

``GET /$mgmt/v1/devices/{id}/timeline`` answers what this node saw of a device, newest
first, so an operator can tell "it never tried" from "it tried with an old key" from
"it came and went". The entries come from where the relay already decides these things:
``DeviceRegistry.tracked`` (devices.py: a control channel of the device, or a stream it opened as a
sender, starts and ends; the reason is the relay's when it cut it, the close code
otherwise; streams spliced to its control channel are not listed, a busy gateway has
thousands) and the error
middleware (a device token or certificate of a *registered* device refused: 401/403).
Unknown device ids get no timeline, so a stream of made-up ids cannot push real
devices' timelines out.

Bounded twice (docs/security.md): ``device_timeline_entries`` per device (the oldest
dropped) and ``device_timeline_devices`` devices (the one heard from least recently
forgotten); 0 devices turns timelines off. A node keeps its own: in a cluster each node
answers for the connections it held.

The timeline also answers "last seen vs expected check-in interval" (:func:`check_in`):
a device that wakes once a day is "onSchedule" for a day after its last activity, and
"overdue" only after its ``checkInIntervalSeconds`` has passed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web

from hybridrelay.relay.store.schema import DATE_TIME, INTEGER, STRING, Field, Schema, enum_codec

__all__ = [
    "DEVICE_NAMED",
    "TIMELINES",
    "TIMELINE_ENTRY",
    "CheckIn",
    "DeviceTimelines",
    "TimelineEntry",
    "TimelineKind",
    "check_in",
    "note_auth_failure",
]

TimelineKind = Literal["connected", "disconnected", "authFailed"]
_KINDS: Final[tuple[TimelineKind, ...]] = ("connected", "disconnected", "authFailed")
CheckIn = Literal["onSchedule", "overdue", "never", "unscheduled"]
_MAX_TEXT: Final = 160  # an entry's reason: close reasons are 123 bytes at most

# The registered device a request's token or certificate named (device_auth.credentials
# sets it), so that a refusal can be put on that device's timeline.
DEVICE_NAMED: Final = web.RequestKey("hybridrelay_device_named", str)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """One thing that happened to a device's connections on this node."""

    at: float
    kind: TimelineKind
    hybrid_connection: str
    role: str  # "listener" (a control channel) or "sender" (a stream it opened)
    reason: str = ""
    status: int | None = None  # the HTTP status of an auth failure
    code: int | None = None  # the WebSocket close code of a disconnect, when known

    def to_json(self) -> dict[str, object]:
        return TIMELINE_ENTRY.encode(self)


# An entry as GET /devices/{id}/timeline lists it (mgmt/views.py: DeviceTimeline).
TIMELINE_ENTRY: Final = Schema(
    "TimelineEntry",
    where="entry",
    fields=(
        Field("time", "at", DATE_TIME, always=True),
        Field("kind", "kind", enum_codec(_KINDS, "must be a timeline kind"), always=True),
        Field("hybridConnection", "hybrid_connection", STRING, always=True),
        Field(
            "role",
            "role",
            STRING,
            always=True,
            description="listener (a control channel) or sender (a relayed stream it "
            "opened); streams spliced to its control channel are not listed.",
        ),
        Field(
            "reason",
            "reason",
            STRING,
            always=True,
            description="Why it disconnected (the relay's reason when it cut the "
            "connection) or why it was refused.",
        ),
        Field(
            "status",
            "status",
            INTEGER,
            nullable=True,
            always=True,
            description="An auth failure's HTTP status.",
        ),
        Field(
            "closeCode",
            "code",
            INTEGER,
            nullable=True,
            always=True,
            description="A control channel's close code.",
        ),
    ),
)


class DeviceTimelines:
    """Bounded timelines of many devices: ``entries`` each, ``devices`` at most."""

    def __init__(self, *, entries: int, devices: int) -> None:
        self._entries = max(1, entries)
        self._devices = max(0, devices)
        self._timelines: OrderedDict[str, deque[TimelineEntry]] = OrderedDict()

    def record(self, device_id: str, entry: TimelineEntry) -> None:
        if self._devices == 0:
            return
        timeline = self._timelines.get(device_id)
        if timeline is None:
            timeline = self._timelines[device_id] = deque(maxlen=self._entries)
            while len(self._timelines) > self._devices:
                self._timelines.popitem(last=False)
        else:
            self._timelines.move_to_end(device_id)
        timeline.append(
            TimelineEntry(
                at=entry.at,
                kind=entry.kind,
                hybrid_connection=entry.hybrid_connection,
                role=entry.role,
                reason=entry.reason[:_MAX_TEXT],
                status=entry.status,
                code=entry.code,
            )
        )

    def entries(self, device_id: str) -> list[TimelineEntry]:
        """The device's entries, newest first (empty: nothing seen on this node)."""
        return list(reversed(self._timelines.get(device_id, ())))


# The node's timelines (one service, built in app.py from ``[relay] device_timeline_*``).
TIMELINES: Final = web.AppKey("hybridrelay_device_timelines", DeviceTimelines)


def note_auth_failure(
    timelines: DeviceTimelines,
    now: Callable[[], float],
    request: web.Request,
    *,
    status: int,
    reason: str,
    hc_name: str | None,
    action: str,
) -> None:
    """A request naming a registered device was refused (the error middleware calls this)."""
    device_id = request.get(DEVICE_NAMED)
    if device_id is None:
        return
    timelines.record(
        device_id,
        TimelineEntry(
            at=now(),
            kind="authFailed",
            hybrid_connection=hc_name or "",
            role="listener" if action == "listen" else "sender",
            reason=reason,
            status=status,
        ),
    )


def check_in(
    last_activity: float | None, interval: float | None, now: float
) -> tuple[CheckIn, float | None]:
    """Whether a device was heard from within its expected check-in interval.

    Returns:
        The verdict and when the device is (or was) next expected (None: no schedule or
        never seen). ``unscheduled``: no ``checkInIntervalSeconds``; ``never``: it has a
        schedule but was never active; else ``onSchedule`` until one interval after
        its last activity, then ``overdue``.
    """
    if interval is None:
        return "unscheduled", None
    if last_activity is None:
        return "never", None
    due = last_activity + interval
    return ("onSchedule" if now <= due else "overdue"), due
