"""The traffic ring buffer behind GET /stats' ``traffic`` and the dashboard's charts."""

from __future__ import annotations

import pytest

from hybridrelay.relay.traffic import Totals, TrafficHistory


def test_rates_per_interval_after_a_baseline() -> None:
    history = TrafficHistory()
    history.sample(100.0, Totals(bytes_up=0, bytes_down=0, connections=0))
    assert history.points() == []  # the first sample is only the baseline
    history.sample(105.0, Totals(bytes_up=5000, bytes_down=1000, connections=2))
    history.sample(110.0, Totals(bytes_up=5000, bytes_down=6000, connections=2))
    first, second = history.points()
    assert (first.time, first.bytes_up_per_s, first.bytes_down_per_s) == (105.0, 1000.0, 200.0)
    assert first.connects_per_s == pytest.approx(0.4)
    assert (second.bytes_up_per_s, second.bytes_down_per_s, second.connects_per_s) == (0, 1000, 0)
    assert second.to_json() == {
        "time": 110.0,
        "bytesUpPerSecond": 0.0,
        "bytesDownPerSecond": 1000.0,
        "connectsPerSecond": 0.0,
    }


def test_the_buffer_keeps_only_the_newest_points_and_never_goes_negative() -> None:
    history = TrafficHistory(points=3)
    for i in range(10):
        history.sample(float(i), Totals(bytes_up=i * 10, bytes_down=0, connections=i))
    assert [p.time for p in history.points()] == [7.0, 8.0, 9.0]
    history.sample(10.0, Totals(bytes_up=0, bytes_down=0, connections=0))  # a counter reset
    assert history.points()[-1].bytes_up_per_s == 0
    history.sample(10.0, Totals(bytes_up=50, bytes_down=0, connections=0))  # no time passed
    assert len(history.points()) == 3
    assert history.points()[-1].time == 10.0
