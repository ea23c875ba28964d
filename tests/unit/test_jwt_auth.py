"""JWT bearer tokens (issue 5): config, verification, claims -> rights, and authorize().

Keys are generated with cryptography and tokens signed with pyjwt; the clock is
the injected ``NOW``, so nothing here depends on the time of the run.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings, strategies as st

from hybridrelay.errors import AuthError, ConfigError, ForbiddenError, TokenExpiredError
from hybridrelay.protocol.sas import Rights, create_sas_token
from hybridrelay.relay import jwt_auth
from hybridrelay.relay.auth import TokenCache, authorize, check_token
from hybridrelay.relay.config import JwtIssuerConfig, load_relay_config
from hybridrelay.relay.jwt_auth import (
    JWT_NOT_ACCEPTED,
    JwtGrants,
    JwtKey,
    bearer_token,
    is_jwt,
    load_jwks_file,
    load_public_keys,
    verify_jwt,
)
from hybridrelay.relay.store.base import HybridConnection, Rule

NOW = 1_700_000_000
ISS = "https://idp.example"
AUD = "hybridrelay"
SAS_KEY = "primary-key-0123456789abcdef"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
# The config must refuse it; nothing is signed with it.
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505

HC = HybridConnection(
    name="sensors/temp",
    rules=(Rule(name="listen", primary_key=SAS_KEY, secondary_key=None, rights=Rights.LISTEN),),
)
OTHER_HC = HybridConnection(name="billing")
OPEN_HC = HybridConnection(name="open", requires_client_authorization=False)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp signing")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - 86_400, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + 86_400, tz=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issuer(
    *keys: JwtKey,
    name: str = ISS,
    audiences: tuple[str, ...] = (AUD,),
    algorithms: tuple[str, ...] = ("RS256", "ES256"),
    leeway: float = 30.0,
    rights_claim: str = "hc",
) -> JwtIssuerConfig:
    return JwtIssuerConfig(
        issuer=name,
        audiences=audiences,
        keys=keys,
        algorithms=algorithms,
        leeway=leeway,
        rights_claim=rights_claim,
    )


RSA_JWT_KEY = JwtKey(algorithm="RS256", key=RSA_KEY.public_key())
EC_JWT_KEY = JwtKey(algorithm="ES256", key=EC_KEY.public_key())
ISSUERS = (issuer(RSA_JWT_KEY, EC_JWT_KEY),)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "device-7",
        "iat": NOW - 10,
        "exp": NOW + 600,
        "hc": {"listen": ["sensors/*"], "send": ["billing"]},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(payload: dict[str, Any] | None = None, *, kid: str | None = None, key: Any = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(
        payload if payload is not None else claims(),
        key or RSA_KEY,
        algorithm="RS256",
        headers=headers,
    )


def es256(payload: dict[str, Any] | None = None, *, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(
        payload if payload is not None else claims(), EC_KEY, algorithm="ES256", headers=headers
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_with_public_pem(payload: dict[str, Any]) -> str:
    """The alg-confusion attack: HS256 keyed with the issuer's *public* key PEM."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(public_pem(RSA_KEY), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(mac)}"


def alg_none(payload: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(claims(hc={"listen": ["*"], "manage": ["*"]})).encode())
    return f"{header}.{forged}.{signature}"


def check(
    text: str,
    *,
    hc: HybridConnection = HC,
    right: Rights = Rights.LISTEN,
    issuers: tuple[JwtIssuerConfig, ...] = ISSUERS,
    now: float = NOW,
) -> Any:
    return check_token(text, hc=hc, namespace_rules=(), right=right, now=now, jwt_issuers=issuers)


# ------------------------------------------------------------------- telling formats apart


def test_bearer_and_raw_jwts_are_recognised_and_sas_is_not() -> None:
    token = rs256()
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer   {token}  ") == token
    assert bearer_token(token) == token
    assert bearer_token("Bearer not-a-jwt") == "not-a-jwt"  # refused later, as a JWT
    sas = create_sas_token("http://ns/sensors/temp", "listen", SAS_KEY, NOW + 60)
    assert bearer_token(sas) is None
    assert not is_jwt("a.b")
    assert not is_jwt("a.b.c.d.e")  # JWE: not accepted, goes the SAS way and fails there
    assert is_jwt(alg_none({"iss": ISS}))


