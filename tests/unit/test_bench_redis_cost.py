"""bench.redis_cost: parsing ``INFO`` replies, the usage arithmetic, failed cases reported.

No Redis and no sockets: the INFO text is what redis-server 7.0 answers to
``INFO stats commandstats`` (CRLF line ends, as on the wire).
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from bench.redis_cost import (
    CommandStat,
    Meter,
    Usage,
    parse_commandstats,
    parse_info,
    run_case,
    table,
)
from bench.throughput import BenchError

from hybridrelay.errors import HandshakeError

INFO = "\r\n".join(
    [
        "# Stats",
        "total_connections_received:3",
        "total_commands_processed:9",
        "total_net_input_bytes:364",
        "total_net_output_bytes:361",
        "total_net_repl_input_bytes:0",
        "",
        "# Commandstats",
        "cmdstat_get:calls=1,usec=2,usec_per_call=2.00,rejected_calls=0,failed_calls=0",
        "cmdstat_EVALSHA:calls=12,usec=340,usec_per_call=28.33,rejected_calls=1,failed_calls=2",
        "cmdstat_config|get:calls=1,usec=11,usec_per_call=11.00,rejected_calls=0,failed_calls=0",
        "cmdstat_info:calls=4,usec=90,usec_per_call=22.50",
        "",
    ]
)


def test_parse_info_reads_key_value_lines_and_skips_headers() -> None:
    info = parse_info(INFO)
    assert info["total_net_input_bytes"] == "364"
    assert info["total_commands_processed"] == "9"
    assert not any(key.startswith("#") for key in info)
    assert "" not in info
    # A value may itself contain ':' and '='; only the first ':' splits.
    assert parse_info("a:b:c\r\nno colon\r\n") == {"a": "b:c"}


def test_parse_commandstats() -> None:
    stats = parse_commandstats(INFO)
    assert stats == {
        "get": CommandStat(calls=1, usec=2),
        "evalsha": CommandStat(calls=12, usec=340, failed_calls=2, rejected_calls=1),
        "config|get": CommandStat(calls=1, usec=11),
        "info": CommandStat(calls=4, usec=90),  # older servers: no rejected/failed fields
    }


def test_parse_commandstats_ignores_other_sections_and_odd_fields() -> None:
    assert parse_commandstats("# Stats\r\ntotal_net_input_bytes:1\r\n") == {}
    odd = "cmdstat_set:calls=x,usec=7,junk,=3\r\n"
    assert parse_commandstats(odd) == {"set": CommandStat(calls=0, usec=7)}


def test_usage_from_info_and_arithmetic() -> None:
    before = Usage.from_info(INFO)
    assert before.net_in == 364
    assert before.net_out == 361
    assert before.calls["evalsha"] == 12
    after = Usage.from_info(
        INFO.replace("total_net_input_bytes:364", "total_net_input_bytes:1364").replace(
            "cmdstat_get:calls=1", "cmdstat_get:calls=11"
        )
        + "cmdstat_publish:calls=5,usec=1\r\n"
    )
    delta = after.minus(before).without(frozenset({"info"}))
    assert delta.net_in == 1000
    assert delta.net_out == 0
    assert {n: c for n, c in delta.calls.items() if c} == {"get": 10, "publish": 5}
    assert delta.total_calls() == 15
    per = delta.scaled(1 / 10).as_json()
    assert per == {
        "commands": {"get": 1.0, "publish": 0.5},  # zeros are left out
        "commands_total": 1.5,
        "net_input_bytes": 100.0,
        "net_output_bytes": 0.0,
    }
    # Subtracting an estimate never makes a counter negative when floor is asked for.
    over = delta.minus(Usage(calls={"get": 50.0}, net_in=5000.0), floor=True)
    assert over.calls["get"] == 0
    assert over.net_in == 0
    assert delta.minus(Usage(calls={"get": 50.0})).calls["get"] == -40


def test_usage_from_info_without_net_bytes_is_an_error() -> None:
    with pytest.raises(BenchError, match="total_net"):
        Usage.from_info("# Commandstats\r\ncmdstat_get:calls=1,usec=1\r\n")


class _StillMeter:
    """Counters that never move: every batch costs nothing."""

    overhead = Usage()
    background_per_s = Usage()

    async def read(self) -> Usage:
        return Usage.from_info(INFO)


class _Echo:
    handled = 0


async def test_a_case_whose_connects_all_fail_is_reported_not_raised() -> None:
    attempts = 0

    async def refused() -> Any:
        nonlocal attempts
        attempts += 1
        raise HandshakeError(404, "Not Found")

    out = await run_case(
        "cross_node",
        refused,
        count=100,
        meter=cast(Meter, _StillMeter()),
        echo=cast(Any, _Echo()),
        timeout_s=1.0,
        max_consecutive_failures=7,
        settle_s=0.0,
        note_on_failure="needs cluster-wide presence",
    )
    assert attempts == 7
    assert out["status"] == "failed"
    assert out["aborted_after_consecutive_failures"] is True
    assert out["attempted"] == out["failed"] == 7
    assert out["completed"] == 0
    assert out["failures"] == {"HandshakeError 404 Not Found": 7}
    assert out["note"] == "needs cluster-wide presence"
    assert "per_connect" not in out

    local = {"status": "ok", "per_connect": Usage(calls={"hgetall": 4.0}, net_in=474.0).as_json()}
    lines = table({"cases": {"cross_node": out, "local": local}}).splitlines()
    assert lines[0].split() == ["per", "connect", "cross_node", "local"]
    assert lines[1].split() == ["hgetall", "-", "4.0"]
    assert lines[-1].split() == ["status", "failed", "ok"]
