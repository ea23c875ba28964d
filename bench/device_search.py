"""How long a page of the device registry and a device search take over 100,000 devices.

    python -m bench.device_search                    # 100,000 devices, 20 rounds per query
    python -m bench.device_search --devices 1000000 --rounds 5

The registry is a SQLite store file in a temporary directory, made by the store itself
(schema and migrations) and filled in one transaction (``insert_devices``): one disabled
device in 1,000 and three connected ones. Each query is what ``GET /$mgmt/v1/devices``
asks the store for (50 a page, ``device_search_scan`` 10,000): the first page, a page
deep in the registry (a continuation token), a prefix, status=disabled, connected, and
a substring with one match (its first page: 10,000 ids examined). Times are wall-clock
per call through the store's worker thread, median and worst of ``--rounds``; the JSON
also says how many devices each answer held and whether it had a continuation.
Not part of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybridrelay.relay.config import RelayConfig
from hybridrelay.relay.store.device_query import DeviceQuery
from hybridrelay.relay.store.models import Authentication, Device, SymmetricKey
from hybridrelay.relay.store.records import encode_continuation
from hybridrelay.relay.store.sqlite import DEFAULT_FILE, SqliteStore
from hybridrelay.relay.store.sqlite.devices import insert_devices

KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="


def registry(count: int) -> Iterator[Device]:
    auth = Authentication(
        type="sas", symmetric_key=SymmetricKey(primary_key=KEY, secondary_key=KEY)
    )
    connected = {0, count // 2, count - 1}
    for n in range(count):
        yield Device(
            device_id=f"dev-{n:07d}",
            etag=f"e{n}",
            generation_id=f"g{n}",
            status="disabled" if n % 1000 == 999 else "enabled",
            connection_state="connected" if n in connected else "disconnected",
            authentication=auth,
        )


async def measure(path: Path, count: int, rounds: int) -> dict[str, Any]:
    store = await SqliteStore.open(RelayConfig(), path=path)
    middle = encode_continuation(f"dev-{count // 2:07d}")
    cases: dict[str, tuple[str | None, DeviceQuery | None]] = {
        "first_page": (None, None),
        "deep_page": (middle, None),
        "prefix": (None, DeviceQuery(prefix=f"dev-{count // 2:07d}"[:-2])),
        "status_disabled": (None, DeviceQuery(status="disabled")),
        "connected": (None, DeviceQuery(connection_state="connected")),
        "substring_first_page": (None, DeviceQuery(contains=f"{count - 7:07d}"[-6:])),
    }
    results: dict[str, Any] = {}
    try:
        for name, (token, query) in cases.items():
            times: list[float] = []
            page = None
            for _ in range(rounds):
                started = time.perf_counter()
                page = await store.list_devices(limit=50, continuation=token, query=query)
                times.append(time.perf_counter() - started)
            assert page is not None
            results[name] = {
                "median_ms": round(statistics.median(times) * 1000, 3),
                "max_ms": round(max(times) * 1000, 3),
                "devices": len(page.items),
                "continuation": page.continuation is not None,
            }
            print(
                f"{name:22} median {results[name]['median_ms']:8.3f} ms  "
                f"max {results[name]['max_ms']:8.3f} ms  {len(page.items)} devices",
                file=sys.stderr,
            )
    finally:
        await store.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device_search", description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hybridrelay-bench-") as tmp:
        path = Path(tmp) / DEFAULT_FILE

        async def create_schema() -> None:
            await (await SqliteStore.open(RelayConfig(), path=path)).close()

        asyncio.run(create_schema())
        started = time.perf_counter()
        with contextlib.closing(sqlite3.connect(path)) as db:
            insert_devices(db, registry(args.devices))
        fill_s = time.perf_counter() - started
        print(f"filled {args.devices} devices in {fill_s:.1f} s", file=sys.stderr)
        queries = asyncio.run(measure(path, args.devices, args.rounds))
    print(
        json.dumps(
            {"devices": args.devices, "rounds": args.rounds, "fill_s": round(fill_s, 2), **queries}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
