"""JWT bearer tokens for listen, send and manage (issue 5, "JWT bearer").

A token arrives in the same places as a SAS token (HC Part 1 §8.4):
``ServiceBusAuthorization: Bearer <jwt>``, or the raw JWT with no scheme word
(what the .NET SDK sends for Entra ID tokens), or ``sb-hc-token``.
:func:`bearer_token` tells the two formats apart; :func:`verify_jwt` checks a
token against the ``[[jwt_issuers]]`` of the relay config.

Rules, and the answer each failure gets (all 401 except where noted):

- Only RS256 and ES256, and only those the issuer's config allows. ``none``
  and HS* never verify: the algorithm must match the *key type* (RS256 needs
  an RSA key, ES256 an EC P-256 key), so a token "signed" with HS256 and the
  issuer's public key as the HMAC secret finds no key at all (alg confusion,
  RFC 8725 §2.1).
- ``iss`` picks the issuer; its keys are tried in turn, restricted to the key
  id (``kid``) when both the token and the key carry one (JWKS).
- ``aud`` must name one of the issuer's audiences; ``exp`` is required;
  ``exp``, ``nbf`` and ``iat`` are checked against the caller's ``now`` with the
  issuer's leeway (an expired token raises :class:`TokenExpiredError`).
- Rights come from the claim named by ``rights_claim`` (default ``hc``):
  ``{"listen": [...], "send": [...], "manage": [...]}``, and from scope
  strings in ``scope`` / ``scp`` such as ``hc:send:sensors/*``. Patterns are
  hybrid connection names or fnmatch globs, compared case-insensitively like
  the names themselves; ``*`` also crosses ``/``. Manage implies Listen and
  Send, as for SAS rules (HC §8.5). A token lacking the right is a 403, which
  :mod:`hybridrelay.relay.auth` decides.

Error texts are short and never contain the token or any value taken from it.
Keys are loaded once, when the config is read (:func:`load_public_keys`,
:func:`load_jwks_file`); fetching a JWKS from a URL is not implemented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Final, Literal

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from hybridrelay.errors import AuthError, TokenExpiredError
from hybridrelay.protocol.sas import Rights

__all__ = [
    "ALGORITHMS",
    "JWT_NOT_ACCEPTED",
    "JwtAlgorithm",
    "JwtGrants",
    "JwtIssuerConfig",
    "JwtKey",
    "KeyFileError",
    "VerifiedJwt",
    "bearer_token",
    "is_jwt",
    "load_jwks_file",
    "load_public_keys",
    "verify_jwt",
]

JwtAlgorithm = Literal["RS256", "ES256"]
ALGORITHMS: Final[tuple[JwtAlgorithm, ...]] = ("RS256", "ES256")
JWT_NOT_ACCEPTED: Final = "JWT bearer tokens are not accepted by this relay"
SCOPE_PREFIX: Final = "hc"

# A JWS in compact form: three base64url parts (the third empty for alg "none",
# which must still be recognised as a JWT so that it is refused as one).
_JWT_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Header blocks are capped well below this by aiohttp; a query token is not.
MAX_JWT_LENGTH: Final = 16_384
MAX_JWKS_BYTES: Final = 1 << 20
MIN_RSA_BITS: Final = 2048
_BEARER: Final = "bearer "
_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)

PublicKey = RSAPublicKey | EllipticCurvePublicKey


class KeyFileError(ValueError):
    """A PEM or JWKS file holds no usable public key; the message names the file.

    Raised while the config is read, which turns it into a ConfigError.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKey:
    """One public key of an issuer, with the one algorithm it verifies."""

    algorithm: JwtAlgorithm  # RS256 for RSA keys, ES256 for EC P-256 keys
    key: PublicKey
    kid: str | None = None  # from a JWKS; PEM keys have none and are tried for every kid
    source: str = ""  # file (and JWKS index) it came from, for error messages


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtIssuerConfig:
    """One ``[[jwt_issuers]]`` table: whose JWT bearer tokens the relay accepts (issue 5).

    ``keys`` are loaded when the config is read (``config.py``), from ``public_keys``
    (PEM files) or ``jwks_file``; relative paths are relative to the config file. Only
    the keys usable with ``algorithms`` are kept. Defined here, next to its only
    reader, so that the config (which loads the keys with this module) and this module
    do not import each other.
    """

    issuer: str
    audiences: tuple[str, ...]
    keys: tuple[JwtKey, ...]
    algorithms: tuple[str, ...] = ALGORITHMS
    leeway: float = 30.0
    rights_claim: str = "hc"


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtGrants:
    """Which hybrid connections a token may listen on, send to and manage (patterns)."""

    listen: tuple[str, ...] = ()
    send: tuple[str, ...] = ()
    manage: tuple[str, ...] = ()

    def rights_for(self, entity: str) -> Rights:
        """The rights granted on ``entity`` (a hybrid connection name); Manage is kept as is.

        Callers check with :meth:`Rights.allows`, which expands Manage to Listen and Send.
        """
        name = entity.strip("/").lower()
        rights = Rights(0)
        for right, patterns in (
            (Rights.LISTEN, self.listen),
            (Rights.SEND, self.send),
            (Rights.MANAGE, self.manage),
        ):
            if any(fnmatchcase(name, p.lower()) for p in patterns):
                rights |= right
        return rights


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedJwt:
    """A token whose signature, issuer, audience and times were checked."""

    issuer: str
    subject: str | None
    expires_at: float
    grants: JwtGrants


