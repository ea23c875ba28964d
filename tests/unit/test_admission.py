"""The front door's sans-I/O parts: token buckets, per-source caps, entity shares, log budget."""

from __future__ import annotations

import pytest

from hybridrelay.errors import UnavailableError
from hybridrelay.relay.admission import (
    LogBudget,
    PendingShare,
    Refusal,
    SourceLimits,
    TokenBucket,
    source_key,
)


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token takes 1/rate
    assert bucket.take(100.5) == 0.0
    assert not bucket.full(100.5)
    assert bucket.full(102.0)
    assert [bucket.take(200.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # never above burst
    assert bucket.take(200.0) > 0


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(host: str, key: str) -> None:
    assert source_key(host) == key


def test_connections_per_source_are_capped_and_freed() -> None:
    limits = SourceLimits(max_connections=2, rate=100.0, burst=100)
    key = limits.key("192.0.2.1")
    assert key is not None
    assert limits.open(key, 0.0) is None
    assert limits.open(key, 0.0) is None
    assert limits.open(key, 0.0) == Refusal("max_connections_per_ip", 1)
    other = limits.key("192.0.2.2")
    assert other is not None
    assert limits.open(other, 0.0) is None  # another source is not affected
    limits.close(key)
    assert limits.open(key, 0.0) is None
    assert limits.connections(key) == 2


def test_new_connections_and_requests_share_one_bucket_per_source() -> None:
    limits = SourceLimits(max_connections=100, rate=0.5, burst=3)
    key = limits.key("192.0.2.1")
    assert key is not None
    assert limits.open(key, 0.0) is None
    assert limits.request(key, 0.0) is None
    assert limits.open(key, 0.0) is None
    assert limits.request(key, 0.0) == Refusal("handshake_rate_per_ip", 2)  # 1 token at 0.5/s
    assert limits.open(key, 0.1) == Refusal("handshake_rate_per_ip", 2)
    assert limits.connections(key) == 2  # a refused connection is not counted
    assert limits.open(key, 2.0) is None


def test_exempt_networks_and_non_ip_peers_are_not_counted() -> None:
    limits = SourceLimits(
        max_connections=1, rate=1.0, burst=1, exempt=("127.0.0.0/8", "::1/128", "10.1.2.3")
    )
    assert limits.key("127.0.0.2") is None
    assert limits.key("::ffff:127.0.0.1") is None
    assert limits.key("::1") is None
    assert limits.key("10.1.2.3") is None
    assert limits.key("") is None  # a UNIX socket has no address to count
    assert limits.key("10.1.2.4") == "10.1.2.4"


def test_idle_sources_are_swept_so_the_table_stays_bounded() -> None:
    limits = SourceLimits(max_connections=10, rate=10.0, burst=10, sweep_interval=1.0)
    for i in range(100):
        key = limits.key(f"192.0.2.{i}")
        assert key is not None
        assert limits.open(key, 0.0) is None
        limits.close(key)
    held = limits.key("198.51.100.1")
    assert held is not None
    assert limits.open(held, 0.0) is None  # still connected: kept across sweeps
    assert len(limits) == 101
    fresh = limits.key("203.0.113.1")
    assert fresh is not None
    assert limits.open(fresh, 5.0) is None  # a new source after the interval sweeps
    assert len(limits) == 2
    assert limits.connections(held) == 1


def test_pending_share_caps_each_entity_alone() -> None:
    share = PendingShare(2)
    with share.hold("HC-A"), share.hold("hc-a"):
        with pytest.raises(UnavailableError) as info, share.hold("hc-a"):
            pass
        assert info.value.limit == "max_pending_per_hc"
        assert info.value.retry_after == 1
        with share.hold("hc-b"):
            assert share.count("hc-b") == 1
        assert share.count("hc-a") == 2
    assert share.count("hc-a") == 0
    assert share.acquire("hc-a")


def test_log_budget_allows_a_burst_then_counts_what_it_dropped() -> None:
    budget = LogBudget(rate=1.0, burst=2, now=0.0)
    assert budget.allow(0.0) == (True, 0)
    assert budget.allow(0.0) == (True, 0)
    assert budget.allow(0.0) == (False, 0)
    assert budget.allow(0.1) == (False, 0)
    assert budget.allow(1.0) == (True, 2)
    assert budget.allow(2.0) == (True, 0)


def test_exempt_networks_match_by_prefix_in_both_families() -> None:
    limits = SourceLimits(
        max_connections=1,
        rate=1.0,
        burst=1,
        exempt=("10.0.0.0/8", "2001:db8:aa::/48", "::ffff:192.168.0.0/112"),
    )
    assert limits.key("10.255.0.1") is None
    assert limits.key("11.0.0.1") == "11.0.0.1"
    assert limits.key("2001:db8:aa:1::5") is None
    assert limits.key("2001:db8:ab::5") == "2001:db8:ab::/64"
    assert limits.key("192.168.3.4") is None  # the v4-mapped network is the IPv4 one
    assert limits.key("::ffff:192.168.3.4") is None
    assert limits.key("192.169.0.1") == "192.169.0.1"
    assert limits.key("127.1") is None  # not an address a socket reports: not counted
