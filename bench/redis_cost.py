"""What one relayed connect costs Redis in a two-node cluster: commands and bytes.

    python -m bench.redis_cost                  # 500 connects per case
    python -m bench.redis_cost --connects 100 --out result.json

Setup: a throwaway ``redis-server`` (``hybridrelay.dev.cluster.start_redis``: free loopback
port, no persistence; never the machine's own Redis), two relay subprocesses
(``bench.throughput.RelayProcess``) with ``[cluster]`` on it (same prefix, node ids
``node-a`` and ``node-b``), and a ``Listener`` with an echo handler (``bench.latency.RelayEcho``)
attached to node A only. Then, sequentially, each case opens N relayed connections and
closes each at once:

* ``cross_node``: the sender connects to node B; the listener's control channel is on A;
* ``local``: the sender connects to node A, where the listener is.

Around each batch the bench reads ``INFO stats commandstats`` and reports the deltas per
completed connect: calls per command name (commands run inside Lua scripts count under
their own names too, besides ``evalsha``), all commands, and ``total_net_input_bytes`` /
``total_net_output_bytes`` (output includes pub/sub deliveries to every subscribed node).
Two corrections are made and reported: the bench's own ``INFO`` calls (an empty batch
measures them) and the cluster's background traffic while idle (heartbeats, pings),
measured over ``--idle-s`` and scaled to the batch's duration. ``raw`` has the uncorrected
deltas.

A case whose connects fail (for example 404 from node B while listener presence is still
per node) is reported with ``status: "failed"`` and the failure reasons, not as a crash;
after ``--max-consecutive-failures`` in a row the case stops early. Exactly one JSON
object goes to stdout; a table and progress go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.latency import RelayEcho
from bench.throughput import (
    HC,
    RULE,
    BenchError,
    RelayProcess,
    machine_info,
    run_main,
    write_config,
)
from hybridrelay.client import connect
from hybridrelay.dev.cluster import start_redis
from hybridrelay.errors import HandshakeError, HybridRelayError
from hybridrelay.protocol.sas import SasTokenProvider
from hybridrelay.wsclient import WsConnection

PREFIX = "bench"
# The bench's own measuring commands, never part of a connect's cost.
OWN_COMMANDS = frozenset({"info"})

# ---------------------------------------------------------------------------- INFO parsing


@dataclass(frozen=True, slots=True)
class CommandStat:
    """One ``cmdstat_<name>`` line of ``INFO commandstats``."""

    calls: int
    usec: int
    failed_calls: int = 0
    rejected_calls: int = 0


def parse_info(text: str) -> dict[str, str]:
    """``key:value`` lines of an ``INFO`` reply; section headers and blank lines skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value
    return out


def parse_commandstats(text: str) -> dict[str, CommandStat]:
    """Calls per command from ``INFO commandstats`` (``cmdstat_get:calls=2,usec=5,...``).

    Names are lower-cased; subcommands keep Redis's spelling (``client|setinfo``). Fields
    a server version does not report count as 0; lines of other sections are ignored.
    """
    stats: dict[str, CommandStat] = {}
    for key, value in parse_info(text).items():
        if not key.startswith("cmdstat_"):
            continue
        fields: dict[str, str] = {}
        for part in value.split(","):
            name, sep, text_value = part.partition("=")
            if sep:
                fields[name.strip()] = text_value.strip()
        stats[key.removeprefix("cmdstat_").lower()] = CommandStat(
            calls=_count(fields, "calls"),
            usec=_count(fields, "usec"),
            failed_calls=_count(fields, "failed_calls"),
            rejected_calls=_count(fields, "rejected_calls"),
        )
    return stats


