"""parse_target: every target form, and a clear ValueError for everything else."""

from __future__ import annotations

import re

import pytest

from hybridrelay.listener import (
    HttpTarget,
    TcpTarget,
    UdpTarget,
    UnixTarget,
    parse_target,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:1883", TcpTarget("127.0.0.1", 1883)),
        ("TCP://broker.lan:1883/", TcpTarget("broker.lan", 1883)),
        ("tcp://[::1]:22", TcpTarget("::1", 22)),
        ("udp://127.0.0.1:5683", UdpTarget("127.0.0.1", 5683)),
        ("udp://[fd00::1]:5684", UdpTarget("fd00::1", 5684)),
        ("unix:///run/mosquitto/mqtt.sock", UnixTarget("/run/mosquitto/mqtt.sock")),
        ("unix://localhost/srv/x.sock", UnixTarget("/srv/x.sock")),
    ],
)
def test_stream_targets(url: str, expected: object) -> None:
    assert parse_target(url) == expected


def test_http_targets() -> None:
    assert isinstance(parse_target("http://127.0.0.1:8000/base"), HttpTarget)
    assert isinstance(parse_target("https://svc.internal"), HttpTarget)


def test_targets_print_as_urls() -> None:
    for url in ("tcp://[::1]:22", "udp://127.0.0.1:5683", "unix:///srv/x.sock"):
        assert str(parse_target(url)) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sctp://x:1", "unsupported target scheme 'sctp'"),
        ("127.0.0.1:1883", "unsupported target scheme"),
        ("tcp://x", "needs a port"),
        ("udp://x:0", "needs a port"),
        ("udp://:5683", "has no host"),
        ("tcp://x:notaport", "invalid target URL"),
        ("tcp://x:1/path", "must not have a path"),
        ("udp://x:1?q=1", "must not have a path, query or fragment"),
        ("unix://relative/x.sock", "has a host"),
        ("unix:///", "needs an absolute socket path"),
        ("unix:///srv/x.sock?mode=1", "must not have a query"),
    ],
)
def test_bad_targets_say_why(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_target(url)