# ----------------------------------------------------------------------------- accepted


def test_valid_rs256_bearer_grants_listen_by_glob() -> None:
    principal = check(f"Bearer {rs256()}")
    assert principal.rule == "jwt:device-7"
    assert principal.rights == Rights.LISTEN
    assert principal.expires_at == NOW + 600


def test_valid_es256_raw_token_grants_send_by_name() -> None:
    principal = check(es256(), hc=OTHER_HC, right=Rights.SEND)
    assert principal.rights == Rights.SEND
    assert principal.rule == "jwt:device-7"


def test_scope_strings_grant_rights() -> None:
    token = rs256(claims(hc=None, sub=None, scope="openid hc:send:sensors/* hc:listen:billing"))
    assert check(token, right=Rights.SEND).rights == Rights.SEND
    assert check(token, hc=OTHER_HC).rule == f"jwt:{ISS}"  # no sub: the issuer names it
    scp = rs256(claims(hc=None, scp=["hc:manage:*"]))
    principal = check(scp, right=Rights.SEND)
    assert principal.rights == Rights.MANAGE
    assert principal.rights.allows(Rights.LISTEN | Rights.SEND)


def test_configured_rights_claim_name() -> None:
    issuers = (issuer(RSA_JWT_KEY, rights_claim="relay"),)
    token = rs256(claims(hc=None, relay={"listen": "sensors/temp"}))
    assert check(token, issuers=issuers).rights == Rights.LISTEN


@pytest.mark.parametrize(
    ("pattern", "entity", "granted"),
    [
        ("sensors/temp", "sensors/temp", True),
        ("Sensors/Temp", "sensors/temp", True),  # names are case-insensitive
        ("sensors/*", "sensors/temp", True),
        ("sensors/*", "sensors/a/b", True),  # fnmatch: * crosses /
        ("sensors/*", "sensors", False),
        ("sensor?/temp", "sensors/temp", True),
        ("*", "anything/at/all", True),
        ("billing", "sensors/temp", False),
        ("", "sensors/temp", False),
    ],
)
def test_patterns(pattern: str, entity: str, granted: bool) -> None:
    grants = JwtGrants(listen=(pattern,) if pattern else ())
    assert (grants.rights_for(entity) == Rights.LISTEN) is granted


def test_leeway_accepts_slightly_expired_and_early_tokens() -> None:
    token = rs256(claims(exp=NOW - 10, nbf=NOW + 10, iat=NOW + 10))
    assert check(token).expires_at == NOW - 10
    with pytest.raises(TokenExpiredError):
        check(token, issuers=(issuer(RSA_JWT_KEY, leeway=0),))


def test_audience_list_on_either_side() -> None:
    token = rs256(claims(aud=["someone-else", AUD]))
    assert check(token).rights == Rights.LISTEN
    issuers = (issuer(RSA_JWT_KEY, audiences=("other", AUD)),)
    assert check(rs256(), issuers=issuers).rights == Rights.LISTEN


def test_each_pem_key_is_tried_and_kid_selects_jwks_keys() -> None:
    keys = (
        JwtKey(algorithm="RS256", key=OTHER_RSA_KEY.public_key()),
        RSA_JWT_KEY,
    )
    assert check(rs256(kid="whatever"), issuers=(issuer(*keys),)).rights == Rights.LISTEN
    jwks = (
        JwtKey(algorithm="RS256", key=OTHER_RSA_KEY.public_key(), kid="old"),
        JwtKey(algorithm="RS256", key=RSA_KEY.public_key(), kid="new"),
    )
    assert check(rs256(kid="new"), issuers=(issuer(*jwks),)).rights == Rights.LISTEN
    with pytest.raises(AuthError, match="signature"):
        check(rs256(kid="old"), issuers=(issuer(*jwks),))


# ------------------------------------------------------------------------------ refused


