"""The summary table of a suite run: built from its JSON, printed as text or Markdown.

    python -m bench.report bench-results.json                 # Markdown table on stdout
    python -m bench.report bench-results.json --machine       # also the machine block
    python -m bench.report bench-results.json --update docs/performance.md

``--update`` replaces what stands between the ``<!-- bench:table -->`` /
``<!-- /bench:table -->`` and ``<!-- bench:machine -->`` / ``<!-- /bench:machine -->``
markers of that file, so regenerating the docs after a new run is one command.

Every figure's target comes from issue 7 and lives here, in :data:`TARGETS`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.stats import EN_DASH, TIMES, Row, fmt, markdown_table

__all__ = ["TARGETS", "machine_lines", "main", "rows"]

TARGETS: Final = {
    "bulk": 0.6,  # relayed / direct throughput, 64 KiB messages
    "nginx": 1.0,  # relayed / nginx
    "peer": 1.5,  # hybridrelay / websocket-tunnel
    "connect_p50_ms": 1.0,
    "connect_p99_ms": 5.0,
    "connect_count": 2000,
    "rate": 1000.0,  # relayed connects per second at concurrency 50
    "pingpong_us": 150.0,  # relayed p50 - direct p50
    "memory_kib": 32.0,  # relay RSS per idle relayed connection
    "memory_count": 10_000,
    "http": 0.5,  # relayed / direct requests per second
    # Issue 11: legitimate relayed connects that succeed while the relay is attacked.
    "attack_success": 0.99,
}

Unit = dict[str, Any]


def _range(s: dict[str, Any], unit: str = "", digits: int | None = None) -> str:
    """``median [min-max]`` of a spread() dict."""
    med = fmt(s["median"], "", digits)
    if len(s.get("runs", [])) < 2:
        return f"{med} {unit}".rstrip()
    return (
        f"{med} [{fmt(s['min'], '', digits)}{EN_DASH}{fmt(s['max'], '', digits)}] {unit}".rstrip()
    )


def _status_row(num: str, figure: str, unit: Unit | None, target: str) -> Row | None:
    """The one row of a unit that did not produce figures (skipped or failed), else None."""
    if unit is None:
        return None
    if unit["status"] == "skipped":
        return Row(section=num, figure=figure, result="skipped", target=target,
                   note=unit.get("reason", ""))  # fmt: skip
    if unit["status"] != "ok":
        reason = str(unit.get("reason", "")).splitlines()
        return Row(section=num, figure=figure, result="failed", target=target, met=False,
                   note=reason[0] if reason else "")  # fmt: skip
    return None


def _bulk(units: dict[str, Unit], quick: bool) -> list[Row]:
    out: list[Row] = []
    for key, label, target in (
        ("bulk_64k", "64 KiB", TARGETS["bulk"]),
        ("bulk_1k", "1 KiB", None),
        ("bulk_128", "128 B", None),
    ):
        unit = units.get(key)
        target_text = f"≥ {target}" if target else "— (reported)"
        figure = f"Bulk WebSocket, {label} messages"
        if (row := _status_row("1", figure, unit, target_text)) or unit is None:
            out += [row] if row else []
            continue
        r = unit["result"]
        size = r["bytes_per_run"] / 2**20
        ratio = r["ratios"]["relay/direct"]["per_round"]
        out.append(
            Row(
                section="1",
                figure=f"{figure} ({size:,.0f} MiB {TIMES} {r['rounds']})",
                a="relayed " + _range(r["mb_s"]["relay"], "MB/s"),
                b="direct " + _range(r["mb_s"]["direct"], "MB/s"),
                result=_range(ratio, digits=2),
                target=target_text,
                met=None if target is None else ratio["median"] >= target,
            )
        )
    return out


def _nginx(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("nginx")
    target = TARGETS["nginx"]
    figure = "Bulk 64 KiB, relayed vs nginx"
    if (row := _status_row("2", figure, unit, f"≥ {target}")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    size = r["bytes_per_run"] / 2**20
    relay_nginx = r["ratios"]["relay/nginx"]["per_round"]
    nginx_direct = r["ratios"]["nginx/direct"]["per_round"]
    return [
        Row(
            section="2",
            figure=f"{figure} ({size:,.0f} MiB {TIMES} {r['rounds']})",
            a="relayed " + _range(r["mb_s"]["relay"], "MB/s"),
            b="nginx " + _range(r["mb_s"]["nginx"], "MB/s"),
            result=_range(relay_nginx, digits=2),
            target=f"≥ {target}",
            met=relay_nginx["median"] >= target,
        ),
        Row(
            section="2",
            figure="Bulk 64 KiB, nginx vs direct (same run)",
            a="nginx " + _range(r["mb_s"]["nginx"], "MB/s"),
            b="direct " + _range(r["mb_s"]["direct"], "MB/s"),
            result=_range(nginx_direct, digits=2),
            target="— (reported)",
        ),
    ]


def _peer(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("peer")
    target = TARGETS["peer"]
    figure = "TCP tunnel vs websocket-tunnel"
    if (row := _status_row("3", figure, unit, f"≥ {target}")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    size = r["bytes_per_run"] / 2**20
    ratio = r["ratios"]["hybridrelay/websocket-tunnel"]["per_round"]

    cpu = {n: r["cpu"][n].get("tunnel_cpu_s_per_gb") for n in ("hybridrelay", "websocket-tunnel")}
    note = ""
    if all(cpu.values()):
        note = "CPU-s per GB, all tunnel processes: " + ", ".join(
            f"{n} {fmt(c['median'], digits=1)}" for n, c in cpu.items() if c
        )
    return [
        Row(
            section="3",
            figure=f"{figure} ({size:,.0f} MiB {TIMES} {r['rounds']})",
            a="hybridrelay " + _range(r["mb_s"]["hybridrelay"], "MB/s"),
            b=f"websocket-tunnel {r.get('websocket_tunnel_version', '')} "
            + _range(r["mb_s"]["websocket-tunnel"], "MB/s"),
            result=_range(ratio, digits=2),
            target=f"≥ {target}",
            met=ratio["median"] >= target,
            note=note,
        ),
        *_peer_ssh(r, size),
    ]


def _peer_ssh(r: dict[str, Any], size: float) -> list[Row]:
    """The second peer, OpenSSH ``ssh -L``, in the same run: no target, a reference."""
    figure = "TCP tunnel vs OpenSSH ssh -L"
    if skipped := r.get("ssh_skipped"):
        return [Row(section="3", figure=figure, result="skipped", note=skipped)]
    if "ssh" not in r.get("mb_s", {}):
        return []  # a run from before the ssh path, or one that left it out
    cpu = {n: r["cpu"][n].get("tunnel_cpu_s_per_gb") for n in ("hybridrelay", "ssh")}
    note = f"ssh cipher {r.get('ssh_cipher', '?')}"
    if all(cpu.values()):
        note += "; CPU-s per GB, all tunnel processes: " + ", ".join(
            f"{n} {fmt(c['median'], digits=1)}" for n, c in cpu.items() if c
        )
    return [
        Row(
            section="3",
            figure=f"{figure} ({size:,.0f} MiB {TIMES} {r['rounds']})",
            a="hybridrelay " + _range(r["mb_s"]["hybridrelay"], "MB/s"),
            b=f"{r.get('ssh_version', 'ssh').split()[0]} " + _range(r["mb_s"]["ssh"], "MB/s"),
            result=_range(r["ratios"]["hybridrelay/ssh"]["per_round"], digits=2),
            note=note,
        )
    ]


def _latency(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("latency")
    figure = "Relayed connect / rate / ping-pong"
    if (row := _status_row(f"4{EN_DASH}6", figure, unit, "")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    out: list[Row] = []
    if c := r.get("connect_latency"):
        n = c["count"]
        enough = n >= TARGETS["connect_count"]
        # A quick run makes too few connects to judge the 2,000-connect target at all.
        count_met = None if quick and not enough else enough and c["over_1s"] == 0
        out += [
            Row(
                section="4",
                figure=f"New relayed connection p50 ({n:,} seq.)",
                result=fmt(c["p50_ms"], "ms", 3),
                target=f"≤ {fmt(TARGETS['connect_p50_ms'], 'ms', 0)}",
                met=c["p50_ms"] <= TARGETS["connect_p50_ms"],
            ),
            Row(
                section="4",
                figure=f"New relayed connection p99 ({n:,} seq.)",
                result=fmt(c["p99_ms"], "ms", 2),
                target=f"≤ {fmt(TARGETS['connect_p99_ms'], 'ms', 0)}",
                met=c["p99_ms"] <= TARGETS["connect_p99_ms"],
            ),
            Row(
                section="4",
                figure="New relayed connections over 1 s",
                a=f"max {fmt(c['max_ms'], 'ms', 2)}",
                result=f"{c['over_1s']} of {n:,}",
                target=f"0 of {TARGETS['connect_count']:,}",
                met=count_met,
                note="" if enough else f"only {n:,} connects",
            ),
        ]
    if cr := r.get("connect_rate"):
        rounds = cr.get("connects_per_s_rounds") or {"median": cr["connects_per_s"]}
        out.append(
            Row(
                section="5",
                figure=f"Relayed connects/s, concurrency {cr['concurrency']}",
                a=f"{cr['attempted']:,} connects, {cr['failed']} failed",
                result=_range(rounds, "/s", 0),
                target=f"≥ {TARGETS['rate']:,.0f} /s, no error",
                met=rounds["median"] >= TARGETS["rate"] and cr["failed"] == 0,
            )
        )
        if cpu := cr.get("relay_cpu_us_per_connect"):
            out.append(
                Row(
                    section="5",
                    figure="Relay CPU per relayed connect",
                    result=_range(cpu.get("rounds") or {"median": cpu["value"]}, "µs", 0),
                    target="— (reported)",
                )
            )
    if p := r.get("ping_pong"):
        over = p["relay_overhead_us"]
        per_round = over.get("p50_per_round") or {"median": over["p50"]}
        out.append(
            Row(
                section="6",
                figure=f"64 B ping-pong p50 overhead ({p['rounds']} {TIMES} "
                f"{p['round_trips_per_round']:,})",
                a=f"relayed p50 {fmt(p['relay']['p50_us'], 'µs', 1)}, "
                f"p99 {fmt(p['relay']['p99_us'], 'µs', 1)}",
                b=f"direct p50 {fmt(p['direct']['p50_us'], 'µs', 1)}, "
                f"p99 {fmt(p['direct']['p99_us'], 'µs', 1)}",
                result="+" + _range(per_round, "µs", 1),
                target=f"≤ {TARGETS['pingpong_us']:.0f} µs",
                met=per_round["median"] <= TARGETS["pingpong_us"],
            )
        )
    return out


def _attempted(r: dict[str, Any]) -> int:
    """Connections the memory unit tried to open: every one opened or failed to."""
    return int(r.get("connections_attempted", r["connections"] + r["open_failures"]))


def _echoed(r: dict[str, Any]) -> int:
    # echo_failures counts over every attempt, so one that never opened counts there too.
    return int(r.get("connections_echoed", _attempted(r) - r["echo_failures"]))


def _open_and_echo_failures(r: dict[str, Any]) -> str:
    """What the count row's value leaves out: the attempts, and the failures of each step
    (the A column once read "0 open / 0 echo failures" next to "9,952 open")."""
    attempted = _attempted(r)
    requested = r.get("connections_requested", attempted)
    tried = f"{attempted:,} tried" + (f" of {requested:,}" if requested != attempted else "")
    return f"{tried}: {r['open_failures']:,} failed to open, {r['echo_failures']:,} to echo"


def _memory(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("memory")
    figure = "Relay RSS per idle relayed connection"
    if (row := _status_row("7", figure, unit, f"≤ {TARGETS['memory_kib']:.0f} KiB")) or not unit:
        return [row] if row else []
    r = unit["result"]
    n, wanted = r["connections"], TARGETS["memory_count"]
    per = r["kib_per_connection"]["value"]
    failures = r["open_failures"] + r["echo_failures"]
    note = ""
    if r.get("connections_capped_by_fd_limit"):
        limits = r.get("fd_limits", {})
        note = f"capped by the hard fd limit {limits.get('hard', '?'):,}"
        if "hard_raise_error" in limits:
            note += ", which cannot be raised here"
    count_met: bool | None = n >= wanted and failures == 0
    if quick and r.get("connections_requested", n) < wanted:
        count_met = None
        note = note or f"quick: {r.get('connections_requested', n):,} requested"
    return [
        Row(
            section="7",
            figure=f"Relay RSS per idle connection ({n:,} open)",
            a=f"RSS {r['rss_before_kib'] / 1024:,.1f} → {r['rss_open_kib'] / 1024:,.1f} MiB",
            result=fmt(per, "KiB", 1),
            target=f"≤ {TARGETS['memory_kib']:.0f} KiB",
            met=per <= TARGETS["memory_kib"],
        ),
        Row(
            section="7",
            figure="Idle relayed connections, all echo",
            a=_open_and_echo_failures(r),
            result=f"{n:,} opened, {_echoed(r):,} echoed",
            target=f"{wanted:,}, no error",
            met=count_met,
            note=note,
        ),
    ]


def _http(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("http")
    target = TARGETS["http"]
    figure = "HTTP GET, keep-alive, concurrency 50"
    if (row := _status_row("8", figure, unit, f"≥ {target}")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    ratio = r.get("ratio_per_round") or {"median": r["ratio_median"]}
    return [
        Row(
            section="8",
            figure=f"HTTP GET keep-alive, c=50 ({r['rounds']} rounds)",
            a="relayed " + _range(r["relay_rps"], "req/s", 0),
            b="direct " + _range(r["direct_rps"], "req/s", 0),
            result=_range(ratio, digits=2),
            target=f"≥ {target}",
            met=ratio["median"] >= target,
        )
    ]


def _attack(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("attack")
    target = TARGETS["attack_success"]
    figure = "Legitimate connects under attack"
    if (row := _status_row("9", figure, unit, f"≥ {target:.0%}")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    base = r["baseline"]
    out: list[Row] = []
    for name, phase in r["phases"].items():
        if name == "baseline":
            continue
        rate = phase["success_rate"]
        peak = phase["relay_rss_kib"]["peak"]
        out.append(
            Row(
                section="9",
                figure=f"{figure}: {name} ({phase['attempted']:,} connects)",
                a=f"p99 {fmt(phase.get('connect_p99_ms'), 'ms', 1)}, RSS peak "
                f"{(peak or 0) / 1024:,.0f} MiB",
                b=f"baseline {base['success_rate']:.0%}, p99 "
                f"{fmt(base.get('connect_p99_ms'), 'ms', 1)}",
                result="—" if rate is None else f"{rate:.1%}",
                target=f"≥ {target:.0%}",
                met=rate is not None and rate >= target,
                note="RSS cap hit" if phase.get("rss_cap_hit") else "",
            )
        )
    return out


def _cpu_note(r: dict[str, Any], key: str, unit: str, digits: int) -> str:
    """``relay CPU 2 workers X / 1 worker Y unit`` when the result has ``key``."""
    cpu = r.get(key) or {}
    if "1" not in cpu or "2" not in cpu:
        return ""
    two, one = fmt(cpu["2"]["median"], "", digits), fmt(cpu["1"]["median"], "", digits)
    return f"relay CPU {two} (2 workers) / {one} (1 worker) {unit}"


def _workers(units: dict[str, Unit], quick: bool) -> list[Row]:
    unit = units.get("workers")
    figure = "Worker scaling, 2 workers vs 1"
    if (row := _status_row("10", figure, unit, "reported")) or unit is None:
        return [row] if row else []
    r = unit["result"]
    rates, bulk, ratios = r["connects_per_s"], r["bulk_mb_s"], r["ratios"]
    load = r.get("loadavg_at_start") or [None]
    note = f"load average {load[0]:.1f} at start" if load[0] is not None else ""
    return [
        Row(
            section="10",
            figure=f"Worker scaling: connects/s, c={r['concurrency']} ({r['rounds']} rounds)",
            a="2 workers " + _range(rates["2"], "/s", 0),
            b="1 worker " + _range(rates["1"], "/s", 0),
            result=_range(ratios["connects_2_over_1"], digits=2),
            target="reported",
            note="; ".join(
                part
                for part in (
                    f"{r['failed_connects']} failed",
                    _cpu_note(r, "relay_cpu_us_per_connect", "µs per connect", 0),
                    note,
                )
                if part
            ),
        ),
        Row(
            section="10",
            figure=f"Worker scaling: bulk, {r['clients']} streams of 64 KiB messages",
            a="2 workers " + _range(bulk["2"], "MB/s", 0),
            b="1 worker " + _range(bulk["1"], "MB/s", 0),
            result=_range(ratios["bulk_2_over_1"], digits=2),
            target="reported",
            note=_cpu_note(r, "relay_cpu_s_per_gb", "s per GB", 2),
        ),
    ]


BUILDERS: Final[list[Callable[[dict[str, Unit], bool], list[Row]]]] = [
    _bulk,
    _nginx,
    _peer,
    _latency,
    _memory,
    _http,
    _attack,
    _workers,
]


def rows(results: dict[str, Any]) -> list[Row]:
    """Every row of the summary table for a suite run's JSON (units that ran)."""
    units = results.get("units", {})
    quick = results.get("mode") == "quick"
    return [row for build in BUILDERS for row in build(units, quick)]