def is_jwt(text: str) -> bool:
    """Tell whether ``text`` has the shape of a compact JWS (never a SAS token)."""
    return _JWT_SHAPE.fullmatch(text) is not None


def bearer_token(token_text: str) -> str | None:
    """The JWT inside ``token_text``, or None when it is not a bearer token.

    ``Bearer <jwt>`` (scheme word in any case, RFC 6750 §2.1) is always a bearer
    token, even when what follows is malformed, so it is refused as a JWT. Text
    without a scheme word is one when it has the JWT shape: a SAS token always
    starts with ``SharedAccessSignature`` and contains spaces, ``=`` and ``&``.
    """
    text = token_text.strip()
    if text[: len(_BEARER)].lower() == _BEARER:
        return text[len(_BEARER) :].strip()
    if is_jwt(text):
        return text
    return None


# ----------------------------------------------------------------------------- keys


def _jwt_key(key: object, *, source: str, kid: str | None = None) -> JwtKey:
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"{source}: RSA key of {key.key_size} bits (at least 2048 needed)")
        return JwtKey(algorithm="RS256", key=key, kid=kid, source=source)
    if isinstance(key, EllipticCurvePublicKey):
        if not isinstance(key.curve, SECP256R1):
            raise KeyFileError(f"{source}: EC curve {key.curve.name} (ES256 needs P-256)")
        return JwtKey(algorithm="ES256", key=key, kid=kid, source=source)
    raise KeyFileError(f"{source}: unsupported key type (RSA or EC P-256 only)")


def load_public_keys(paths: Iterable[Path]) -> tuple[JwtKey, ...]:
    """Load PEM public keys and certificates (RSA or EC P-256), several per file allowed.

    Certificates only carry the key: their validity dates and chain are not
    checked, as with the signing certificates identity providers publish.

    Raises:
        KeyFileError: A file is unreadable, holds a private key or no usable key;
            the message names the file.
    """
    keys: list[JwtKey] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
        blocks = list(_PEM_BLOCK.finditer(data))
        if not blocks:
            raise KeyFileError(f"{path}: no PEM public key or certificate")
        for index, block in enumerate(blocks):
            source = f"{path}" if len(blocks) == 1 else f"{path}[{index}]"
            keys.append(_pem_key(block.group(1).decode("ascii"), block.group(0), source))
    return tuple(keys)


