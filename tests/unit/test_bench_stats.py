"""The bench suite's pure parts: statistics, table formatting, target judgement, selection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from bench import report, suite
from bench.stats import (
    EN_DASH,
    TIMES,
    Row,
    fmt,
    markdown_table,
    paired,
    percentile,
    spread,
    text_table,
)


def test_spread_is_median_min_max_and_runs() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {
        "median": 2.5,
        "min": 1.0,
        "max": 10.0,
        "runs": [3.0, 1.0, 2.0, 10.0],
    }
    assert spread([1 / 3], digits=3) == {
        "median": 0.333,
        "min": 0.333,
        "max": 0.333,
        "runs": [0.333],
    }
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_paired_ratio_and_difference_per_round() -> None:
    assert paired([2.0, 3.0], [4.0, 3.0]) == [0.5, 1.0]
    assert paired([5.0, 7.0], [1.0, 2.0], op="diff") == [4.0, 5.0]
    with pytest.raises(ValueError, match="equally long"):
        paired([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="equally long"):
        paired([], [])
    with pytest.raises(ValueError, match="unknown op"):
        paired([1.0], [1.0], op="sum")


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (1, 1.0), (50, 50.0), (99, 99.0), (99.5, 100.0), (100, 100.0)],
)
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@pytest.mark.parametrize(
    ("value", "unit", "digits", "text"),
    [
        (None, "ms", None, "—"),
        (12345.6, "req/s", None, "12,346 req/s"),
        (523.94, "", None, "523.9"),
        (1.0471, "ms", None, "1.05 ms"),
        (0.98765, "", None, "0.988"),
        (1.0471, "ms", 3, "1.047 ms"),
    ],
)
def test_fmt(value: float | None, unit: str, digits: int | None, text: str) -> None:
    assert fmt(value, unit, digits) == text


ROWS = [
    Row(section="1", figure="a | b", a="x", b="y", result="0.98", target="≥ 0.6", met=True),
    Row(section="2", figure="c", result="skipped", note="no nginx"),
    Row(section="3", figure="d", result="0.5", target="≥ 1.5", met=False),
]


def test_markdown_table_escapes_pipes_and_marks_misses() -> None:
    lines = markdown_table(ROWS).splitlines()
    assert lines[0].startswith("| # | figure | A | B | A/B or value")
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| 1 | a \\| b | x | y | 0.98 | ≥ 0.6 | yes |"
    assert lines[3] == "| 2 | c |  |  | skipped (no nginx) |  | — |"
    assert lines[4].endswith("| ≥ 1.5 | **no** |")


def test_text_table_aligns_cuts_long_cells_and_lists_notes() -> None:
    rows = [*ROWS, Row(section="4", figure="f" * 80, result="1")]
    lines = text_table(rows, width=20).splitlines()
    header, rule, *body = lines
    column_a = header.index(" A ") + 1
    assert rule.split("  ")[0] == "-"
    assert [line[column_a] for line in body[:2]] == ["x", " "]
    assert body[3].startswith("4  " + "f" * 19 + "…")
    assert body[2].rstrip().endswith("no")  # plain "no", no Markdown bold
    assert "no nginx" not in body[1]  # notes go under the table
    assert lines[-2:] == ["notes:", "  2 c: no nginx"]


def test_row_json_round_trip() -> None:
    for row in ROWS:
        assert Row.from_json(json.loads(json.dumps(row.to_json()))) == row


# ---------------------------------------------------------------------------- report


def _spread(*runs: float) -> dict[str, Any]:
    return spread(list(runs))


def _results(mode: str = "full", **units: dict[str, Any]) -> dict[str, Any]:
    return {"mode": mode, "units": units, "machine": {"cpu_model": "Test CPU", "nproc": 2}}


def _bulk(relay: list[float], direct: list[float]) -> dict[str, Any]:
    return {
        "status": "ok",
        "result": {
            "bytes_per_run": 1 << 30,
            "rounds": len(relay),
            "mb_s": {"relay": spread(relay), "direct": spread(direct)},
            "ratios": {"relay/direct": {"per_round": spread(paired(relay, direct), 3)}},
        },
    }


def test_bulk_target_is_judged_on_the_median_of_per_round_ratios() -> None:
    (row,) = report.rows(_results(bulk_64k=_bulk([610.0, 500.0, 590.0], [1000.0] * 3)))
    assert row.met is False  # 0.59 < 0.6
    assert row.result == f"0.59 [0.50{EN_DASH}0.61]"
    assert row.figure.endswith(f"(1,024 MiB {TIMES} 3)")
    (row,) = report.rows(_results(bulk_64k=_bulk([600.0, 700.0, 650.0], [1000.0] * 3)))
    assert row.met is True


def test_skipped_and_failed_units_get_one_row_each() -> None:
    rows = report.rows(
        _results(
            nginx={"status": "skipped", "reason": "nginx not found"},
            peer={"status": "failed", "reason": "boom\nmore"},
        )
    )
    assert [(r.section, r.result, r.met, r.note) for r in rows] == [
        ("2", "skipped", None, "nginx not found"),
        ("3", "failed", False, "boom"),
    ]


def _latency(count: int, over: int = 0) -> dict[str, Any]:
    return {
        "status": "ok",
        "result": {
            "connect_latency": {
                "count": count,
                "p50_ms": 0.9,
                "p99_ms": 5.5,
                "max_ms": 8.0,
                "over_1s": over,
            }
        },
    }


@pytest.mark.parametrize(
    ("mode", "count", "over", "met"),
    [
        ("full", 2000, 0, True),
        ("full", 2000, 1, False),
        ("full", 200, 0, False),  # too few connects to meet "none in 2,000"
        ("quick", 200, 0, None),  # a quick run does not judge it at all
    ],
)
def test_connect_targets(mode: str, count: int, over: int, met: bool | None) -> None:
    p50, p99, over_1s = report.rows(_results(mode, latency=_latency(count, over)))
    assert (p50.met, p99.met) == (True, False)
    assert over_1s.met is met


def test_memory_count_target_needs_10000_without_errors() -> None:
    result = {
        "connections": 9_952,
        "connections_requested": 10_000,
        "connections_capped_by_fd_limit": True,
        "fd_limits": {"hard": 20_000, "hard_raise_error": "not allowed"},
        "open_failures": 0,
        "echo_failures": 0,
        "rss_before_kib": 64_000,
        "rss_open_kib": 380_000,
        "kib_per_connection": {"value": 31.8},
    }
    per, count = report.rows(_results(memory={"status": "ok", "result": result}))
    assert per.met is True
    assert count.met is False
    assert "20,000" in count.note
    # The A column no longer reads "0 open" next to a value of 9,952 opened.
    assert count.a == "9,952 tried of 10,000: 0 failed to open, 0 to echo"
    assert count.result == "9,952 opened, 9,952 echoed"


def test_memory_count_row_counts_each_failure_once() -> None:
    """An attempt that failed to open also fails its echo: echoed = attempted - echo failures."""
    result = {
        "connections": 9_990,
        "connections_requested": 10_000,
        "connections_attempted": 10_000,
        "connections_echoed": 9_985,
        "connections_capped_by_fd_limit": False,
        "open_failures": 10,
        "echo_failures": 15,
        "rss_before_kib": 64_000,
        "rss_open_kib": 380_000,
        "kib_per_connection": {"value": 31.6},
    }
    _per, count = report.rows(_results(memory={"status": "ok", "result": result}))
    assert count.a == "10,000 tried: 10 failed to open, 15 to echo"
    assert count.result == "9,990 opened, 9,985 echoed"
    assert count.met is False


def _attack_phase(rate: float | None, p99: float | None, peak: int, cap: bool) -> dict[str, Any]:
    return {
        "attempted": 100,
        "success_rate": rate,
        "connect_p99_ms": p99,
        "relay_rss_kib": {"start": 60_000, "peak": peak, "end": peak},
        "rss_cap_hit": cap,
    }


def test_attack_rows_judge_each_attack_phase_against_99_percent() -> None:
    result = {
        "phases": {
            "baseline": _attack_phase(1.0, 4.0, 70_000, False),
            "slow": _attack_phase(0.995, 9.0, 90_000, False),
            "flood": _attack_phase(0.0, None, 2_200_000, True),
        }
    }
    result["baseline"] = result["phases"]["baseline"]
    slow, flood = report.rows(_results(attack={"status": "ok", "result": result}))
    assert (slow.section, slow.result, slow.met) == ("9", "99.5%", True)
    assert "baseline 100%" in slow.b
    assert (flood.result, flood.met, flood.note) == ("0.0%", False, "RSS cap hit")
    assert "2,148 MiB" in flood.a


def test_update_rewrites_only_the_marked_blocks(tmp_path: Path) -> None:
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_results(bulk_64k=_bulk([700.0], [1000.0]))), "utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n<!-- bench:machine -->\nold\n<!-- /bench:machine -->\nmiddle\n"
        "<!-- bench:table -->\nold table\n<!-- /bench:table -->\nend\n",
        "utf-8",
    )
    assert report.main([str(results), "--update", str(doc)]) == 0
    text = doc.read_text("utf-8")
    assert text.startswith("intro\n<!-- bench:machine -->\n- CPU: Test CPU")
    assert "old" not in text
    assert "| 1 | Bulk WebSocket, 64 KiB messages" in text
    assert text.endswith("<!-- /bench:table -->\nend\n")


# ---------------------------------------------------------------------------- suite


def test_only_selects_units_and_latency_parts() -> None:
    (latency,) = [u for u in suite.UNITS if u.key == "latency"]
    assert latency.argv(False, ["rate", "http"])[-2:] == ["--parts", "rate"]
    assert latency.argv(True, ["connect", "pingpong"])[:1] == ["--quick"]
    assert suite._sections("bulk, http") == ["bulk", "http"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown section"):
        suite._sections("bulk,warp")
    covered = {s for u in suite.UNITS for s in u.sections}
    assert covered == set(suite.SECTIONS)


def test_worker_scaling_rows_compare_two_workers_with_one_per_round() -> None:
    result = {
        "rounds": 2,
        "clients": 2,
        "concurrency": 50,
        "connects_per_s": {"1": spread([200.0, 300.0], 1), "2": spread([300.0, 420.0], 1)},
        "bulk_mb_s": {"1": spread([500.0, 600.0], 1), "2": spread([500.0, 900.0], 1)},
        "ratios": {
            "connects_2_over_1": spread(paired([300.0, 420.0], [200.0, 300.0])),
            "bulk_2_over_1": spread(paired([500.0, 900.0], [500.0, 600.0])),
        },
        "failed_connects": 0,
        "loadavg_at_start": [5.9, 5.8, 5.8],
    }
    connects, bulk = report.rows(_results(workers={"status": "ok", "result": result}))
    assert connects.result == f"1.45 [1.40{EN_DASH}1.50]"
    assert connects.a.startswith("2 workers 360")
    assert connects.b.startswith("1 worker 250")
    assert connects.met is None
    assert "load average 5.9" in connects.note
    assert bulk.result == f"1.25 [1.00{EN_DASH}1.50]"


def _peer_result(**extra: Any) -> dict[str, Any]:
    cpu = {"tunnel_cpu_s_per_gb": {"median": 1.7, "min": 1.6, "max": 1.8}}
    mb_s = {"hybridrelay": spread([800.0, 790.0, 810.0])}
    mb_s |= {"websocket-tunnel": spread([400.0, 410.0, 390.0])}
    return {
        "bytes_per_run": 1 << 30,
        "rounds": 3,
        "mb_s": mb_s,
        "ratios": {"hybridrelay/websocket-tunnel": {"per_round": spread([2.0, 1.9, 2.1])}},
        "cpu": {"hybridrelay": cpu, "websocket-tunnel": cpu},
        "websocket_tunnel_version": "0.3.2",
        **extra,
    }


def test_peer_rows_add_openssh_as_a_second_peer_without_a_target() -> None:
    result = _peer_result()
    result["mb_s"]["ssh"] = spread([200.0, 210.0, 190.0])
    result["ratios"]["hybridrelay/ssh"] = {"per_round": spread([4.0, 3.8, 4.2])}
    result["cpu"]["ssh"] = {"tunnel_cpu_s_per_gb": {"median": 3.4, "min": 3.3, "max": 3.5}}
    result |= {"ssh_version": "OpenSSH_9.2p1 Debian-2", "ssh_cipher": "chacha20-poly1305"}
    wtunnel, ssh = report.rows(_results(peer={"status": "ok", "result": result}))
    assert wtunnel.met is True
    assert ssh.figure.startswith("TCP tunnel vs OpenSSH ssh -L")
    assert ssh.b.startswith("OpenSSH_9.2p1 200")
    assert ssh.result.startswith("4")
    assert ssh.met is None  # a reference, not a target
    assert "chacha20-poly1305" in ssh.note
    assert "ssh 3.4" in ssh.note


def test_peer_rows_say_why_the_ssh_path_was_skipped() -> None:
    result = _peer_result(ssh_skipped="sshd not found; install them from the OS packages")
    _wtunnel, ssh = report.rows(_results(peer={"status": "ok", "result": result}))
    assert ssh.result == "skipped"
    assert "sshd not found" in ssh.note
