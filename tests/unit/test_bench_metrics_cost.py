"""bench.metrics_cost: the micro-benchmark runs the relay's real per-connection bookkeeping
(``hc_endpoints._stream_started`` and its finish callback) and reports what it measured."""

from __future__ import annotations

from bench.metrics_cost import _main


async def test_a_short_run_reports_positive_costs() -> None:
    result = await _main(n=500, rounds=2, hcs=3)
    assert result["bench"] == "metrics_cost"
    assert result["n"] == 500
    assert result["hybrid_connections"] == 3
    best, median = result["best_ns_per_connection"], result["median_ns_per_connection"]
    assert isinstance(best, float)
    assert isinstance(median, float)
    assert 0 < best <= median