def _count(fields: Mapping[str, str], name: str) -> int:
    try:
        return int(float(fields.get(name, "0")))
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Redis work: calls per command, bytes read from and written to clients."""

    calls: Mapping[str, float] = field(default_factory=dict)
    net_in: float = 0.0
    net_out: float = 0.0

    @classmethod
    def from_info(cls, text: str) -> Usage:
        """The cumulative counters of one ``INFO stats commandstats`` reply."""
        info = parse_info(text)
        try:
            net_in = float(info["total_net_input_bytes"])
            net_out = float(info["total_net_output_bytes"])
        except (KeyError, ValueError) as exc:
            raise BenchError(f"INFO reply without total_net_*_bytes: {exc!r}") from exc
        calls = {name: float(s.calls) for name, s in parse_commandstats(text).items()}
        return cls(calls=calls, net_in=net_in, net_out=net_out)

    def minus(self, other: Usage, *, floor: bool = False) -> Usage:
        """``self - other`` per counter; ``floor`` clamps at 0 (for subtracting estimates)."""
        names = set(self.calls) | set(other.calls)
        calls = {n: self.calls.get(n, 0.0) - other.calls.get(n, 0.0) for n in names}
        out = Usage(
            calls=calls, net_in=self.net_in - other.net_in, net_out=self.net_out - other.net_out
        )
        if not floor:
            return out
        return Usage(
            calls={n: max(c, 0.0) for n, c in calls.items()},
            net_in=max(out.net_in, 0.0),
            net_out=max(out.net_out, 0.0),
        )

    def scaled(self, factor: float) -> Usage:
        return Usage(
            calls={n: c * factor for n, c in self.calls.items()},
            net_in=self.net_in * factor,
            net_out=self.net_out * factor,
        )

    def without(self, names: frozenset[str]) -> Usage:
        return Usage(
            calls={n: c for n, c in self.calls.items() if n not in names},
            net_in=self.net_in,
            net_out=self.net_out,
        )

    def total_calls(self) -> float:
        return sum(self.calls.values())

    def as_json(self, digits: int = 2) -> dict[str, Any]:
        calls = {n: round(c, digits) for n, c in sorted(self.calls.items()) if round(c, digits)}
        return {
            "commands": calls,
            "commands_total": round(self.total_calls(), digits),
            "net_input_bytes": round(self.net_in, digits),
            "net_output_bytes": round(self.net_out, digits),
        }


# ---------------------------------------------------------------------------- measuring


def raw_client(url: str) -> aioredis.Redis:
    """A client whose ``INFO`` replies stay text (redis-py parses them into dicts)."""
    client = aioredis.Redis.from_url(url)
    client.set_response_callback("INFO", lambda response, **options: response)
    return client


async def info_text(client: aioredis.Redis, *sections: str) -> str:
    reply = await client.execute_command("INFO", *sections)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    if isinstance(reply, str):
        return reply
    raise BenchError(f"INFO returned {type(reply).__name__}; is its response callback raw?")


@dataclass
class Meter:
    """Reads the counters; knows what reading them costs and what the idle cluster costs."""

    client: aioredis.Redis
    overhead: Usage = field(default_factory=Usage)
    background_per_s: Usage = field(default_factory=Usage)

    async def read(self) -> Usage:
        return Usage.from_info(await info_text(self.client, "stats", "commandstats"))

    async def calibrate(self, idle_s: float) -> None:
        """The cost of one read (two back to back), then the idle cluster's rate."""
        first = await self.read()
        self.overhead = (await self.read()).minus(first).without(OWN_COMMANDS)
        before = await self.read()
        started = time.perf_counter()
        await asyncio.sleep(idle_s)  # a measuring window, not synchronisation
        after = await self.read()
        idle = after.minus(before).without(OWN_COMMANDS).minus(self.overhead, floor=True)
        self.background_per_s = idle.scaled(1 / (time.perf_counter() - started))


Opener = Callable[[], Awaitable[WsConnection]]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError):
        return f"HandshakeError {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}"[:200]


