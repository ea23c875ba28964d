"""The dashboard's Host rules (dashboard/hosts.py) for each kind of listen address."""

from __future__ import annotations

import pytest

from hybridrelay.relay.dashboard.hosts import DashboardHosts, host_name


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("LocalHost:9190", "localhost"),
        ("localhost.", "localhost"),
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("[zz]:80", None),
        ("[::1]x", None),
        ("a:b", None),
        ("a b", None),
        ("é.example", None),
        ("", None),
        (None, None),
        ("x" * 400, None),
    ],
)
def test_host_name(header: str | None, name: str | None) -> None:
    assert host_name(header) == name


def test_loopback_listen_answers_the_loopback_names_only() -> None:
    hosts = DashboardHosts.for_listen("127.0.0.1", ())
    assert all(hosts.allows(h) for h in ("127.0.0.1:1", "localhost", "[::1]:2"))
    assert not any(hosts.allows(h) for h in ("10.0.0.1", "evil.example", "127.0.0.2"))


def test_a_private_address_answers_itself_and_the_configured_names() -> None:
    hosts = DashboardHosts.for_listen("10.0.0.5", ("ops.example.com",))
    assert hosts.allows("10.0.0.5:9190")
    assert hosts.allows("OPS.example.com:443")
    assert not hosts.allows("localhost")
    assert not hosts.allows("10.0.0.6")


def test_every_address_answers_ip_literals_and_loopback_names_but_no_other_name() -> None:
    hosts = DashboardHosts.for_listen("0.0.0.0", ())
    assert hosts.allows("192.168.1.9:9190")
    assert hosts.allows("[fe80::1]")
    assert hosts.allows("localhost")
    assert not hosts.allows("rebind.example")


def test_an_ipv6_loopback_listen_address_is_loopback() -> None:
    hosts = DashboardHosts.for_listen("::1", ())
    assert hosts.allows("[0:0::1]:9190")
    assert hosts.allows("localhost")
