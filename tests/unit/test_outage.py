"""OutageReport: the first failure, a summary a minute, and the streak on recovery."""

from __future__ import annotations

from hybridrelay.outage import Outage, OutageReport


def test_first_then_quiet_then_a_summary_each_period_then_recovery() -> None:
    report = OutageReport(every=60.0)
    assert report.succeeded(0.0) is None  # no outage yet: nothing to say
    assert report.failed(10.0) == ("first", Outage(0.0, 1))
    verdicts = [report.failed(10.0 + 0.4 * i)[0] for i in range(1, 26)]  # 10 s of retries
    assert set(verdicts) == {"quiet"}
    assert report.ongoing
    assert report.failed(70.0) == ("summary", Outage(60.0, 27))
    assert report.failed(100.0)[0] == "quiet"
    assert report.failed(130.0)[0] == "summary"
    assert report.succeeded(131.5) == Outage(121.5, 29)
    assert report.failed(200.0) == ("first", Outage(0.0, 1))  # a new outage starts over
