"""CA certificate records: the IoT Hub "certificates" resource (issue 5, X.509 devices).

A CA certificate is uploaded unverified; the owner proves possession of its private key
by signing a leaf certificate whose subject CN is a server-issued verification code,
after which it is verified and the relay trusts devices it signed
(``relay/ca_trust.py``). The stores keep these records next to the identity registry
(``put_certificate``, ``get_certificate``, ``list_certificates``,
``delete_certificate``, ``set_verification_code``, ``mark_verified``); every write
publishes a change event of kind ``certificate``.

The JSON document (``to_json``) uses camelCase like the rest of the API: name,
certificate (PEM), thumbprint (SHA-256 of the DER, upper-case hex), subject (RFC 4514),
expiry, isVerified, verificationCode, etag, created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hybridrelay.errors import ValidationError
from hybridrelay.relay.store.schema import (
    BOOLEAN,
    STRING,
    TIME,
    Field,
    Schema,
    required_time,
)

__all__ = [
    "CA_CERTIFICATE",
    "CaCertificate",
    "parse_ca_certificate",
    "thumbprint",
    "validate_certificate_name",
]

_NAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_PEM: Final = 16 * 1024


def validate_certificate_name(name: str) -> str:
    """Return ``name``; raises ValidationError unless it is 1-128 of ``A-Za-z0-9._-``."""
    if not _NAME.match(name):
        raise ValidationError("name", "1 to 128 characters of letters, digits, '.', '_', '-'")
    return name


def thumbprint(cert: x509.Certificate) -> str:
    """Upper-case hex SHA-256 of the certificate's DER encoding."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def _load_pem(pem: str, field: str) -> x509.Certificate:
    if len(pem) > MAX_PEM:
        raise ValidationError(field, f"at most {MAX_PEM} characters")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValidationError(field, "not a PEM certificate") from exc
    if len(certs) != 1:
        raise ValidationError(field, "must hold exactly one certificate")
    return certs[0]


def parse_ca_certificate(name: str, pem: str) -> CaCertificate:
    """An unverified record for a CA certificate PEM.

    Raises:
        ValidationError: Not exactly one PEM certificate, or not a CA (BasicConstraints
            with ``ca=True`` is required).
    """
    cert = _load_pem(pem, "certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValidationError("certificate", "must be a CA certificate (BasicConstraints ca=true)")
    return CaCertificate(
        name=validate_certificate_name(name),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        thumbprint=thumbprint(cert),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def load_leaf(pem: str) -> x509.Certificate:
    """The proof-of-possession certificate of a ``verify`` call (ValidationError if bad)."""
    return _load_pem(pem, "certificate")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class CaCertificate:
    """A registered CA certificate; ``etag`` and ``created`` are set by the store."""

    name: str
    pem: str
    thumbprint: str
    subject: str
    not_after: float
    is_verified: bool = False
    verification_code: str | None = None
    etag: str = ""
    created: float | None = None

    def __post_init__(self) -> None:
        validate_certificate_name(self.name)

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.pem.encode("ascii"))

    def to_json(self) -> dict[str, object]:
        return CA_CERTIFICATE.encode(self)

    @classmethod
    def from_json(cls, value: object) -> CaCertificate:
        """Decode a stored document (the stores' own format); raises ValidationError."""
        return cls(**CA_CERTIFICATE.decode(value))


def _check_name(where: str, name: str) -> None:
    validate_certificate_name(name)


CA_CERTIFICATE: Final = Schema(
    "CaCertificate",
    where="certificate",
    fields=(
        Field("name", "name", STRING, always=True, check=_check_name),
        Field("certificate", "pem", STRING, always=True, description="PEM."),
        Field(
            "thumbprint",
            "thumbprint",
            STRING,
            always=True,
            description="SHA-256, upper-case hex.",
        ),
        Field("subject", "subject", STRING, default="", null_is_default=True),
        Field("expiry", "not_after", required_time()),
        Field("isVerified", "is_verified", BOOLEAN, default=False, always=True),
        Field(
            "verificationCode",
            "verification_code",
            STRING,
            nullable=True,
            default=None,
        ),
        Field("etag", "etag", STRING, default="", null_is_default=True, always=True),
        Field("created", "created", TIME, default=None),
    ),
)


def stored_certificate(
    cert: CaCertificate, existing: CaCertificate | None, *, etag: str, now: float
) -> CaCertificate:
    """What a store writes for ``put_certificate``.

    Re-uploading the same certificate (same thumbprint) keeps its verification; another
    certificate under the name starts unverified.
    """
    same = existing is not None and existing.thumbprint == cert.thumbprint
    return CaCertificate(
        name=cert.name,
        pem=cert.pem,
        thumbprint=cert.thumbprint,
        subject=cert.subject,
        not_after=cert.not_after,
        is_verified=existing.is_verified if same and existing is not None else False,
        verification_code=existing.verification_code if same and existing is not None else None,
        etag=etag,
        created=existing.created if existing is not None else now,
    )