def _pem_key(kind: str, pem: bytes, source: str) -> JwtKey:
    if "PRIVATE KEY" in kind:
        raise KeyFileError(f"{source}: holds a private key; give the public key instead")
    if kind not in {"CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"}:
        raise KeyFileError(f"{source}: unsupported PEM block {kind!r}")
    try:
        if kind == "CERTIFICATE":
            public: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            public = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{source}: not a valid PEM {kind.lower()}") from exc
    return _jwt_key(public, source=source)


def _jwk_key(entry: Mapping[str, object], source: str) -> JwtKey | None:
    # Keys for other algorithms or uses (encryption, Ed25519, P-384) are skipped:
    # identity providers publish those in the same set.
    kty, alg, use, kid = (entry.get(k) for k in ("kty", "alg", "use", "kid"))
    if use is not None and use != "sig":
        return None
    if alg is not None and alg not in ALGORITHMS:
        return None
    if kty not in {"RSA", "EC"} or (kty == "EC" and entry.get("crv") != "P-256"):
        return None
    if kid is not None and not isinstance(kid, str):
        raise KeyFileError(f"{source}: kid must be a string")
    if "d" in entry:
        raise KeyFileError(f"{source}: holds private key material; publish only public keys")
    algorithm: JwtAlgorithm = "RS256" if kty == "RSA" else "ES256"
    if alg is not None and alg != algorithm:
        raise KeyFileError(f"{source}: alg {alg} does not fit a {kty} key")
    try:
        public = jwt.PyJWK(dict(entry), algorithm=algorithm).key
    except jwt.PyJWTError as exc:
        raise KeyFileError(f"{source}: not a valid {kty} key") from exc
    return _jwt_key(public, source=source, kid=kid)


