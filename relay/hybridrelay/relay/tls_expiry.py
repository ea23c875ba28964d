"""``hybridrelay_tls_certificate_expiry_seconds``: when the relay's TLS files stop working.

One sample per ``[relay]`` key naming a certificate file (``tls_cert``, ``client_ca_file``):
the earliest notAfter among the certificates in it (a full chain's intermediate, or one CA
of a bundle, can expire before the leaf), as unix time. Set when the files are loaded at
start; whoever loads them again (a certificate reload) calls :func:`observe_certificates`
again after the new context is in place, so the metric follows what is served.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography import x509

from hybridrelay.logs import RELAY
from hybridrelay.relay.config import RelaySettings
from hybridrelay.relay.metrics import RelayMetrics

__all__ = ["earliest_not_after", "observe_certificates"]

log = logging.getLogger(RELAY)


def earliest_not_after(path: str | Path) -> float:
    """The earliest notAfter (unix time) of the PEM certificates in ``path``.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no PEM certificate.
    """
    certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
    return min(cert.not_valid_after_utc.timestamp() for cert in certificates)


def observe_certificates(metrics: RelayMetrics, settings: RelaySettings) -> None:
    """Set the expiry gauge for each certificate file ``settings`` names (drop it for none).

    A file that cannot be read or parsed (it was loaded a moment ago, so it changed since)
    loses its sample and logs a warning, rather than keep showing a stale date.
    """
    gauge = metrics.tls_certificate_expiry
    # The files the relay loads: the CA bundle only when it asks for client certificates.
    client_ca = settings.client_ca_file if settings.client_cert != "none" else None
    for key, path in (("tls_cert", settings.tls_cert), ("client_ca_file", client_ca)):
        if not path:
            gauge.remove(key)
            continue
        try:
            not_after = earliest_not_after(path)
        except (OSError, ValueError) as exc:
            gauge.remove(key)
            log.warning("certificate_expiry_unknown", extra={"key": key, "error": str(exc)})
        else:
            gauge.labels(key).set(not_after)
