"""What only the SQLite store promises: a WAL file, a versioned schema, one worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from tests.contract.stores import Clock, make_config

from hybridrelay.errors import ConfigError, UnavailableError
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.store.backup import backup_store
from hybridrelay.relay.store.models import Device, HybridConnection
from hybridrelay.relay.store.sqlite import DEFAULT_FILE, SqliteStore


async def test_file_is_wal_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = await SqliteStore.open(make_config(), path=path)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(4,)]
    db.close()


async def test_default_file_lives_in_the_data_dir(tmp_path: Path) -> None:
    config = make_config()
    config = replace(config, relay=RelaySettings(data_dir=str(tmp_path / "data")))
    store = await SqliteStore.open(config)
    await store.close()
    assert (tmp_path / "data" / DEFAULT_FILE).is_file()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    await (await SqliteStore.open(make_config(), path=path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(ConfigError, match="newer than this relay"):
        await SqliteStore.open(make_config(), path=path)


async def test_a_migration_keeps_the_store_as_it_was_for_a_rollback(tmp_path: Path) -> None:
    path = tmp_path / DEFAULT_FILE
    store = await SqliteStore.open(make_config(), path=path)
    await store.put_hybrid_connection(HybridConnection(name="kept"))
    await store.close()
    # The file as the previous release left it: schema version 2 (no CA certificates yet).
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE ca_certificates")
        db.execute("DROP INDEX devices_by_status")  # and no device search indexes (v4)
        db.execute("DROP INDEX devices_by_connection")
        db.execute("ALTER TABLE devices DROP COLUMN check_in_interval")
        db.execute("UPDATE schema_version SET version = 2")

    store = await SqliteStore.open(make_config(), path=path)
    assert await store.get("kept") is not None
    await store.close()
    kept = tmp_path / f"{DEFAULT_FILE}.v2.bak"
    assert kept.stat().st_mode & 0o777 == 0o600
    with contextlib.closing(sqlite3.connect(kept)) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 2
        names = [row[0] for row in db.execute("SELECT name FROM hybrid_connections")]
        assert "kept" in names
    # An up-to-date store is not copied again, nor is a new one.
    kept.unlink()
    await (await SqliteStore.open(make_config(), path=path)).close()
    await (await SqliteStore.open(make_config(), path=tmp_path / "new.sqlite3")).close()
    assert not kept.exists()
    assert not (tmp_path / "new.sqlite3.v0.bak").exists()


async def test_a_backup_taken_during_writes_is_one_consistent_commit(tmp_path: Path) -> None:
    """``relay backup`` against a store that is being written: the copy passes its integrity
    check and holds exactly the hybrid connections committed before some point."""
    path = tmp_path / DEFAULT_FILE
    store = await SqliteStore.open(make_config(), path=path)
    written = 0
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal written
        while not done.is_set():
            await store.put_hybrid_connection(HybridConnection(name=f"w/{written:05d}"))
            written += 1

    task = asyncio.create_task(writer())
    try:
        async with asyncio.timeout(10):
            while written < 50:
                await asyncio.sleep(0.01)  # polling a counter the writer raises
        summaries = [
            await asyncio.to_thread(backup_store, path, tmp_path / f"b{i}.sqlite3")
            for i in range(3)
        ]
    finally:
        done.set()
        await task
        await store.close()
    for summary in summaries:
        with contextlib.closing(sqlite3.connect(summary.path)) as db:
            names = sorted(r[0] for r in db.execute("SELECT name FROM hybrid_connections"))
        copied = [n for n in names if n.startswith("w/")]
        assert copied == [f"w/{i:05d}" for i in range(len(copied))]  # a prefix, no gaps
        assert dict(summary.counts)["hybrid connections"] == len(names)
    assert [dict(s.counts)["hybrid connections"] for s in summaries] == sorted(
        dict(s.counts)["hybrid connections"] for s in summaries
    )


async def test_memory_store_names_are_imported_once(tmp_path: Path) -> None:
    (tmp_path / "hybrid_connections.json").write_text(
        json.dumps(["legacy/one", "not a valid name!", 7]), "utf-8"
    )
    store = await SqliteStore.open(make_config(), path=tmp_path / DEFAULT_FILE)
    legacy = await store.get("legacy/one")
    assert legacy is not None
    assert not legacy.config_owned
    await store.delete_hybrid_connection("legacy/one")
    await store.close()
    store = await SqliteStore.open(make_config(), path=tmp_path / DEFAULT_FILE)
    assert await store.get("legacy/one") is None  # not imported again
    await store.close()


async def test_in_memory_database(clock: Clock) -> None:
    store = await SqliteStore.open(make_config(), path=":memory:", now=clock)
    hc, created = await store.put_hybrid_connection(HybridConnection(name="mem"))
    assert created
    assert await store.get("mem") == hc
    await store.close()


async def test_blocking_work_runs_on_one_thread_and_hot_reads_stay_on_the_loop(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(make_config(), path=tmp_path / DEFAULT_FILE)
    threads: set[str] = set()
    original = store._conn

    def spy() -> sqlite3.Connection:
        threads.add(threading.current_thread().name)
        return original()

    store._conn = spy  # type: ignore[method-assign]  # observe which thread touches the file
    await asyncio.gather(*(store.create_device(Device(device_id=f"t{i}")) for i in range(20)))
    await store.list_devices()
    assert len(threads) == 1
    assert threading.current_thread().name not in threads
    threads.clear()
    assert await store.resolve("cfg/hc/x") is not None
    assert await store.get_device("t1") is not None  # cached by create
    assert threads == set()
    await store.close()


async def test_device_cache_is_bounded(tmp_path: Path) -> None:
    store = await SqliteStore.open(make_config(), path=tmp_path / DEFAULT_FILE, device_cache_size=3)
    created = [await store.create_device(Device(device_id=f"c{i}")) for i in range(10)]
    for device in created:
        assert await store.get_device(device.device_id) == device
    assert len(store._devices) <= 3
    await store.close()


async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = await SqliteStore.open(make_config(), path=tmp_path / DEFAULT_FILE)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(UnavailableError):
        await store.create_device(Device(device_id="late"))