def load_jwks_file(path: Path) -> tuple[JwtKey, ...]:
    """Load the RSA and EC P-256 signing keys of a JWKS document (RFC 7517 §5).

    Raises:
        KeyFileError: The file is unreadable, not a JWKS, or has no usable signing key.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_JWKS_BYTES:
        raise KeyFileError(f"{path}: larger than 1 MiB")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"{path}: not valid JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'{path}: not a JWKS (needs {{"keys": [...]}})')
    keys: list[JwtKey] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyFileError(f"{path}[{index}]: not a JSON object")
        key = _jwk_key(entry, f"{path}[{index}]")
        if key is not None:
            keys.append(key)
    if not keys:
        raise KeyFileError(f"{path}: no RSA or EC P-256 signing key")
    return tuple(keys)


# ------------------------------------------------------------------------ verifying


def _patterns(value: object, claim: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise AuthError(f"the token's {claim} claim is malformed")


def _scopes(payload: Mapping[str, object]) -> list[str]:
    # OAuth 2.0 "scope" is one space-separated string (RFC 8693 §4.2); Entra ID
    # puts them in "scp", as a string or a list.
    found: list[str] = []
    for claim in ("scope", "scp"):
        value = payload.get(claim)
        if isinstance(value, str):
            found.extend(value.split())
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, str))
        elif value is not None:
            raise AuthError(f"the token's {claim} claim is malformed")
    return found


def _grants(payload: Mapping[str, object], rights_claim: str) -> JwtGrants:
    granted: dict[str, list[str]] = {"listen": [], "send": [], "manage": []}
    claim = payload.get(rights_claim)
    if claim is not None:
        if not isinstance(claim, dict):
            raise AuthError(f"the token's {rights_claim} claim is malformed")
        for name, value in claim.items():
            bucket = granted.get(str(name).lower())
            if bucket is not None:  # unknown keys are for other consumers
                bucket.extend(_patterns(value, rights_claim))
    for scope in _scopes(payload):
        prefix, _, rest = scope.partition(":")
        right, _, pattern = rest.partition(":")
        bucket = granted.get(right.lower())
        # "hc:listen" without a pattern grants nothing: a bare right is too easy
        # to read as "everything" by mistake; "hc:listen:*" says so.
        if prefix == SCOPE_PREFIX and bucket is not None and pattern:
            bucket.append(pattern)
    return JwtGrants(
        listen=tuple(granted["listen"]),
        send=tuple(granted["send"]),
        manage=tuple(granted["manage"]),
    )


def _number(payload: Mapping[str, object], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"the token's {claim} claim must be a number")
    return float(value)


def _issuer(
    text: str, issuers: Sequence[JwtIssuerConfig]
) -> tuple[JwtIssuerConfig, str, str | None]:
    """The issuer the (still unverified) token names, its algorithm and key id."""
    try:
        header = jwt.get_unverified_header(text)
        unverified = jwt.decode(text, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthError("the bearer token is not a well-formed JWT") from exc
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AuthError("the token's algorithm is not accepted (RS256 or ES256 only)")
    iss = unverified.get("iss")
    if not isinstance(iss, str):
        raise AuthError("the token has no issuer (iss)")
    for issuer in issuers:
        if issuer.issuer == iss:
            if alg not in issuer.algorithms:
                raise AuthError("the token's algorithm is not accepted for its issuer")
            kid = header.get("kid")  # pyjwt has checked that it is a string
            return issuer, str(alg), kid if isinstance(kid, str) else None
    raise AuthError("the token's issuer is not trusted by this relay")


def verify_jwt(
    token: str,
    *,
    issuers: Sequence[JwtIssuerConfig],
    now: float,
    grace: float = 0.0,
) -> VerifiedJwt:
    """Verify a JWT bearer token against the configured issuers.

    Args:
        token: The compact JWT, without the ``Bearer`` word (see :func:`bearer_token`).
        issuers: The relay's ``[[jwt_issuers]]``; empty means JWTs are not accepted.
        now: Unix seconds (injected clock).
        grace: Extra seconds after ``exp`` on top of the issuer's leeway.

    Returns:
        The issuer, subject, expiry and grants of a valid token. Whether the
        grants cover the action is the caller's decision (403).

    Raises:
        AuthError: Not a JWT, unknown issuer, refused algorithm, no matching key,
            bad signature, wrong audience, missing ``exp``, not valid yet.
        TokenExpiredError: ``exp`` (plus leeway and grace) lies in the past.
    """
    if not issuers:
        raise AuthError(JWT_NOT_ACCEPTED)
    if len(token) > MAX_JWT_LENGTH:
        raise AuthError("the bearer token is over 16 KiB", limit="jwt_size")
    if not is_jwt(token):
        raise AuthError("the bearer token is not a well-formed JWT")
    issuer, alg, kid = _issuer(token, issuers)
    candidates = [
        k
        for k in issuer.keys
        if k.algorithm == alg and (kid is None or k.kid is None or k.kid == kid)
    ]
    if not candidates:
        raise AuthError("no key of the token's issuer fits its key id (kid) and algorithm")
    payload: dict[str, object] | None = None
    for candidate in candidates:
        try:
            payload = jwt.decode(
                token,
                candidate.key,
                algorithms=[alg],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                # Times are checked below against the injected clock, not time.time().
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the {exc.claim} claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("the token's audience (aud) is not this relay") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("the bearer token is invalid") from exc
    if payload is None:
        raise AuthError("the token's signature does not match")

    exp = _number(payload, "exp")
    if exp is None:  # pragma: no cover - "require" above refuses it first
        raise AuthError("the token lacks the exp claim")
    if now >= exp + issuer.leeway + grace:
        raise TokenExpiredError("the token has expired")
    nbf = _number(payload, "nbf")
    if nbf is not None and nbf > now + issuer.leeway:
        raise AuthError("the token is not valid yet (nbf)")
    iat = _number(payload, "iat")
    if iat is not None and iat > now + issuer.leeway:
        raise AuthError("the token was issued in the future (iat)")
    sub = payload.get("sub")
    return VerifiedJwt(
        issuer=issuer.issuer,
        subject=sub if isinstance(sub, str) else None,
        expires_at=exp,
        grants=_grants(payload, issuer.rights_claim),
    )
