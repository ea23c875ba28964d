"""CA certificates (X.509 device trust) in the Redis store.

``hr:P:cert:{name}`` holds the certificate's JSON document and etag; ``hr:P:certs``
is the listing index.
"""

from __future__ import annotations

import json

from hybridrelay.errors import EntityNotFoundError, ValidationError
from hybridrelay.relay.store.certificates import CaCertificate, stored_certificate
from hybridrelay.relay.store.checks import check_certificate_update, updated_certificate
from hybridrelay.relay.store.models import ChangeEvent, ChangeOp
from hybridrelay.relay.store.redis.engine import ChangedError, RedisEngine, decode_failure

__all__ = ["RedisCertificates"]


class RedisCertificates(RedisEngine):
    """CA certificates, read from Redis on every call (they are read rarely)."""

    def _cert_hash(self, name: str) -> str:
        return f"{self._base}cert:{{{name}}}"

    def _decode_certificate(self, key: str, fields: dict[str, str]) -> CaCertificate | None:
        doc = fields.get("doc")
        if doc is None:
            return None
        try:
            return CaCertificate.from_json(json.loads(doc))
        except (ValueError, ValidationError) as exc:
            raise decode_failure(key, exc) from exc

    async def get_certificate(self, name: str) -> CaCertificate | None:
        key = self._cert_hash(name)
        return self._decode_certificate(key, await self._redis.hgetall(key))

    async def list_certificates(self) -> tuple[CaCertificate, ...]:
        names = await self._redis.zrange_after(f"{self._base}certs", "", 100_000)
        keys = [self._cert_hash(n) for n in names]
        return tuple(
            cert
            for key, fields in zip(keys, await self._redis.hgetall_many(keys), strict=True)
            if (cert := self._decode_certificate(key, fields)) is not None
        )

    async def put_certificate(self, cert: CaCertificate) -> tuple[CaCertificate, bool]:
        async def attempt() -> tuple[CaCertificate, bool]:
            existing = await self.get_certificate(cert.name)
            record = stored_certificate(
                cert, existing, etag=self._minter.etag(), now=self._minter.now()
            )
            if existing is None:
                await self._redis.zadd(f"{self._base}certs", cert.name)
            op: ChangeOp = "created" if existing is None else "updated"
            status = await self._write_doc(
                self._cert_hash(cert.name),
                mode="create" if existing is None else "update",
                expected=existing.etag if existing is not None else "",
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(kind="certificate", op=op, name=cert.name),
            )
            if status != "ok":
                raise ChangedError
            return record, existing is None

        return await self._retrying(attempt)

    async def delete_certificate(self, name: str) -> CaCertificate:
        async def attempt() -> CaCertificate:
            current = await self.get_certificate(name)
            if current is None:
                raise EntityNotFoundError(f"certificate {name!r} does not exist")
            event = ChangeEvent(kind="certificate", op="deleted", name=name)
            status = await self._delete_doc(
                [self._cert_hash(name)], [current.etag, self._channel, self._message(event)]
            )
            if status != "ok":
                raise ChangedError
            await self._redis.zrem(f"{self._base}certs", name)
            self._emit(event)
            return current

        return await self._retrying(attempt)

    async def set_verification_code(self, name: str, code: str) -> CaCertificate:
        return await self._update_certificate(name, None, code)

    async def mark_verified(self, name: str, *, thumbprint: str) -> CaCertificate:
        return await self._update_certificate(name, thumbprint, None)

    async def _update_certificate(
        self, name: str, thumbprint: str | None, verification_code: str | None
    ) -> CaCertificate:
        async def attempt() -> CaCertificate:
            current = check_certificate_update(await self.get_certificate(name), name, thumbprint)
            record, detail = updated_certificate(
                current, self._minter, verification_code=verification_code
            )
            status = await self._write_doc(
                self._cert_hash(name),
                mode="update",
                expected=current.etag,
                doc=record.to_json(),
                etag=record.etag,
                event=ChangeEvent(kind="certificate", op="updated", name=name, detail=detail),
            )
            if status != "ok":
                raise ChangedError
            return record

        return await self._retrying(attempt)