def machine_lines(results: dict[str, Any]) -> list[str]:
    """The machine and software, as Markdown list items."""
    m = results.get("machine", {})
    cpus = m.get("cpu_count")
    return [
        f"- CPU: {m.get('cpu_model', '?')}, {cpus} logical CPUs (`nproc` {m.get('nproc', '?')}), "
        f"{m.get('memory_gib', '?')} GiB RAM; {m.get('platform', '?')}",
        f"- Python {m.get('python', '?')} ({m.get('implementation', '?')}), "
        f"uvloop {m.get('uvloop_version', 'not installed')} (relay, agent, forwarder and bench "
        f"process), aiohttp {m.get('aiohttp', '?')}",
        f"- nginx: {m.get('nginx', 'not found')}; websocket-tunnel: "
        f"{m.get('websocket_tunnel', 'not installed')}; OpenSSH: {m.get('openssh', '?')}",
        f"- run: `{results.get('command', 'python -m bench')}`, {results.get('mode', '?')} mode, "
        f"started {results.get('started_at', '?')}, took {results.get('duration_s', 0):.0f} s; "
        f"load average at start {m.get('loadavg_at_start', '?')}",
        *_other_load(results),
    ]


def _other_load(results: dict[str, Any]) -> list[str]:
    """How many CPUs other processes kept busy while each unit ran (a shared machine)."""
    loads = {
        key: unit["other_load_cpus"]
        for key, unit in results.get("units", {}).items()
        if "other_load_cpus" in unit
    }
    if not loads:
        return []
    cells = ", ".join(f"{key} {value:.2f}" for key, value in loads.items())
    return [
        f"- CPUs kept busy by other processes during each section (0 = a quiet machine): {cells}"
    ]


def summary_line(table: list[Row]) -> str:
    met = sum(1 for r in table if r.met is True)
    missed = sum(1 for r in table if r.met is False)
    return f"{met} targets met, {missed} not met"


def _splice(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"report: no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text, count=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="JSON written by python -m bench")
    p.add_argument("--machine", action="store_true", help="also print the machine block")
    p.add_argument("--update", type=Path, metavar="FILE", help="rewrite the marked blocks of FILE")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text("utf-8"))
    table = rows(results)
    text = markdown_table(table)
    machine = "\n".join(machine_lines(results))
    if args.update is not None:
        doc = args.update.read_text("utf-8")
        doc = _splice(doc, "table", text)
        doc = _splice(doc, "machine", machine)
        args.update.write_text(doc, "utf-8")
        print(f"report: updated {args.update} ({summary_line(table)})", file=sys.stderr)
        return 0
    if args.machine:
        print(machine + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
