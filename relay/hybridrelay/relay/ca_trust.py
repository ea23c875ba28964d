"""Runtime trust of registered CA certificates (issue 5, X.509 devices).

The TLS server context trusts ``client_ca_file`` from the config. CA certificates
uploaded through ``/$mgmt/v1/certificates`` and verified by proof of possession are
added to the *live* context with ``SSLContext.load_verify_locations(cadata=...)``:
when they are verified (the store's ``certificate`` change events, from every node)
and, at start, for those verified already.

Python's ``ssl`` cannot remove a CA from a live context, so a deleted (or replaced,
hence unverified) CA keeps passing the handshake. :func:`revoked` closes that gap for
device authentication: a client certificate directly issued by a CA this process
loaded at run time (checked with the CA's public key, not only the issuer name) is
accepted only while a verified store record has that CA's thumbprint, or when a
``client_ca_file`` certificate issued it too.

Limits: only CAs that *directly* issue device certificates are checked. A device
chain through an intermediate the client sends, below a deleted runtime CA, still
passes until the relay restarts; register the issuing CA itself. A CA's deletion takes
effect on the next connect (it does not cut live connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from hybridrelay.logs import RELAY
from hybridrelay.relay.store.base import Store
from hybridrelay.relay.store.certificates import CaCertificate, thumbprint
from hybridrelay.relay.store.models import ChangeEvent

__all__ = ["CaTrust", "attach", "cleanup_context", "issued_by", "revoked", "trust_of"]

log = logging.getLogger(RELAY)

_TRUSTS: Final[weakref.WeakKeyDictionary[ssl.SSLContext, CaTrust]] = weakref.WeakKeyDictionary()


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` directly issued ``leaf`` (issuer name and signature)."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CaTrust:
    """The CA certificates a TLS server context trusts beyond ``client_ca_file``."""

    def __init__(self, context: ssl.SSLContext, config_cas: list[x509.Certificate]) -> None:
        self.context = context
        self.config_cas = config_cas
        self.loaded: dict[str, x509.Certificate] = {}  # thumbprint -> CA loaded at run time

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

    async def refresh(self, store: Store) -> None:
        """Trust every verified CA certificate in the store."""
        for record in await store.list_certificates():
            self.trust(record)


def attach(context: ssl.SSLContext, client_ca_file: str | None) -> CaTrust:
    """Make ``context`` (a client-certificate server context) follow registered CAs."""
    config_cas: list[x509.Certificate] = []
    if client_ca_file:
        with contextlib.suppress(OSError, ValueError):
            config_cas = x509.load_pem_x509_certificates(Path(client_ca_file).read_bytes())
    trust = CaTrust(context, config_cas)
    _TRUSTS[context] = trust
    return trust


def trust_of(context: ssl.SSLContext | None) -> CaTrust | None:
    return _TRUSTS.get(context) if context is not None else None


async def revoked(context: ssl.SSLContext | None, store: Store, der: bytes) -> bool:
    """Whether a handshake-verified client certificate owes its trust to a CA that is gone.

    True when a CA loaded at run time directly issued it, no ``client_ca_file`` CA did,
    and no verified store record carries that runtime CA's thumbprint any more.
    """
    trust = trust_of(context)
    if trust is None or not trust.loaded:
        return False
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        return True
    issuers = [t for t, ca in trust.loaded.items() if issued_by(leaf, ca)]
    if not issuers or any(issued_by(leaf, ca) for ca in trust.config_cas):
        return False
    current = {c.thumbprint for c in await store.list_certificates() if c.is_verified}
    return not current.intersection(issuers)


async def _watch(trust: CaTrust, store: Store) -> AsyncIterator[None]:
    """Trust verified CAs now and whenever one is verified (on any node)."""
    tasks: set[asyncio.Task[None]] = set()

    async def refresh() -> None:
        try:
            await trust.refresh(store)
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


def cleanup_context(trust: CaTrust) -> Callable[[web.Application], AsyncIterator[None]]:
    """``app.cleanup_ctx`` entry for ``trust`` (the store is the app's)."""
    from hybridrelay.relay.state import STATE  # late: state imports device_auth

    def context(app: web.Application) -> AsyncIterator[None]:
        return _watch(trust, app[STATE].store)

    return context