async def run_case(
    name: str,
    open_conn: Opener,
    *,
    count: int,
    meter: Meter,
    echo: RelayEcho,
    timeout_s: float,
    max_consecutive_failures: int,
    settle_s: float,
    note_on_failure: str,
) -> dict[str, Any]:
    """``count`` sequential connect+close through ``open_conn``; Redis cost per connect."""
    failures: collections.Counter[str] = collections.Counter()
    completed = 0
    consecutive = 0
    aborted = False
    handled0 = echo.handled
    before = await meter.read()
    started = time.perf_counter()
    for _ in range(count):
        try:
            async with asyncio.timeout(timeout_s):
                conn = await open_conn()
                with contextlib.suppress(HybridRelayError, OSError):
                    await conn.close()
        except (HybridRelayError, OSError, TimeoutError) as exc:
            failures[_reason(exc)] += 1
            consecutive += 1
            if consecutive >= max_consecutive_failures:
                aborted = True
                break
            continue
        completed += 1
        consecutive = 0
    # The listener ends its side of each stream just after the sender's close: the window
    # stays open a little longer so the last ones' cleanup is inside it (the idle cluster's
    # background during that time is subtracted like the rest).
    await asyncio.sleep(settle_s)  # a measuring window, not synchronisation
    elapsed = time.perf_counter() - started
    after = await meter.read()

    raw = after.minus(before).without(OWN_COMMANDS).minus(meter.overhead)
    corrected = raw.minus(meter.background_per_s.scaled(elapsed), floor=True)
    attempted = completed + sum(failures.values())
    out: dict[str, Any] = {
        "attempted": attempted,
        "completed": completed,
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common(5)),
        "aborted_after_consecutive_failures": aborted,
        "listener_streams_handled": echo.handled - handled0,
        "window_s": round(elapsed, 3),
        "raw": raw.as_json(),
    }
    if completed == 0:
        out["status"] = "failed"
        out["note"] = note_on_failure
        return out
    out["status"] = "ok" if not failures else "partial"
    out["per_connect"] = corrected.scaled(1 / completed).as_json(digits=3)
    print(
        f"{name}: {completed}/{attempted} connects, "
        f"{out['per_connect']['commands_total']} commands per connect",
        file=sys.stderr,
    )
    return out


# ---------------------------------------------------------------------------- the run


def _cluster_config(directory: Path, key: str, redis_url: str, node_id: str) -> Path:
    """bench.throughput's one-node config plus ``[cluster]``: same prefix, own node id."""
    directory.mkdir()
    path = write_config(directory, key)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(
            f'\n[cluster]\nredis_url = "{redis_url}"\nprefix = "{PREFIX}"\nnode_id = "{node_id}"\n'
        )
    return path


NOTES = (
    "Two relay subprocesses with [cluster] on one throwaway redis-server; a Listener (echo "
    "handler) in the bench process attached to node A; sequential connect + immediate close. "
    "Figures per completed connect: deltas of INFO commandstats (calls) and INFO stats "
    "(total_net_input_bytes/total_net_output_bytes) around each batch, minus the cost of the "
    "bench's own INFO reads and minus the idle cluster's background rate scaled to the batch "
    "window (both in 'calibration'). Commands issued inside Lua scripts count under their "
    "own names as well as under evalsha/evalsha_ro. Output bytes include pub/sub deliveries "
    "to every subscribed node."
)


