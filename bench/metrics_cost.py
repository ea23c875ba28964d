"""What the relay's metrics cost per relayed connection: a micro-benchmark of the hot path.

    python -m bench.metrics_cost                 # 200,000 connections x 7 rounds
    python -m bench.metrics_cost --n 50000 --rounds 3

It times ``hc_endpoints._stream_started`` (the metrics and bookkeeping of a new relayed
connection) plus the ``on_finish`` callback it installs (the same at its end), with the
cluster handle left out (``None``: the single-node case), over ``--hcs`` hybrid connection
names in turn. The same script runs against an older checkout of the relay
(``PYTHONPATH=/path/to/old/core:/path/to/old/relay python -m bench.metrics_cost``) to
compare before and after a change: it uses nothing but that function's inputs.

Prints the best and median nanoseconds of CPU time (``time.process_time_ns``: a busy
machine's waits for a core do not count) per connection over the rounds (the best is the
least disturbed by the rest of the machine) as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from hybridrelay.relay import hc_endpoints
from hybridrelay.relay.metrics import RelayMetrics
from hybridrelay.relay.splices import SpliceRegistry


class _Splice:
    """What ``_stream_started`` needs of a splice: hashable, with ``on_finish`` and the
    identity the live-streams API lists (id, listener, start time)."""

    __slots__ = ("listener_id", "on_finish", "started_at", "stream_id")

    def __init__(self) -> None:
        self.on_finish: Any = None
        self.stream_id: str | None = None
        self.listener_id: str | None = None
        self.started_at: float | None = None

    def started(self, listener_id: str, started_at: float) -> None:
        self.listener_id = listener_id
        self.started_at = started_at
        self.stream_id = ""  # Splice makes its id when first read


def _round(n: int, names: list[str]) -> float:
    started = getattr(hc_endpoints, "_stream_started")  # noqa: B009 - private on purpose
    state: Any = SimpleNamespace(metrics=RelayMetrics(), cluster=None, now=time.time)
    live: Any = SpliceRegistry()
    loop = asyncio.get_running_loop()
    pendings = [
        SimpleNamespace(handle=None, started=loop.time(), hc_name=name, listener_id="l")
        for name in names
    ]
    splices = [_Splice() for _ in range(n)]
    count = len(pendings)
    t0 = time.process_time_ns()
    for i, splice in enumerate(splices):
        started(state, live, pendings[i % count], splice)
        splice.on_finish(100, 200)
    return (time.process_time_ns() - t0) / n


async def _main(n: int, rounds: int, hcs: int) -> dict[str, object]:
    names = [f"hc-{i}" for i in range(hcs)]
    _round(min(n, 10_000), names)  # warm-up
    per_connection = [_round(n, names) for _ in range(rounds)]
    return {
        "bench": "metrics_cost",
        "n": n,
        "rounds": rounds,
        "hybrid_connections": hcs,
        "best_ns_per_connection": round(min(per_connection), 1),
        "median_ns_per_connection": round(statistics.median(per_connection), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200_000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hcs", type=int, default=10, help="hybrid connection names in turn")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args.n, args.rounds, args.hcs))))


if __name__ == "__main__":
    main()
