"""CA certificates (X.509 device trust) in the SQLite store: one JSON document per name."""

from __future__ import annotations

import functools
import json
import sqlite3

from hybridrelay.errors import EntityNotFoundError
from hybridrelay.relay.store.certificates import CaCertificate, stored_certificate
from hybridrelay.relay.store.checks import (
    check_certificate_update,
    compact_json,
    updated_certificate,
)
from hybridrelay.relay.store.sqlite.engine import SqliteEngine

__all__ = ["SqliteCertificates"]


class SqliteCertificates(SqliteEngine):
    """CA certificates, read from the file on every call (they are read rarely)."""

    def _read_certificate(self, db: sqlite3.Connection, name: str) -> CaCertificate | None:
        row = db.execute("SELECT doc FROM ca_certificates WHERE name = ?", (name,)).fetchone()
        return CaCertificate.from_json(json.loads(row[0])) if row is not None else None

    def _write_certificate(self, db: sqlite3.Connection, cert: CaCertificate) -> None:
        db.execute(
            "INSERT OR REPLACE INTO ca_certificates (name, doc) VALUES (?, ?)",
            (cert.name, compact_json(cert.to_json())),
        )

    async def put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        return await self._run(functools.partial(self._db_put_certificate, cert))

    def _db_put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        with self._tx() as tx:
            existing = self._read_certificate(tx, cert.name)
            record = stored_certificate(
                cert, existing, etag=self._minter.etag(), now=self._minter.now()
            )
            self._write_certificate(tx, record)
        self._publish("certificate", "created" if existing is None else "updated", cert.name)
        return record, existing is None

    async def get_certificate(self, name: str) -> CaCertificate | None:
        return await self._run(lambda: self._read_certificate(self._conn(), name))

    async def list_certificates(self) -> tuple[CaCertificate, ...]:
        def read() -> tuple[CaCertificate, ...]:
            rows = self._conn().execute("SELECT doc FROM ca_certificates ORDER BY name")
            return tuple(CaCertificate.from_json(json.loads(row[0])) for row in rows)

        return await self._run(read)

    async def delete_certificate(self, name: str) -> CaCertificate:
        return await self._run(functools.partial(self._db_delete_certificate, name))

    def _db_delete_certificate(self, name: str) -> CaCertificate:
        with self._tx() as tx:
            current = self._read_certificate(tx, name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            tx.execute("DELETE FROM ca_certificates WHERE name = ?", (name,))
        self._publish("certificate", "deleted", name)
        return current

    async def set_verification_code(self, name: str, code: str) -> CaCertificate:
        return await self._run(functools.partial(self._db_update_certificate, name, None, code))

    async def mark_verified(self, name: str, *, thumbprint: str) -> CaCertificate:
        return await self._run(
            functools.partial(self._db_update_certificate, name, thumbprint, None)
        )

    def _db_update_certificate(
        self, name: str, thumbprint: str | None, verification_code: str | None
    ) -> CaCertificate:
        with self._tx() as tx:
            current = check_certificate_update(self._read_certificate(tx, name), name, thumbprint)
            record, detail = updated_certificate(
                current, self._minter, verification_code=verification_code
            )
            self._write_certificate(tx, record)
        self._publish("certificate", "updated", name, detail=detail)
        return record
