"""Certificate renewal without a restart: reload the TLS files on SIGHUP or when they change.

The listening socket keeps the TLS context it was created with; that context's SNI
callback (OpenSSL calls it for every ClientHello, with or without a server name)
hands each new handshake the *current* context. A reload builds a whole new context
from ``tls_cert``, ``tls_key`` and ``client_ca_file`` (the same :func:`tls_context`
the start uses) and makes it current only when it loaded: a missing, half-written or
mismatched file logs one ``tls_reload_failed`` line and the old certificate stays.
Connections already open keep their session; nothing is closed.

A new context rather than ``load_cert_chain`` on the live one, because OpenSSL keeps
one certificate per key type: after an RSA to ECDSA renewal the live context would
still offer the old (soon expired) RSA certificate to clients that prefer it, and
CA certificates cannot be removed from a live context.

Changes are found by polling ``os.stat`` (inode, mtime, size; symlinks followed, so
certbot's ``live/`` links and Kubernetes' secret volume swaps count) every
``tls_reload_interval`` seconds. A change is loaded once the files have looked the
same at two polls in a row: a renewal that writes the certificate and then the key
is not caught between the two. A set of files that failed to load is not retried
until it changes again (one error line per bad renewal, not one per poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hybridrelay.errors import ConfigError
from hybridrelay.logs import RELAY
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.metrics import Counter

__all__ = ["CertificateReloader", "FileSignature", "served_certificate"]

log = logging.getLogger(RELAY)

# (inode, mtime in ns, size) per file, None for a file that cannot be stat'ed.
FileSignature = tuple[tuple[int, int, int] | None, ...]

_UNREADABLE: Final = "unreadable"


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """What a log line (and an operator) needs to tell one certificate from another."""

    serial: str
    sha256: str
    not_after: str


def served_certificate(cert_file: str) -> ServedCertificate | None:
    """The leaf of ``cert_file`` (its first certificate), or None when it cannot be read."""
    try:
        leaf = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None
    der = leaf.public_bytes(serialization.Encoding.DER)
    return ServedCertificate(
        serial=format(leaf.serial_number, "x"),
        sha256=hashlib.sha256(der).hexdigest(),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )


def _signature(paths: tuple[str, ...]) -> FileSignature:
    signature: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError:
            signature.append(None)
        else:
            signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(signature)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__


class CertificateReloader:
    """Owns which TLS context new handshakes get; ``reload()`` and ``poll()`` change it.

    Args:
        settings: the relay settings (``tls_cert``, ``tls_key``, ``client_cert``,
            ``client_ca_file``); their paths are re-read on every reload.
        live: the context the listening socket was created with (its SNI callback is set).
        build: makes a context from ``settings`` (serve.tls_context); raises on bad files.
        on_context: called with each new context before it is made current (the
            runtime CA trust of client-certificate relays follows it).
        counter: counts reloads by result (``ok``, ``failed``).
    """

    def __init__(
        self,
        settings: RelaySettings,
        live: ssl.SSLContext,
        *,
        build: Callable[[RelaySettings], ssl.SSLContext],
        on_context: Callable[[ssl.SSLContext], None] | None = None,
        counter: Counter | None = None,
    ) -> None:
        self._settings = settings
        self._build = build
        self._on_context = on_context
        self._counter = counter
        self._paths = tuple(
            p for p in (settings.tls_cert, settings.tls_key, settings.client_ca_file) if p
        )
        self.current = live
        self._seen = _signature(self._paths)  # the files the current context was made from
        self._candidate: FileSignature | None = None  # a change seen once, not yet settled
        self._failed: FileSignature | None = None  # files that did not load
        live.sni_callback = self._select

    def _select(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        # Runs inside OpenSSL for every ClientHello: one comparison, no I/O.
        current = self.current
        if current is not context:
            ssl_object.context = current

    def reload(self, cause: str) -> bool:
        """Build a context from the files now; make it current when it loaded."""
        signature = _signature(self._paths)
        self._candidate = None
        try:
            context = self._build(self._settings)
            if self._on_context is not None:
                self._on_context(context)
        except (ConfigError, OSError, ssl.SSLError, ValueError) as exc:
            self._failed = signature
            self._count("failed")
            # One line, no traceback: a bad renewal is the operator's to fix, not our bug.
            log.error(  # noqa: TRY400
                "tls_reload_failed",
                extra={
                    "cause": cause,
                    "error": _reason(exc),
                    "files": ",".join(self._paths),
                    "kept": "previous certificate",
                },
            )
            return False
        self.current = context
        self._seen = signature
        self._failed = None
        self._count("ok")
        served = served_certificate(self._settings.tls_cert or "")
        log.info(
            "tls_reloaded",
            extra={
                "cause": cause,
                "serial": served.serial if served else _UNREADABLE,
                "sha256": served.sha256 if served else _UNREADABLE,
                "not_after": served.not_after if served else _UNREADABLE,
            },
        )
        return True

    def poll(self) -> bool:
        """Reload when the files changed and then held still for one poll; True if reloaded."""
        signature = _signature(self._paths)
        if signature in (self._seen, self._failed):
            self._candidate = None
            return False
        if signature != self._candidate:
            self._candidate = signature  # still being written, perhaps: look again next poll
            return False
        return self.reload("file_change")

    async def run(self, interval: float, signalled: asyncio.Event) -> None:
        """Reload on ``signalled`` (SIGHUP) and poll every ``interval`` s (0: never poll)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval if interval > 0 else None):
                    await signalled.wait()
            try:
                if signalled.is_set():
                    signalled.clear()
                    self.reload("signal")
                else:
                    self.poll()
            except Exception:  # our bug: logged; the relay keeps serving the old context
                log.exception("tls_reload_crashed")

    def _count(self, result: str) -> None:
        if self._counter is not None:
            self._counter.labels(result).inc()
