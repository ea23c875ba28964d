"""Device credentials for tests: X.509 client certificates and IoT Hub-style SAS tokens.

Companion of ``tls.py`` (which makes the relay's server certificate): a device CA,
CA-signed, self-signed and expired device certificates. Every device certificate
carries CN = deviceId, as the relay identifies devices by it, and the clientAuth
extended key usage. :func:`device_sas_token` signs a token the way the IoT Hub device
SDKs do.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hybridrelay.relay.store.models import Authentication, Device, Grants, SymmetricKey


@dataclass(frozen=True)
class DeviceCa:
    """A CA that signs device certificates."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path


@dataclass(frozen=True)
class DeviceCert:
    """A device's certificate and key files, and the certificate's thumbprints."""

    device_id: str
    cert: Path
    key: Path
    sha1: str
    sha256: str

    def client_context(self, server_ca: Path) -> ssl.SSLContext:
        """A client TLS context trusting the relay's CA and presenting this certificate."""
        ctx = ssl.create_default_context(cafile=str(server_ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_device_ca(directory: Path, name: str = "device CA") -> DeviceCa:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"hybridrelay test {name}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = directory / f"{name.replace(' ', '-')}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return DeviceCa(name=name, cert=cert, key=key, pem=pem)


def make_device_cert(
    directory: Path,
    device_id: str,
    *,
    ca: DeviceCa | None = None,
    expired: bool = False,
    file_stem: str | None = None,
    ca_capable: bool = False,
) -> DeviceCert:
    """A device certificate with CN = ``device_id``: signed by ``ca``, else self-signed.

    ``expired`` makes one whose validity ended an hour ago. ``ca_capable`` gives it
    CA:TRUE and keyCertSign, as ``openssl req -x509`` does by default: a self-signed
    one can then sign other certificates (see :func:`as_ca`).
    """
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(device_id)
    if expired:
        not_before, not_after = now - dt.timedelta(days=2), now - dt.timedelta(hours=1)
    else:
        not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca_capable, path_length=None), critical=True)
        .add_extension(_key_usage(ca=ca_capable), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    cert = builder.sign(ca.key if ca is not None else key, hashes.SHA256())
    stem = file_stem or "".join(c if c.isalnum() else "_" for c in device_id)
    cert_path = directory / f"{stem}.crt.pem"
    key_path = directory / f"{stem}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return DeviceCert(
        device_id=device_id,
        cert=cert_path,
        key=key_path,
        sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
        sha256=hashlib.sha256(der).hexdigest().upper(),
    )


def as_ca(device: DeviceCert) -> DeviceCa:
    """A device certificate and its key as a signer (what its holder can do with them)."""
    key = serialization.load_pem_private_key(device.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(device.cert.read_bytes())
    return DeviceCa(name=device.device_id, cert=cert, key=key, pem=device.cert)


def write_bundle(path: Path, *pems: Path) -> Path:
    """Concatenate PEM files into one CA bundle (``client_ca_file``)."""
    path.write_bytes(b"".join(p.read_bytes() for p in pems))
    return path


def device_sas_token(
    host: str,
    device_id: str,
    key: str,
    *,
    ttl: int = 3600,
    decode_key: bool = True,
    scheme: str = "",
    skn: str | None = None,
    expiry: int | None = None,
) -> str:
    """A device SAS token: ``sr`` is ``{scheme}{host}/devices/{deviceId}``, URL-encoded.

    ``decode_key`` signs with the base64-decoded key (IoT Hub SDKs); False signs with
    the key text (as relay rule tokens are). ``skn`` adds that field (empty allowed).
    """
    sr = quote(f"{scheme}{host}/devices/{device_id}", safe="")
    se = str(expiry if expiry is not None else int(time.time()) + ttl)
    secret = base64.b64decode(key) if decode_key else key.encode()
    sig = base64.b64encode(hmac.new(secret, f"{sr}\n{se}".encode(), hashlib.sha256).digest())
    token = f"SharedAccessSignature sr={sr}&sig={quote(sig.decode(), safe='')}&se={se}"
    if skn is not None:
        token += f"&skn={skn}"
    return token


# The symmetric key of the SAS devices the tests register (base64, as IoT Hub shows keys).
SAS_DEVICE_KEY = base64.b64encode(b"device-primary-key-0123456789abc").decode()


def sas_device(
    device_id: str, *, listen: tuple[str, ...] = (), send: tuple[str, ...] = ()
) -> Device:
    """A SAS device with :data:`SAS_DEVICE_KEY` as both keys, granted ``listen``/``send``."""
    keys = SymmetricKey(primary_key=SAS_DEVICE_KEY, secondary_key=SAS_DEVICE_KEY)
    return Device(
        device_id=device_id,
        authentication=Authentication(type="sas", symmetric_key=keys),
        grants=Grants(listen=listen, send=send),
    )
