"""hybridrelay.probe's pure parts: the verdict on each answer, the relay URL check."""

from __future__ import annotations

import json

import pytest

from hybridrelay.probe import ProbeOutcome, classify, relay_url_problem


def _error(message: str) -> bytes:
    return json.dumps({"error": {"code": "X", "message": message, "trackingId": "t"}}).encode()


@pytest.mark.parametrize(
    ("status", "outcome", "fatal"),
    [
        (204, ProbeOutcome.OK, False),
        (401, ProbeOutcome.BAD_TOKEN, True),
        (403, ProbeOutcome.BAD_TOKEN, True),
        (404, ProbeOutcome.NO_SUCH_ENTITY, True),
        (400, ProbeOutcome.UNSUPPORTED, False),  # Azure Relay, an older hybridrelay
        (503, ProbeOutcome.UNAVAILABLE, False),
        (429, ProbeOutcome.UNAVAILABLE, False),
        (418, ProbeOutcome.UNEXPECTED, False),
    ],
)
def test_status_verdicts(status: int, outcome: ProbeOutcome, fatal: bool) -> None:
    result = classify(status, "Reason", {}, b"")
    assert result.outcome is outcome
    assert result.fatal is fatal
    assert result.status == status


def test_the_relays_message_without_its_tracking_id() -> None:
    body = _error("the token's signature does not match\r\nx")
    result = classify(401, "whatever TrackingId:abc", {}, body)
    assert result.detail == "the token's signature does not match x"
    assert classify(401, "Unauthorized TrackingId:abc", {}, b"<html>").detail == "Unauthorized"


def test_listener_count_from_the_header() -> None:
    assert classify(204, "", {"hybridrelay-listeners": "3"}, b"").listeners == 3
    assert classify(204, "", {"hybridrelay-listeners": "x"}, b"").listeners is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://relay.example.com", "did you mean wss://relay.example.com?"),
        ("http://127.0.0.1:8080", "did you mean ws://127.0.0.1:8080?"),
        ("HTTPS://relay.example.com", "did you mean wss://relay.example.com?"),
        ("tcp://relay:1", "must look like ws://host:port"),
        ("ws://", "has no host"),
        ("ws://relay:99999", "not a URL"),
    ],
)
def test_relay_url_problems(url: str, expected: str) -> None:
    problem = relay_url_problem(url)
    assert problem is not None
    assert expected in problem


def test_good_relay_urls() -> None:
    assert relay_url_problem("ws://127.0.0.1:8080") is None
    assert relay_url_problem("wss://relay.example.com/") is None
