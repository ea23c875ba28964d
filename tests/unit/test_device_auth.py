"""Device authentication (issue 5): device SAS token shapes, ``sr`` parsing, grants, X.509 checks.

Tokens are signed the way the IoT Hub device SDKs sign them (base64-decoded key) and the
way relay rule tokens are (key text); ``now`` is injected.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import pytest
from tests.harness.device_certs import device_sas_token, make_device_ca, make_device_cert
from tests.harness.tls import make_tls_files

from hybridrelay.errors import AuthError, ConfigError, ForbiddenError, TokenExpiredError
from hybridrelay.protocol.sas import Rights, create_sas_token, parse_device_token
from hybridrelay.relay.auth import Principal, TokenCache, authorize, check_token
from hybridrelay.relay.config import load_relay_config
from hybridrelay.relay.device_auth import PeerCertificate, device_rights
from hybridrelay.relay.serve import tls_context
from hybridrelay.relay.store.base import HybridConnection, Rule
from hybridrelay.relay.store.models import (
    Authentication,
    Device,
    Grants,
    SymmetricKey,
    X509Thumbprint,
)

NOW = 1_700_000_000
LATER = NOW + 3600
HOST = "contoso.azure-devices.net"
PRIMARY = base64.b64encode(b"p" * 32).decode()
SECONDARY = base64.b64encode(b"s" * 32).decode()
WRONG = base64.b64encode(b"w" * 32).decode()
ROOT = Rule(
    name="root", primary_key="root-key-0123456789abcdef", secondary_key=None, rights=Rights.MANAGE
)
HC = HybridConnection(name="telemetry", rules=())
OTHER = HybridConnection(name="other", rules=())
OPEN = HybridConnection(name="open", requires_client_authorization=False)
GRANTS = Grants(listen=("telemetry", "cmd-*"), send=("telemetry", "upload/*"))


def sas_device(device_id: str = "dev-1", **changes: object) -> Device:
    fields: dict[str, object] = {
        "device_id": device_id,
        "authentication": Authentication(
            type="sas", symmetric_key=SymmetricKey(primary_key=PRIMARY, secondary_key=SECONDARY)
        ),
        "grants": GRANTS,
    }
    fields.update(changes)
    return Device(**fields)  # type: ignore[arg-type]


def token(device_id: str = "dev-1", key: str = PRIMARY, **options: object) -> str:
    options.setdefault("expiry", LATER)
    return device_sas_token(HOST, device_id, key, **options)  # type: ignore[arg-type]


def check(
    text: str,
    device: Device | None,
    right: Rights = Rights.LISTEN,
    *,
    hc: HybridConnection = HC,
    now: float = NOW,
    host: str | None = None,
    grace: float = 0.0,
) -> Principal:
    return check_token(
        text,
        hc=hc,
        namespace_rules=(ROOT,),
        right=right,
        now=now,
        host=host,
        grace=grace,
        device=device,
    )


# --- token shapes and sr parsing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "device_id"),
    [
        ("", "dev-1"),
        ("https://", "dev-1"),
        ("sb://", "dev-1"),
        ("amqps://", "dev-1"),
        ("", "a+b.c:d=e@f$g'h(i)j,k!l*m?n#o%p_q"),
    ],
)
def test_device_tokens_are_recognised_with_any_scheme_and_id(scheme: str, device_id: str) -> None:
    parsed = parse_device_token(token(device_id, scheme=scheme))
    assert parsed is not None
    assert parsed.device_id == device_id
    assert parsed.host == HOST
    assert parsed.expiry == LATER
    assert device_id in parsed.candidate_ids
    assert "sig" not in repr(parsed).lower()


def test_an_empty_skn_is_still_a_device_token() -> None:
    parsed = parse_device_token(token(skn=""))
    assert parsed is not None
    assert parsed.device_id == "dev-1"


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        token(skn="root"),  # a rule token whose sr happens to look like a device's
        create_sas_token(f"https://{HOST}/telemetry", "root", ROOT.primary_key, LATER),
        "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig",
        "eyJhbGciOiJSUzI1NiJ9.e30.sig",
        "garbage",
        "SharedAccessSignature sr=x&sr=y&se=1",
        "SharedAccessSignature nonsense",
        f"SharedAccessSignature sr={HOST}%2Fdevices&sig=x&se=1",
        f"SharedAccessSignature sr={HOST}%2Fdevices%2Fd%2Fmodules%2Fm&sig=x&se=1",
        f"SharedAccessSignature sr={HOST}%2Fother%2Fd&sig=x&se=1",
        "SharedAccessSignature sr=devices%2Fd&sig=x&se=1",  # no host segment before devices
        "SharedAccessSignature " + "a" * 5000,
    ],
)
def test_other_tokens_are_not_device_tokens(text: str | None) -> None:
    assert parse_device_token(text) is None


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: t.replace(f"se={LATER}", "se=soon"), "se is not an integer"),
        (lambda t: t.split("&se=")[0], "se is not an integer"),
        (lambda t: t.replace("sig=", "sig=!!"), "sig is not valid base64"),
        (lambda t: t.replace("sig=", "sig=QUJD&x="), "sig is not an HMAC-SHA256 signature"),
    ],
)
def test_malformed_device_tokens_are_401(mangle: object, message: str) -> None:
    bad = mangle(token())  # type: ignore[operator]
    with pytest.raises(AuthError, match=message):
        parse_device_token(bad)
    with pytest.raises(AuthError):
        check(bad, sas_device())


def test_a_doubly_encoded_device_id_is_found_too() -> None:
    # The Node device SDK percent-encodes the deviceId, then the whole sr again.
    parsed = parse_device_token(token("dev%231"))
    assert parsed is not None
    assert parsed.candidate_ids == ("dev%231", "dev#1")
    principal = check(token("dev%231"), sas_device("dev#1"))
    assert principal.device_id == "dev#1"


def test_a_raw_plus_in_the_device_id_is_not_a_space() -> None:
    text = f"SharedAccessSignature sr={HOST}/devices/a+b&sig={'A' * 43}=&se={LATER}"
    parsed = parse_device_token(text)
    assert parsed is not None
    assert parsed.device_id == "a+b"


# --- device SAS verification ------------------------------------------------------------


def test_a_device_token_makes_a_device_principal() -> None:
    principal = check(token(), sas_device())
    assert principal == Principal(
        rule="device:dev-1",
        rights=Rights.LISTEN | Rights.SEND,
        expires_at=float(LATER),
        device_id="dev-1",
    )
    assert not principal.anonymous


@pytest.mark.parametrize("key", [PRIMARY, SECONDARY])
@pytest.mark.parametrize("decode_key", [True, False])
def test_either_key_signs_in_either_convention(key: str, decode_key: bool) -> None:
    assert check(token(key=key, decode_key=decode_key), sas_device()).device_id == "dev-1"


def test_wrong_key_unknown_device_and_disabled_device_are_401() -> None:
    with pytest.raises(AuthError, match="signature") as info:
        check(token(key=WRONG), sas_device())
    assert info.value.http_status == 401
    with pytest.raises(AuthError, match="not registered") as info:
        check(token(), None)
    assert info.value.http_status == 401
    with pytest.raises(AuthError, match="not registered"):
        check(token("dev-2"), sas_device("dev-1"))  # the caller looked up another identity
    with pytest.raises(AuthError, match="disabled") as info:
        check(token(), sas_device(status="disabled"))
    assert info.value.http_status == 401


def test_a_certificate_device_cannot_use_a_token() -> None:
    device = Device(
        device_id="dev-1", authentication=Authentication(type="certificateAuthority"), grants=GRANTS
    )
    with pytest.raises(AuthError, match="SAS keys"):
        check(token(), device)


def test_expired_tokens_are_401_after_the_grace() -> None:
    text = token(expiry=NOW - 10)
    with pytest.raises(TokenExpiredError) as info:
        check(text, sas_device())
    assert info.value.http_status == 401
    assert check(text, sas_device(), grace=30).device_id == "dev-1"


@pytest.mark.parametrize(
    ("hc_name", "right", "allowed"),
    [
        ("telemetry", Rights.LISTEN, True),
        ("TELEMETRY", Rights.SEND, True),
        ("cmd-42", Rights.LISTEN, True),
        ("cmd-42", Rights.SEND, False),
        ("upload/a/b", Rights.SEND, True),
        ("upload", Rights.SEND, False),
        ("other", Rights.LISTEN, False),
        ("other", Rights.SEND, False),
    ],
)
def test_grants_decide_between_ok_and_403(hc_name: str, right: Rights, allowed: bool) -> None:
    hc = HybridConnection(name=hc_name)
    if allowed:
        principal = check(token(), sas_device(), right, hc=hc)
        assert principal.rights.allows(right)
        assert principal.rights == device_rights(sas_device(), hc_name)
    else:
        with pytest.raises(ForbiddenError) as info:
            check(token(), sas_device(), right, hc=hc)
        assert info.value.http_status == 403


def test_the_host_is_checked_only_when_asked() -> None:
    text = token(scheme="https://")
    assert check(text, sas_device(), host=None).device_id == "dev-1"
    assert check(text, sas_device(), host=f"{HOST.upper()}:443").device_id == "dev-1"
    with pytest.raises(ForbiddenError, match="host"):
        check(text, sas_device(), host="elsewhere.example:443")


def test_device_principals_are_never_cached() -> None:
    cache = TokenCache()
    text = token()

    def run(device: Device | None) -> Principal:
        return authorize(
            text,
            hc=HC,
            namespace_rules=(ROOT,),
            right=Rights.SEND,
            now=NOW,
            cache=cache,
            device=device,
        )

    assert run(sas_device()).device_id == "dev-1"
    with pytest.raises(AuthError, match="disabled"):
        run(sas_device(status="disabled"))
    rule_token = create_sas_token(f"https://{HOST}/telemetry", "root", ROOT.primary_key, LATER)
    authorize(rule_token, hc=HC, namespace_rules=(ROOT,), right=Rights.SEND, now=NOW, cache=cache)
    assert len(cache._entries) == 1  # the rule token only


def test_anonymous_senders_stay_anonymous() -> None:
    principal = authorize(
        token(), hc=OPEN, namespace_rules=(), right=Rights.SEND, now=NOW, device=None
    )
    assert principal.anonymous
    assert principal.device_id is None


def test_rule_tokens_are_unaffected() -> None:
    rule_token = create_sas_token(f"https://{HOST}/telemetry", "root", ROOT.primary_key, LATER)
    principal = check(rule_token, None)
    assert principal.rule == "root"
    assert principal.device_id is None


# --- X.509 --------------------------------------------------------------------------------

SHA1 = "AB" * 20
SHA256 = "CD" * 32


def cert(
    cn: str | None = "dev-x", *, self_issued: bool = False, **changes: object
) -> PeerCertificate:
    fields: dict[str, object] = {
        "common_name": cn,
        "sha1": SHA1,
        "sha256": SHA256,
        "self_issued": self_issued,
        "not_after": float(LATER),
        # What credentials() works out for a CA device whose chain ends at a trusted CA.
        "ca_anchored": not self_issued,
    }
    fields.update(changes)
    return PeerCertificate(**fields)  # type: ignore[arg-type]


def thumbprint_device(primary: str, secondary: str | None = None, **changes: object) -> Device:
    fields: dict[str, object] = {
        "device_id": "dev-x",
        "authentication": Authentication(
            type="selfSigned",
            x509_thumbprint=X509Thumbprint(
                primary_thumbprint=primary, secondary_thumbprint=secondary
            ),
        ),
        "grants": GRANTS,
    }
    fields.update(changes)
    return Device(**fields)  # type: ignore[arg-type]


def ca_device(**changes: object) -> Device:
    fields: dict[str, object] = {
        "device_id": "dev-x",
        "authentication": Authentication(type="certificateAuthority"),
        "grants": GRANTS,
    }
    fields.update(changes)
    return Device(**fields)  # type: ignore[arg-type]


def by_cert(
    certificate: PeerCertificate,
    device: Device | None,
    right: Rights = Rights.LISTEN,
    *,
    hc: HybridConnection = HC,
    text: str | None = None,
) -> Principal:
    return authorize(
        text,
        hc=hc,
        namespace_rules=(ROOT,),
        right=right,
        now=NOW,
        device=device,
        certificate=certificate,
    )


@pytest.mark.parametrize(
    ("primary", "secondary"),
    [(SHA1, None), (SHA256, None), ("00" * 20, SHA1), ("00" * 20, SHA256.lower())],
)
def test_a_registered_thumbprint_authenticates(primary: str, secondary: str | None) -> None:
    principal = by_cert(cert(self_issued=True), thumbprint_device(primary, secondary))
    assert principal.rule == "device:dev-x"
    assert principal.device_id == "dev-x"
    assert principal.expires_at == float(LATER)


def test_certificate_refusals() -> None:
    with pytest.raises(AuthError, match="thumbprint"):
        by_cert(cert(), thumbprint_device("00" * 20, "11" * 32))
    with pytest.raises(AuthError, match="no registered device"):
        by_cert(cert(), None)
    with pytest.raises(AuthError, match="no registered device"):
        by_cert(cert("dev-y"), ca_device())
    with pytest.raises(AuthError, match="no registered device"):
        by_cert(cert(None), ca_device())
    with pytest.raises(AuthError, match="signed by a registered CA"):
        by_cert(cert(self_issued=True), ca_device())
    # Issue 11: not self-issued is not enough; the chain must end at a CA (ca_trust).
    with pytest.raises(AuthError, match="signed by a registered CA"):
        by_cert(cert(ca_anchored=False), ca_device())
    # Thumbprint devices match by thumbprint alone, whatever vouched for the chain.
    assert by_cert(cert(ca_anchored=False), thumbprint_device(SHA256)).device_id == "dev-x"
    with pytest.raises(AuthError, match="does not authenticate with certificates"):
        by_cert(cert(), sas_device("dev-x"))
    with pytest.raises(AuthError, match="disabled") as info:
        by_cert(cert(), ca_device(status="disabled"))
    assert info.value.http_status == 401
    with pytest.raises(TokenExpiredError):
        by_cert(cert(not_after=float(NOW - 1)), ca_device())
    with pytest.raises(ForbiddenError) as forbidden:
        by_cert(cert(), ca_device(), hc=OTHER)
    assert forbidden.value.http_status == 403


def test_a_ca_signed_certificate_authenticates() -> None:
    principal = by_cert(cert(), ca_device(), Rights.SEND)
    assert principal.device_id == "dev-x"
    assert principal.rights == Rights.LISTEN | Rights.SEND


def test_a_token_takes_precedence_over_the_certificate() -> None:
    rule_token = create_sas_token(f"https://{HOST}/telemetry", "root", ROOT.primary_key, LATER)
    principal = by_cert(cert(), ca_device(status="disabled"), text=rule_token)
    assert principal.rule == "root"


def test_peer_certificate_from_what_ssl_reports(tmp_path: Path) -> None:
    ca = make_device_ca(tmp_path)
    device_cert = make_device_cert(tmp_path, "dev-x", ca=ca)
    der = ssl.PEM_cert_to_DER_cert(device_cert.cert.read_text())
    info: dict[str, object] = {
        "subject": ((("countryName", "NL"),), (("commonName", "dev-x"),)),
        "issuer": ((("commonName", "hybridrelay test device CA"),),),
        "notAfter": "Jan  1 00:00:00 2100 GMT",
    }
    peer = PeerCertificate.from_ssl(der, info)
    assert peer.common_name == "dev-x"
    assert peer.sha1 == device_cert.sha1 == hashlib.sha1(der).hexdigest().upper()  # noqa: S324
    assert peer.sha256 == device_cert.sha256
    assert not peer.self_issued
    assert peer.not_after == 4_102_444_800.0
    lone = PeerCertificate.from_ssl(der, {"subject": info["subject"], "issuer": info["subject"]})
    assert lone.self_issued
    assert lone.not_after is None
    assert PeerCertificate.from_ssl(der, {"subject": "junk"}).common_name is None


# --- config and the TLS context -----------------------------------------------------------

RULE = '[[rules]]\nname = "root"\nkey = "0123456789abcdef"\nrights = ["Manage"]\n'


def _config(tmp_path: Path, relay: str, env: dict[str, str] | None = None) -> object:
    path = tmp_path / "relay.toml"
    path.write_text(f"[relay]\n{relay}\n{RULE}", "utf-8")
    return load_relay_config(path, env or {})


def test_client_cert_settings(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem", "x.pem"):  # the files must be readable
        (tmp_path / name).write_text("x")
    tls = 'tls_cert = "c.pem"\ntls_key = "k.pem"\n'
    config = _config(tmp_path, tls + 'client_cert = "required"\nclient_ca_file = "ca.pem"')
    assert config.relay.client_cert == "required"  # type: ignore[attr-defined]
    # Relative to the config file.
    assert config.relay.client_ca_file == str(tmp_path / "ca.pem")  # type: ignore[attr-defined]
    default = _config(tmp_path, "")
    assert default.relay.client_cert == "none"  # type: ignore[attr-defined]
    ca = str(tmp_path / "x.pem")
    env = {"HYBRIDRELAY_CLIENT_CERT": "optional", "HYBRIDRELAY_CLIENT_CA_FILE": ca}
    overridden = _config(tmp_path, tls, env)
    assert overridden.relay.client_cert == "optional"  # type: ignore[attr-defined]
    assert overridden.relay.client_ca_file == ca  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("relay", "key", "reason"),
    [
        ('client_cert = "sometimes"', "relay.client_cert", "none, optional or required"),
        ('client_cert = "optional"\nclient_ca_file = "ca.pem"', "relay.client_cert", "TLS"),
        (
            'tls_cert = "c.pem"\ntls_key = "k.pem"\nclient_cert = "required"',
            "relay.client_ca_file",
            "required",
        ),
    ],
)
def test_client_cert_refusals(tmp_path: Path, relay: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, relay)
    assert info.value.key == key
    assert reason in info.value.reason


def test_tls_context_asks_for_client_certificates(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    ca = make_device_ca(tmp_path)
    plain = tls_context(str(files.cert), str(files.key))
    assert plain.verify_mode == ssl.CERT_NONE
    optional = tls_context(
        str(files.cert), str(files.key), client_cert="optional", client_ca_file=str(ca.pem)
    )
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert optional.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    # Only the device CAs are trusted, never the system's.
    assert [c["subject"] for c in optional.get_ca_certs()] == [
        ((("commonName", "hybridrelay test device CA"),),)
    ]
    required = tls_context(
        str(files.cert), str(files.key), client_cert="required", client_ca_file=str(ca.pem)
    )
    assert required.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="client_ca_file"):
        tls_context(
            str(files.cert),
            str(files.key),
            client_cert="optional",
            client_ca_file=str(tmp_path / "missing.pem"),
        )
    with pytest.raises(ConfigError, match="client_ca_file"):
        tls_context(str(files.cert), str(files.key), client_cert="optional")