def _cases() -> list[tuple[str, Callable[[], str], tuple[JwtIssuerConfig, ...], str]]:
    rsa_only = (issuer(RSA_JWT_KEY),)
    jwks = (issuer(JwtKey(algorithm="RS256", key=RSA_KEY.public_key(), kid="k1")),)
    es_only = (issuer(EC_JWT_KEY, algorithms=("ES256",)),)
    return [
        ("wrong issuer", lambda: rs256(claims(iss="https://evil.example")), ISSUERS, "issuer"),
        ("no issuer", lambda: rs256(claims(iss=None)), ISSUERS, "issuer"),
        ("wrong audience", lambda: rs256(claims(aud="someone-else")), ISSUERS, "audience"),
        ("no audience", lambda: rs256(claims(aud=None)), ISSUERS, "aud"),
        ("expired", lambda: rs256(claims(exp=NOW - 31)), ISSUERS, "expired"),
        ("no exp", lambda: rs256(claims(exp=None)), ISSUERS, "exp"),
        ("exp not a number", lambda: rs256(claims(exp="soon")), ISSUERS, "exp"),
        ("nbf in the future", lambda: rs256(claims(nbf=NOW + 31)), ISSUERS, "nbf"),
        ("iat in the future", lambda: rs256(claims(iat=NOW + 31)), ISSUERS, "iat"),
        ("alg none", lambda: alg_none(claims()), ISSUERS, "algorithm"),
        ("alg confusion HS256", lambda: hs256_with_public_pem(claims()), ISSUERS, "algorithm"),
        ("ES256 on an RSA-only issuer", es256, rsa_only, "key"),
        ("RS256 not allowed for issuer", rs256, es_only, "algorithm"),
        ("unknown kid", lambda: rs256(kid="k2"), jwks, "kid"),
        ("tampered payload", lambda: tampered(rs256()), ISSUERS, "signature"),
        ("signed by another key", lambda: rs256(key=OTHER_RSA_KEY), ISSUERS, "signature"),
        ("malformed", lambda: "Bearer abc.def", ISSUERS, "well-formed"),
        ("header without alg", lambda: "Bearer e30.e30.e30x", ISSUERS, "algorithm"),
        ("header not json", lambda: "Bearer eyJ.e30.e30", ISSUERS, "well-formed"),
        ("malformed rights claim", lambda: rs256(claims(hc=["*"])), ISSUERS, "hc claim"),
        ("malformed patterns", lambda: rs256(claims(hc={"listen": [1]})), ISSUERS, "hc claim"),
        ("not configured", rs256, (), JWT_NOT_ACCEPTED),
    ]


CASES = _cases()


