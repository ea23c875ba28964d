"""Sans-I/O parts of the device pages (issue 14): timelines, check-in verdicts, search terms,
scan bookkeeping and device connection strings."""

from __future__ import annotations

import pytest

from hybridrelay.errors import ValidationError
from hybridrelay.protocol.device_sas import (
    DeviceConnectionString,
    parse_device_connection_string,
)
from hybridrelay.relay.device_timeline import DeviceTimelines, TimelineEntry, check_in
from hybridrelay.relay.store.device_query import DeviceQuery, ScanResult, parse_device_query
from hybridrelay.relay.store.records import decode_continuation

KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="


def entry(at: float, kind: str = "connected", reason: str = "") -> TimelineEntry:
    return TimelineEntry(at=at, kind=kind, hybrid_connection="hc", role="listener", reason=reason)  # type: ignore[arg-type]


def test_a_timeline_keeps_the_newest_entries_of_the_most_recent_devices() -> None:
    timelines = DeviceTimelines(entries=3, devices=2)
    for t in range(5):
        timelines.record("a", entry(t))
    assert [e.at for e in timelines.entries("a")] == [4, 3, 2]  # newest first, 3 kept
    timelines.record("b", entry(10))
    timelines.record("a", entry(11))  # a is now the most recent device
    timelines.record("c", entry(12))  # b, heard from least recently, is forgotten
    assert timelines.entries("b") == []
    assert [e.at for e in timelines.entries("a")] == [11, 4, 3]
    assert [e.at for e in timelines.entries("c")] == [12]
    timelines.record("c", entry(13, "disconnected", "x" * 500))
    assert len(timelines.entries("c")[0].reason) == 160  # a peer's text is bounded too


def test_zero_devices_turns_timelines_off() -> None:
    timelines = DeviceTimelines(entries=5, devices=0)
    timelines.record("a", entry(1))
    assert timelines.entries("a") == []


def test_entries_read_as_the_api_writes_them() -> None:
    doc = TimelineEntry(
        at=1_700_000_000.5,
        kind="authFailed",
        hybrid_connection="hc",
        role="sender",
        reason="bad key",
        status=401,
    ).to_json()
    assert doc == {
        "time": "2023-11-14T22:13:20.500000Z",
        "kind": "authFailed",
        "hybridConnection": "hc",
        "role": "sender",
        "reason": "bad key",
        "status": 401,
        "closeCode": None,
    }


@pytest.mark.parametrize(
    ("last", "interval", "now", "verdict", "due"),
    [
        (None, None, 100.0, "unscheduled", None),
        (50.0, None, 100.0, "unscheduled", None),
        (None, 60, 100.0, "never", None),
        (50.0, 60, 100.0, "onSchedule", 110.0),
        (50.0, 60, 110.0, "onSchedule", 110.0),  # due exactly now: not late yet
        (50.0, 60, 110.5, "overdue", 110.0),
        (0.0, 86_400, 3600.0, "onSchedule", 86_400.0),  # wakes daily: fine an hour later
    ],
)
def test_check_in_against_the_expected_interval(
    last: float | None, interval: int | None, now: float, verdict: str, due: float | None
) -> None:
    assert check_in(last, interval, now) == (verdict, due)


def test_search_terms_are_checked() -> None:
    query = parse_device_query(
        prefix="dev-", contains="Pump", status="Enabled", connection_state="CONNECTED"
    )
    assert query == DeviceQuery(
        prefix="dev-", contains="Pump", status="enabled", connection_state="connected"
    )
    assert query.narrows
    assert not parse_device_query().narrows
    assert query.id_matches("dev-bigPUMP-1")
    assert not query.id_matches("devpump")
    assert query.fields_match("enabled", "connected")
    assert not query.fields_match("disabled", "connected")
    for bad in (
        {"status": "sleeping"},
        {"connection_state": "maybe"},
        {"prefix": "x" * 129},
        {"contains": "é"},
        {"contains": "a\x00"},
    ):
        with pytest.raises(ValidationError):
            parse_device_query(**bad)


def test_a_scan_resumes_after_the_last_id_it_examined_or_the_last_match() -> None:
    scan = ScanResult(limit=2, scan_limit=3, matched=[])
    for device_id, matches in (("a", False), ("b", True), ("c", False)):
        assert not scan.budget_spent()
        scan.examine(device_id, matches)
    assert scan.continuation() is None  # no id past the budget was seen: done
    assert scan.budget_spent()  # a fourth id: there is more, resume after "c"
    token = scan.continuation()
    assert token is not None
    assert decode_continuation(token) == "c"
    full = ScanResult(limit=1, scan_limit=10, matched=[])
    full.examine("a", True)
    full.examine("b", True)
    assert full.full()
    token = full.continuation()
    assert token is not None
    assert decode_continuation(token) == "a"


def test_a_device_connection_string_reads_in_any_case_and_order() -> None:
    parsed = parse_device_connection_string(
        f" deviceid=dev-42 ; SharedAccessKey={KEY};HostName=relay.example.com:8443;"
        "GatewayHostName=x "
    )
    assert parsed == DeviceConnectionString("relay.example.com:8443", "dev-42", KEY)
    assert parsed.relay_url == "wss://relay.example.com:8443"
    assert KEY not in repr(parsed)
    assert parsed.token_provider().device_id == "dev-42"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("HostName=h;DeviceId=d", "lacks SharedAccessKey"),
        (f"HostName=h;SharedAccessKey={KEY}", "lacks DeviceId"),
        (f"DeviceId=d;SharedAccessKey={KEY}", "lacks HostName"),
        (f"HostName=h;DeviceId=bad/id;SharedAccessKey={KEY}", "DeviceId"),
        ("HostName=h;DeviceId=d;SharedAccessKey=not-base64!", "base64"),
        (f"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={KEY}", "ModuleId"),
        ("HostName=h;DeviceId", "Name=value"),
        ("x" * 5000, "4 KiB"),
    ],
)
def test_a_bad_device_connection_string_is_refused_without_its_key(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        parse_device_connection_string(text)
    assert KEY not in str(refused.value)
