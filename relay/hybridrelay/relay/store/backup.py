"""``hybridrelay relay backup``: a consistent copy of the SQLite store while the relay runs.

SQLite's online backup API (``sqlite3.Connection.backup``) copies the database page
by page inside one read transaction. The store is in WAL mode, so that reader never
blocks the running relay's writes, and the copy is the database as of one commit:
WAL content included, no ``-wal``/``-shm`` files to carry along. The copy is written
0600 next to its destination and renamed into place once it passed
``PRAGMA integrity_check``, so a failed or interrupted backup never leaves a
half-written file under the name a restore would use.

Restoring is a file copy with the relay stopped (docs/operations.md): the backup is a
complete database, and a relay that opens it migrates it forward like any older file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hybridrelay.errors import ConfigError
from hybridrelay.relay.private_files import open_private

__all__ = ["BackupSummary", "backup_store"]

_COUNTED = (
    ("hybrid_connections", "hybrid connections"),
    ("rules", "rules"),
    ("devices", "devices"),
    ("ca_certificates", "CA certificates"),
)


@dataclass(frozen=True, slots=True)
class BackupSummary:
    path: Path
    schema_version: int
    counts: tuple[tuple[str, int], ...]  # (what, how many) for each table present
    size: int

    def describe(self) -> str:
        counted = ", ".join(f"{n} {what}" for what, n in self.counts)
        return (
            f"backup written: {self.path} ({self.size} bytes, store schema version "
            f"{self.schema_version}; {counted})"
        )


def backup_store(source: Path, target: Path) -> BackupSummary:
    """Copy the store ``source`` to ``target`` (replaced atomically when it exists).

    Raises:
        ConfigError: ``source`` is not there or not a store, or ``target`` cannot be written.
    """
    if not source.is_file():
        raise ConfigError(str(source), "", "no store here (is data_dir right? see relay.data_dir)")
    partial = target.with_name(target.name + ".partial")
    try:
        # Created 0600 before SQLite writes a byte: the copy holds every key.
        open_private(partial, "wb").close()
        # mode=rw: never create a store where there was none.
        src = sqlite3.connect(f"file:{source}?mode=rw", uri=True)
        try:
            src.execute("PRAGMA busy_timeout=5000")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # one step: the copy is one consistent snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
                summary = _summarise(dst, target)
            finally:
                dst.close()
        finally:
            src.close()
        partial.replace(target)
    except sqlite3.Error as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(str(source), "", f"backup failed: {exc}") from exc
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(str(target), "", f"cannot write the backup: {exc.strerror}") from exc
    return BackupSummary(
        path=target,
        schema_version=summary.schema_version,
        counts=summary.counts,
        size=target.stat().st_size,
    )


def _summarise(db: sqlite3.Connection, target: Path) -> BackupSummary:
    check = db.execute("PRAGMA integrity_check").fetchone()
    if check is None or check[0] != "ok":
        raise sqlite3.DatabaseError(f"the copy failed its integrity check: {check}")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" not in tables:
        raise sqlite3.DatabaseError("not a hybridrelay store (no schema_version table)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    counts = tuple(
        (what, int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))  # noqa: S608 - fixed names
        for table, what in _COUNTED
        if table in tables
    )
    return BackupSummary(
        path=target, schema_version=int(row[0]) if row else 0, counts=counts, size=0
    )
