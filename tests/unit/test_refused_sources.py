"""The bounded top-refused-sources table (Space-Saving) behind GET /stats."""

from __future__ import annotations

from hybridrelay.relay.sources import SourceCount, TopSources


def test_counts_and_ranks_sources() -> None:
    top = TopSources(capacity=10)
    for address in ["a", "b", "a", "c", "a", "b"]:
        top.add(address)
    assert top.top(2) == [SourceCount("a", 3, 0), SourceCount("b", 2, 0)]


def test_a_full_table_keeps_its_heavy_hitter_and_its_size() -> None:
    top = TopSources(capacity=100)
    for _ in range(50):
        top.add("attacker")
    for i in range(1000):  # a spray from many addresses, once each
        top.add(f"10.0.{i // 256}.{i % 256}")
    # Space-Saving keeps every address refused more than total/capacity (here ~10) times.
    ranked = top.top(1000)
    assert len(ranked) == 100
    assert ranked[0] == SourceCount("attacker", 50, 0)
    # A newcomer inherits the evicted count: high by at most its error.
    assert all(entry.count - entry.error >= 1 for entry in ranked[1:])