def table(result: Mapping[str, Any]) -> str:
    """The per-connect figures of both cases side by side, for humans."""
    cases = result["cases"]
    names = list(cases)
    rows: list[tuple[str, ...]] = [("per connect", *names)]
    per = {n: cases[n].get("per_connect") for n in names}
    commands = sorted({c for p in per.values() if p for c in p["commands"]})
    rows.extend(
        (command, *(str(p["commands"].get(command, 0)) if p else "-" for p in per.values()))
        for command in commands
    )
    for label, key in (
        ("all commands", "commands_total"),
        ("bytes in", "net_input_bytes"),
        ("bytes out", "net_output_bytes"),
    ):
        rows.append((label, *(str(p[key]) if p else "-" for p in per.values())))
    rows.append(("status", *(str(cases[n]["status"]) for n in names)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


async def run(args: argparse.Namespace, uvloop_on: bool) -> dict[str, Any]:
    key = secrets.token_urlsafe(32)
    tokens = SasTokenProvider(RULE, key)
    listener_errors: list[str] = []
    result: dict[str, Any] = {"benchmark": "redis_cost", "connects_per_case": args.connects}
    machine = machine_info(uvloop_on)

    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "redis").mkdir()
        try:
            redis_child, redis_url = await start_redis(workdir / "redis")
        except HybridRelayError as exc:
            raise BenchError(str(exc)) from exc
        node_a = RelayProcess(_cluster_config(workdir / "a", key, redis_url, "node-a"))
        node_b = RelayProcess(_cluster_config(workdir / "b", key, redis_url, "node-b"))
        client = raw_client(redis_url)
        echo: RelayEcho | None = None
        try:
            url_a, url_b = await asyncio.gather(node_a.start(), node_b.start())
            echo = RelayEcho(url_a, tokens, listener_errors)
            await echo.start()
            meter = Meter(client)
            server = parse_info(await info_text(client, "server"))
            result["redis"] = {"version": server.get("redis_version")}
            result["nodes"] = {"node-a": url_a, "node-b": url_b, "listener_on": "node-a"}

            async def via(url: str) -> WsConnection:
                return await connect(url, HC, token_provider=tokens)

            # Warm-up on both paths: script loading, pools, caches; not recorded.
            for url in (url_a, url_b):
                for _ in range(args.warmup):
                    with contextlib.suppress(HybridRelayError, OSError, TimeoutError):
                        async with asyncio.timeout(args.timeout):
                            conn = await via(url)
                            await conn.close()
            print(f"calibrating: {args.idle_s:.1f} s idle", file=sys.stderr)
            await meter.calibrate(args.idle_s)
            result["calibration"] = {
                "info_read": meter.overhead.as_json(),
                "idle_per_s": meter.background_per_s.as_json(digits=3),
                "idle_window_s": args.idle_s,
            }
            cases: dict[str, Any] = {}
            for name, url, note in (
                (
                    "cross_node",
                    url_b,
                    "no connect through node B reached the listener on node A: cross-node "
                    "dispatch needs cluster-wide listener presence (issue 6); see failures",
                ),
                ("local", url_a, "no connect reached the listener on its own node; see failures"),
            ):
                print(f"{name}: {args.connects} sequential connects", file=sys.stderr)
                cases[name] = await run_case(
                    name,
                    functools.partial(via, url),
                    count=args.connects,
                    meter=meter,
                    echo=echo,
                    timeout_s=args.timeout,
                    max_consecutive_failures=args.max_consecutive_failures,
                    settle_s=args.settle_s,
                    note_on_failure=note,
                )
            result["cases"] = cases
            result["redis"]["keyspace_after"] = parse_info(await info_text(client, "keyspace"))
        except Exception as exc:
            detail = f"{exc}"
            for label, node in (("node-a", node_a), ("node-b", node_b)):
                if node.exited():
                    detail += f"\n{label} exited:\n{node.log_tail()}"
            raise BenchError(detail) from exc
        finally:
            if echo is not None:
                await echo.stop()
            await asyncio.gather(node_a.stop(), node_b.stop())
            await client.aclose()
            await redis_child.stop()

    result["listener_errors"] = listener_errors[:20]
    result["machine"] = machine
    result["notes"] = NOTES
    print(table(result), file=sys.stderr)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.redis_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--connects", type=int, default=500, help="connects per case (default 500)")
    p.add_argument("--warmup", type=int, default=20, help="unrecorded connects per node first")
    p.add_argument(
        "--idle-s", type=float, default=3.0, help="idle window for the background rate (3)"
    )
    p.add_argument(
        "--settle-s", type=float, default=1.0, help="wait for the last streams to end (1)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per connect (10)")
    p.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=20,
        help="stop a case after this many failed connects in a row (20)",
    )
    p.add_argument(
        "--no-uvloop", action="store_true", help="use the default asyncio loop in the bench"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.connects < 1:
        p.error("--connects must be at least 1")
    if args.warmup < 0 or args.idle_s <= 0 or args.settle_s < 0 or args.timeout <= 0:
        p.error("--warmup, --settle-s must not be negative; --idle-s, --timeout must be positive")
    if args.max_consecutive_failures < 1:
        p.error("--max-consecutive-failures must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main("redis_cost", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
