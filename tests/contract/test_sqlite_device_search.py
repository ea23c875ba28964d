"""Device search over 100,000 devices in the SQLite store (issue 14).

Fast means: every search steps through one index range, never the whole table, and a
page stops after ``scan_limit`` rows whatever matches. That is asserted on the query
plans (SQLite's ``EXPLAIN QUERY PLAN``) and on what the pages hold, not on a clock;
``python -m bench.device_search`` times the same queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import pytest
from tests.contract.stores import make_config

from hybridrelay.relay.store.device_query import DeviceQuery
from hybridrelay.relay.store.models import Authentication, Device, SymmetricKey
from hybridrelay.relay.store.sqlite import DEFAULT_FILE, SqliteStore
from hybridrelay.relay.store.sqlite.devices import insert_devices, search_sql

COUNT: Final = 100_000
KEY: Final = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
DISABLED_EVERY: Final = 1000  # dev-000999, dev-001999, ...: 100 disabled devices
CONNECTED: Final = ("dev-000042", "dev-050000", "dev-099999")


def registry(count: int) -> Iterator[Device]:
    auth = Authentication(
        type="sas", symmetric_key=SymmetricKey(primary_key=KEY, secondary_key=KEY)
    )
    for n in range(count):
        device_id = f"dev-{n:06d}"
        yield Device(
            device_id=device_id,
            etag=f"e{n}",
            generation_id=f"g{n}",
            status="disabled" if n % DISABLED_EVERY == DISABLED_EVERY - 1 else "enabled",
            connection_state="connected" if device_id in CONNECTED else "disconnected",
            authentication=auth,
        )


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file with 100,000 devices, made once for the module (about a second)."""
    path = tmp_path_factory.mktemp("registry") / DEFAULT_FILE

    async def create_schema() -> None:  # the schema as the store makes it, migrations too
        await (await SqliteStore.open(make_config(), path=path)).close()

    asyncio.run(create_schema())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert insert_devices(db, registry(COUNT)) == COUNT
    return path


@pytest.fixture
async def store(big_file: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(make_config(), path=big_file)
    yield opened
    await opened.close()


def plan(path: Path, query: DeviceQuery) -> str:
    sql, params = search_sql("", query, 10_000)
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize(
    ("query", "uses"),
    [
        (DeviceQuery(prefix="dev-0123"), "USING PRIMARY KEY (device_id>? AND device_id<?)"),
        (
            DeviceQuery(status="disabled"),
            "USING INDEX devices_by_status (status=? AND device_id>?)",
        ),
        (
            DeviceQuery(connection_state="connected"),
            "USING INDEX devices_by_connection (connection_state=? AND device_id>?)",
        ),
        (
            DeviceQuery(connection_state="connected", status="disabled", contains="x"),
            "USING INDEX devices_by_connection (connection_state=? AND device_id>?)",
        ),
        (
            DeviceQuery(status="enabled", prefix="dev-01"),
            "devices_by_status (status=? AND device_id>? AND device_id<?)",
        ),
        # No index for a substring: a primary key range from the page's start, bounded
        # by LIMIT scan_limit.
        (DeviceQuery(contains="777"), "USING PRIMARY KEY (device_id>?)"),
    ],
)
async def test_each_search_steps_through_one_index_range(
    store: SqliteStore, big_file: Path, query: DeviceQuery, uses: str
) -> None:
    found = plan(big_file, query)
    assert uses in found, found
    assert "USE TEMP B-TREE" not in found  # already in id order: nothing sorted
    assert "SCAN devices" not in found.replace("SCAN devices USING", "")


def vm_steps(path: Path, query: DeviceQuery, after: str = "", rows: int = 51) -> int:
    """SQLite virtual machine instructions (in hundreds) to read a page's first rows.

    A count of work, not of time: the same on every machine and every run.
    """
    sql, params = search_sql(after, query, 10_000)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.set_progress_handler(count, 100)
        db.execute(sql, params).fetchmany(rows)
    return steps


async def test_a_page_deep_in_the_registry_costs_what_the_first_costs(
    store: SqliteStore, big_file: Path
) -> None:
    """A prefix or status search far into the registry reads only its own rows (a page at
    dev-05... once read every id before it: the range started at the page start)."""
    first = vm_steps(big_file, DeviceQuery(status="enabled"))
    for query, after in (
        (DeviceQuery(prefix="dev-0500"), ""),
        (DeviceQuery(prefix="dev-0500"), "dev-050010"),
        (DeviceQuery(status="enabled", prefix="dev-09"), ""),
        (DeviceQuery(status="disabled"), "dev-080000"),
    ):
        assert vm_steps(big_file, query, after) < 3 * first + 10, (query, after)
    # What a scan of 10,000 rows costs, for scale: far more.
    assert vm_steps(big_file, DeviceQuery(contains="no-such-id"), rows=10_001) > 50 * first


async def test_pages_and_searches_over_100k_devices(store: SqliteStore) -> None:
    first = await store.list_devices(limit=50)
    assert [d.device_id for d in first.items][:2] == ["dev-000000", "dev-000001"]
    assert first.continuation is not None
    deep = await store.list_devices(limit=50, continuation=first.continuation)
    assert deep.items[0].device_id == "dev-000050"

    prefix = await store.list_devices(limit=50, query=DeviceQuery(prefix="dev-09999"))
    assert [d.device_id for d in prefix.items] == [f"dev-{n:06d}" for n in range(99990, 100000)]
    assert prefix.continuation is None

    disabled = await store.list_devices(limit=60, query=DeviceQuery(status="disabled"))
    assert [d.device_id for d in disabled.items][:2] == ["dev-000999", "dev-001999"]
    assert len(disabled.items) == 60
    rest = await store.list_devices(
        limit=60, continuation=disabled.continuation, query=DeviceQuery(status="disabled")
    )
    assert (len(rest.items), rest.continuation) == (40, None)

    connected = await store.list_devices(query=DeviceQuery(connection_state="connected"))
    assert [d.device_id for d in connected.items] == list(CONNECTED)

    # A substring: each page examines 10,000 ids at most, so finding the one match takes
    # ten pages, the others empty, each ending where the next one starts.
    query = DeviceQuery(contains="077777")
    found: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        page = await store.list_devices(
            limit=50, continuation=token, query=query, scan_limit=10_000
        )
        pages += 1
        found += [d.device_id for d in page.items]
        if page.continuation is None:
            break
        token = page.continuation
    assert (found, pages) == (["dev-077777"], 10)