@pytest.mark.parametrize(
    ("make", "issuers", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_with_401_without_echoing_the_token(
    make: Callable[[], str], issuers: tuple[JwtIssuerConfig, ...], reason: str
) -> None:
    token = make()
    with pytest.raises(AuthError) as info:
        check(token, issuers=issuers)
    err = info.value
    assert not isinstance(err, ForbiddenError)
    assert err.http_status == 401
    assert reason in str(err)
    for part in token.removeprefix("Bearer ").split("."):
        if len(part) > 3:
            assert part not in str(err)


def test_expired_is_token_expired_error() -> None:
    with pytest.raises(TokenExpiredError):
        check(rs256(claims(exp=NOW - 31)))
    # grace (the relay's renewal grace) extends it
    principal = check_token(
        rs256(claims(exp=NOW - 31)),
        hc=HC,
        namespace_rules=(),
        right=Rights.LISTEN,
        now=NOW,
        grace=60,
        jwt_issuers=ISSUERS,
    )
    assert principal.expires_at == NOW - 31


def test_bearer_word_with_no_issuers_names_the_reason() -> None:
    with pytest.raises(AuthError, match=JWT_NOT_ACCEPTED):
        authorize(f"Bearer {rs256()}", hc=HC, namespace_rules=(), right=Rights.LISTEN, now=NOW)


@pytest.mark.parametrize(
    ("token", "hc", "right"),
    [
        pytest.param(rs256, HC, Rights.SEND, id="listen-only asks to send"),
        pytest.param(rs256, OTHER_HC, Rights.LISTEN, id="send-only asks to listen"),
        pytest.param(lambda: rs256(claims(hc={})), HC, Rights.LISTEN, id="no grants"),
        pytest.param(
            lambda: rs256(claims(hc=None, scope="hc:listen")), HC, Rights.LISTEN, id="bare scope"
        ),
    ],
)
def test_valid_token_without_the_right_is_403(
    token: Callable[[], str], hc: HybridConnection, right: Rights
) -> None:
    with pytest.raises(ForbiddenError) as info:
        check(token(), hc=hc, right=right)
    assert info.value.http_status == 403


# ----------------------------------------------------------------------------- authorize


def test_authorize_keeps_the_sas_path() -> None:
    sas = create_sas_token("http://ns/sensors/temp", "listen", SAS_KEY, NOW + 60)
    principal = authorize(
        sas, hc=HC, namespace_rules=(), right=Rights.LISTEN, now=NOW, jwt_issuers=ISSUERS
    )
    assert principal.rule == "listen"
    anonymous = authorize(
        None, hc=OPEN_HC, namespace_rules=(), right=Rights.SEND, now=NOW, jwt_issuers=ISSUERS
    )
    assert anonymous.anonymous


def test_authorize_caches_jwts_until_exp() -> None:
    cache = TokenCache()
    token = es256(claims(exp=NOW + 60))
    args: dict[str, Any] = {
        "hc": OTHER_HC,
        "namespace_rules": (),
        "right": Rights.SEND,
        "cache": cache,
        "jwt_issuers": ISSUERS,
    }
    first = authorize(token, now=NOW, **args)
    # The cache answers without verifying: the issuers are not consulted.
    assert authorize(token, now=NOW + 30, **{**args, "jwt_issuers": ()}) is first
    with pytest.raises(TokenExpiredError):
        authorize(token, now=NOW + 120, **args)


def test_verify_jwt_reports_issuer_subject_and_grants() -> None:
    verified = verify_jwt(rs256(), issuers=ISSUERS, now=NOW)
    assert verified.issuer == ISS
    assert verified.subject == "device-7"
    assert verified.grants == JwtGrants(listen=("sensors/*",), send=("billing",))


def test_module_exports() -> None:
    for name in jwt_auth.__all__:
        assert hasattr(jwt_auth, name), name


# ------------------------------------------------------------------------ key loading


def _jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    algorithm: Any = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else (jwt.algorithms.ECAlgorithm)
    )
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    data.update(extra)
    return data


def test_load_public_keys_reads_keys_and_certificates(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(public_pem(RSA_KEY))
    (tmp_path / "both.pem").write_bytes(certificate_pem(EC_KEY) + public_pem(OTHER_RSA_KEY))
    keys = load_public_keys([tmp_path / "rsa.pem", tmp_path / "both.pem"])
    assert [k.algorithm for k in keys] == ["RS256", "ES256", "RS256"]
    assert keys[1].key.public_numbers() == EC_KEY.public_key().public_numbers()
    assert all(k.kid is None for k in keys)


def test_load_jwks_skips_keys_for_other_uses(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    document = {
        "keys": [
            _jwk(RSA_KEY, kid="r1", use="sig", alg="RS256"),
            _jwk(EC_KEY, kid="e1"),
            _jwk(OTHER_RSA_KEY, kid="enc", use="enc"),
            _jwk(p384, kid="p384"),
            {"kty": "oct", "k": "c2VjcmV0"},
            _jwk(OTHER_RSA_KEY, kid="rs512", alg="RS512"),
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    keys = load_jwks_file(path)
    assert [(k.kid, k.algorithm) for k in keys] == [("r1", "RS256"), ("e1", "ES256")]


# ------------------------------------------------------------------------------ config

BASE = """
[[rules]]
name = "root"
key = "root-key-0123456789abcdef"
rights = ["Listen"]
"""


def write_keys(directory: Path) -> None:
    (directory / "rsa.pem").write_bytes(public_pem(RSA_KEY))
    (directory / "ec.crt").write_bytes(certificate_pem(EC_KEY))
    (directory / "jwks.json").write_text(json.dumps({"keys": [_jwk(EC_KEY, kid="e1")]}))


def load(tmp_path: Path, issuers: str, base: str = BASE) -> Any:
    write_keys(tmp_path)
    path = tmp_path / "relay.toml"
    path.write_text(base + issuers, "utf-8")
    return load_relay_config(path, {})


def test_config_loads_issuers_with_relative_paths(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[[jwt_issuers]]
issuer = "https://idp.example"
audience = "hybridrelay"
public_keys = ["rsa.pem", "ec.crt"]

[[jwt_issuers]]
issuer = "https://devices.example"
audience = ["hybridrelay", "other"]
jwks_file = "jwks.json"
algorithms = ["ES256"]
leeway = 5
rights_claim = "relay"
""",
    )
    first, second = config.jwt_issuers
    assert first.issuer == ISS
    assert first.audiences == ("hybridrelay",)
    assert [k.algorithm for k in first.keys] == ["RS256", "ES256"]
    assert first.algorithms == ("RS256", "ES256")
    assert (first.leeway, first.rights_claim) == (30.0, "hc")
    assert second.audiences == ("hybridrelay", "other")
    assert [k.kid for k in second.keys] == ["e1"]
    assert (second.algorithms, second.leeway, second.rights_claim) == (("ES256",), 5.0, "relay")
    # The loaded issuers verify real tokens.
    assert check(rs256(), issuers=config.jwt_issuers).rights == Rights.LISTEN


def test_config_without_issuers_has_none(tmp_path: Path) -> None:
    assert load(tmp_path, "").jwt_issuers == ()


def test_issuers_alone_are_enough_to_start(tmp_path: Path) -> None:
    text = '[[jwt_issuers]]\nissuer = "i"\naudience = "a"\npublic_keys = ["rsa.pem"]\n'
    assert len(load(tmp_path, text, base="").jwt_issuers) == 1


def test_keys_that_fit_no_allowed_algorithm_are_dropped(tmp_path: Path) -> None:
    text = (
        '[[jwt_issuers]]\nissuer = "i"\naudience = "a"\n'
        'public_keys = ["rsa.pem", "ec.crt"]\nalgorithms = ["ES256"]\n'
    )
    (issuer_config,) = load(tmp_path, text).jwt_issuers
    assert [k.algorithm for k in issuer_config.keys] == ["ES256"]


def _write_bad_files(directory: Path) -> None:
    private = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / "private.pem").write_bytes(private)
    (directory / "garbage.pem").write_text("hello\n")
    broken = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    (directory / "broken.pem").write_bytes(broken)
    (directory / "p384.pem").write_bytes(public_pem(ec.generate_private_key(ec.SECP384R1())))
    (directory / "weak.pem").write_bytes(public_pem(WEAK_RSA_KEY))
    (directory / "bad.json").write_text("{nope")
    (directory / "empty.json").write_text('{"keys": []}')
    (directory / "notjwks.json").write_text("[1, 2]")
    (directory / "private.json").write_text(json.dumps({"keys": [_jwk(EC_KEY, d="AAAA")]}))


_MIN = 'issuer = "i"\naudience = "a"\n'
_PEM = 'public_keys = ["rsa.pem"]\n'
CONFIG_CASES: list[tuple[str, str, str, str]] = [
    ("no issuer", 'audience = "a"\n' + _PEM, "issuer", "is required"),
    ("empty issuer", 'issuer = ""\naudience = "a"\n' + _PEM, "issuer", "is required"),
    ("no audience", 'issuer = "i"\n' + _PEM, "audience", "is required"),
    ("audience number", 'issuer = "i"\naudience = 3\n' + _PEM, "audience", "non-empty"),
    ("audience empty list", 'issuer = "i"\naudience = []\n' + _PEM, "audience", "non-empty"),
    ("no keys", _MIN, "public_keys", "one of public_keys or jwks_file"),
    ("both key kinds", _MIN + _PEM + 'jwks_file = "jwks.json"\n', "public_keys", "not both"),
    ("empty key list", _MIN + "public_keys = []\n", "public_keys", "at least one"),
    ("jwks_url", _MIN + 'jwks_url = "https://idp/jwks"\n', "jwks_url", "not implemented"),
    ("alg none", _MIN + _PEM + 'algorithms = ["none"]\n', "algorithms", "'none'"),
    ("alg HS256", _MIN + _PEM + 'algorithms = ["HS256"]\n', "algorithms", "HMAC"),
    ("alg RS512", _MIN + _PEM + 'algorithms = ["RS512"]\n', "algorithms", "unsupported"),
    ("alg empty", _MIN + _PEM + "algorithms = []\n", "algorithms", "at least one"),
    ("no key fits", _MIN + _PEM + 'algorithms = ["ES256"]\n', "public_keys", "no key fits"),
    ("leeway negative", _MIN + _PEM + "leeway = -1\n", "leeway", "between"),
    ("leeway huge", _MIN + _PEM + "leeway = 3600\n", "leeway", "between"),
    ("rights claim reserved", _MIN + _PEM + 'rights_claim = "scope"\n', "rights_claim", "scope"),
    ("rights claim empty", _MIN + _PEM + 'rights_claim = ""\n', "rights_claim", "empty"),
    ("unknown key", _MIN + _PEM + "audiences = []\n", "audiences", "unknown key"),
    ("missing file", _MIN + 'public_keys = ["nope.pem"]\n', "public_keys", "cannot read"),
    ("private key", _MIN + 'public_keys = ["private.pem"]\n', "public_keys", "private key"),
    ("not pem", _MIN + 'public_keys = ["garbage.pem"]\n', "public_keys", "no PEM"),
    ("broken pem", _MIN + 'public_keys = ["broken.pem"]\n', "public_keys", "not a valid"),
    ("P-384", _MIN + 'public_keys = ["p384.pem"]\n', "public_keys", "P-256"),
    ("RSA 1024", _MIN + 'public_keys = ["weak.pem"]\n', "public_keys", "2048"),
    ("jwks not json", _MIN + 'jwks_file = "bad.json"\n', "jwks_file", "not valid JSON"),
    ("jwks no keys", _MIN + 'jwks_file = "empty.json"\n', "jwks_file", "no RSA or EC"),
    ("jwks not a set", _MIN + 'jwks_file = "notjwks.json"\n', "jwks_file", "not a JWKS"),
    ("jwks private", _MIN + 'jwks_file = "private.json"\n', "jwks_file", "private key"),
]


@pytest.mark.parametrize(
    ("body", "key", "reason"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_issuer_config_is_refused(tmp_path: Path, body: str, key: str, reason: str) -> None:
    _write_bad_files(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[[jwt_issuers]]\n" + body)
    assert info.value.key == f"jwt_issuers[0].{key}"
    assert reason in info.value.reason
    assert "\n" not in str(info.value)


def test_issuer_defined_twice_is_refused(tmp_path: Path) -> None:
    one = "[[jwt_issuers]]\n" + _MIN + _PEM
    with pytest.raises(ConfigError) as info:
        load(tmp_path, one + one)
    assert info.value.key == "jwt_issuers"
    assert "defined twice" in info.value.reason


def test_jwt_issuers_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "", base='jwt_issuers = "https://idp"\n' + BASE)
    assert info.value.key == "jwt_issuers"


# ------------------------------------------------------------------------------ fuzzing

_B64URL = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=40)
_JSON_PART = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
).map(lambda value: b64url(json.dumps(value).encode()))
_HEADER = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "none", "HS256", ""])},
    optional={"kid": st.one_of(st.text(max_size=5), st.integers())},
).map(lambda value: b64url(json.dumps(value).encode()))


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}", _B64URL, _B64URL, _B64URL),
        st.builds(lambda h, p, s: f"Bearer {h}.{p}.{s}", _HEADER, _JSON_PART, _B64URL),
    )
)
def test_any_text_is_refused_with_a_documented_error(text: str) -> None:
    with pytest.raises(AuthError):
        check(text)
