"""Runtime trust of registered CA certificates (issue 5, X.509 devices).

The TLS server context trusts ``client_ca_file`` from the config. CA certificates
uploaded through ``/$mgmt/v1/certificates`` and verified by proof of possession are
added to the *live* context with ``SSLContext.load_verify_locations(cadata=...)``:
when they are verified (the store's ``certificate`` change events, from every node)
and, at start, for those verified already.

The handshake alone proves too little for a CA-authenticated device. Python's ``ssl``
cannot remove a CA from a live context, so a deleted (or replaced, hence unverified) CA
keeps passing it; and ``client_ca_file`` also holds thumbprint devices' self-signed
certificates, each a trust anchor under partial-chain verification, so one made with
CA:TRUE (``openssl req -x509``'s default) verifies any leaf its owner signs, for any
CN. :meth:`CaTrust.anchored` therefore looks at the chain the handshake verified (leaf first)
and accepts it for a CA device only when it ends at a CA this relay means as one:

- a CA loaded at run time whose verified store record still carries its thumbprint, or
- a ``client_ca_file`` certificate that is a CA (basicConstraints CA:TRUE, keyCertSign
  when it has a key usage) and no device's certificate (its CN names no registered
  device; a thumbprint device's certificate must carry its deviceId as CN to be used).

A leaf that is its own anchor (a listed self-signed certificate) never counts. A CA's
deletion takes effect on the next connect (it does not cut live connections).
Limitation: a device certificate left in ``client_ca_file`` after its device was
deleted is no longer recognised as one; remove it from the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from hybridrelay.logs import RELAY
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.certificates import CaCertificate, thumbprint
from hybridrelay.relay.store.models import ChangeEvent

__all__ = [
    "CA_TRUST",
    "CaTrust",
    "attach",
    "issued_by",
    "verified_chain",
]

log = logging.getLogger(RELAY)


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` directly issued ``leaf`` (issuer name and signature)."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CaTrust:
    """The CA certificates a TLS server context trusts beyond ``client_ca_file`` (a service).

    One per relay with client certificates (``serve.py`` builds it, ``app[CA_TRUST]``).
    It follows the server context across TLS reloads and remembers every context it
    served (weakly): a connection made on an old context is still judged by this trust.
    """

    def __init__(self, context: ssl.SSLContext, config_cas: list[x509.Certificate]) -> None:
        self.context = context
        self.config_cas = config_cas
        self.loaded: dict[str, x509.Certificate] = {}  # thumbprint -> CA loaded at run time
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet([context])

    def follows(self, context: ssl.SSLContext | None) -> bool:
        """Whether ``context`` is (or was) this trust's server context."""
        return context is not None and context in self._contexts

    def trust(self, record: CaCertificate) -> bool:
        """Add a verified CA to the live context (once); returns whether it was added."""
        if not record.is_verified or record.thumbprint in self.loaded:
            return False
        cert = record.certificate()
        if thumbprint(cert) != record.thumbprint:
            return False
        self.context.load_verify_locations(cadata=record.pem)
        self.loaded[record.thumbprint] = cert
        log.info("ca_trusted", extra={"certificate": record.name, "thumbprint": record.thumbprint})
        return True

    def rebind(self, context: ssl.SSLContext, client_ca_file: str | None) -> None:
        """Follow a reloaded TLS context (tls_reload.py): the CAs loaded so far join it.

        Connections made on the old context keep it; ``anchored`` finds this same
        trust for them (so a CA taken out of ``client_ca_file`` stops anchoring at once).
        """
        for cert in self.loaded.values():
            context.load_verify_locations(
                cadata=cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            )
        self.config_cas = _config_cas(client_ca_file)
        self.context = context
        self._contexts.add(context)

    async def refresh(self, store: Store) -> None:
        """Trust every verified CA certificate in the store."""
        for record in await store.list_certificates():
            self.trust(record)

    @contextlib.asynccontextmanager
    async def watch(self, store: Store) -> AsyncIterator[None]:
        """Trust verified CAs now and whenever one is verified (on any node).

        ``app.py`` enters this after the store opens and leaves it before it closes.
        """
        tasks: set[asyncio.Task[None]] = set()

        async def refresh() -> None:
            try:
                await self.refresh(store)
            except Exception:
                log.exception("ca_trust_refresh_failed")

        def on_change(event: ChangeEvent) -> None:
            if event.kind in ("certificate", "reset") and event.op != "deleted":
                task = asyncio.get_running_loop().create_task(refresh())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        await refresh()
        unsubscribe = store.subscribe(on_change)
        try:
            yield
        finally:
            unsubscribe()
            for task in list(tasks):
                task.cancel()

    async def anchored(
        self, context: ssl.SSLContext | None, store: Store, chain: Sequence[bytes]
    ) -> bool:
        """Whether a handshake-verified chain (leaf first) ends at a CA trusted for CA devices.

        See the module docstring: a verified runtime CA, or a ``client_ca_file`` CA that is
        no device's certificate. A one-certificate chain (the leaf is its own anchor) and a
        context without client-certificate trust are never anchored.
        """
        if not self.follows(context) or len(chain) < 2:
            return False
        try:
            anchor = x509.load_der_x509_certificate(chain[-1])
        except ValueError:
            return False
        print_ = thumbprint(anchor)
        if print_ in self.loaded:
            current = {c.thumbprint for c in await store.list_certificates() if c.is_verified}
            if print_ in current:
                return True
        if any(anchor == ca for ca in self.config_cas):
            return _is_ca(anchor) and not await _names_a_device(store, anchor)
        return False


def attach(context: ssl.SSLContext, client_ca_file: str | None) -> CaTrust:
    """Make ``context`` (a client-certificate server context) follow registered CAs."""
    return CaTrust(context, _config_cas(client_ca_file))


def _config_cas(client_ca_file: str | None) -> list[x509.Certificate]:
    if client_ca_file:
        with contextlib.suppress(OSError, ValueError):
            return x509.load_pem_x509_certificates(Path(client_ca_file).read_bytes())
    return []


def verified_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The chain the handshake verified, leaf first and trust anchor last, as DER.

    Python 3.13 has ``get_verified_chain()``; before it the same call exists on the
    object underneath (``_sslobj``, since 3.10). Empty when neither is there: then no
    chain is ``anchored`` and CA devices are refused (fail closed).
    """
    public = getattr(ssl_object, "get_verified_chain", None)
    if callable(public):
        return tuple(c if isinstance(c, bytes) else _der(c) for c in public() or ())
    inner = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if callable(inner):
        return tuple(_der(c) for c in inner() or ())
    return ()


def _der(certificate: object) -> bytes:
    # _ssl.Certificate.public_bytes() writes PEM by default.
    return ssl.PEM_cert_to_DER_cert(certificate.public_bytes())  # type: ignore[attr-defined] # _ssl.Certificate has no stub before 3.13


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


async def _names_a_device(store: Store, cert: x509.Certificate) -> bool:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    for attribute in names:
        value = attribute.value
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if await store.get_device(text) is not None:
            return True
    return False


CA_TRUST: Final = web.AppKey("hybridrelay_ca_trust", CaTrust)
