"""``/$mgmt/v1/certificates``: CA certificates with proof of possession (issue 5, IoT Hub's flow).

- ``PUT /certificates/{name}`` ``{"certificate": "<PEM>"}``: register a CA certificate
  (BasicConstraints ca=true, else 400), unverified; 201 created, 200 replaced (the same
  certificate again keeps its verification, another one starts unverified).
- ``GET /certificates``, ``GET /certificates/{name}``, ``DELETE /certificates/{name}`` (204).
- ``POST /certificates/{name}/generateVerificationCode``: a fresh random code, in the
  answer's ``verificationCode``.
- ``POST /certificates/{name}/verify`` ``{"certificate": "<PEM>"}``: a leaf whose subject
  CN is the code, issued and signed by the CA's key and within its validity; then the
  CA is verified and the relay trusts devices it signs (``relay/ca_trust.py``).
  Anything else is 400 and changes nothing.

Manage rights are required, as for the rest of the API, and every write is audited.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from cryptography.x509.oid import NameOID

from hybridrelay.errors import EntityNotFoundError, ValidationError
from hybridrelay.relay.ca_trust import issued_by
from hybridrelay.relay.mgmt.access import Manager
from hybridrelay.relay.mgmt.json_body import read_body
from hybridrelay.relay.mgmt.serving import serve_managed
from hybridrelay.relay.state import STATE, RelayState
from hybridrelay.relay.store.certificates import (
    CaCertificate,
    load_leaf,
    now_utc,
    parse_ca_certificate,
    validate_certificate_name,
)

__all__ = ["certificate_routes", "check_proof"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Operation = Callable[[web.Request, RelayState], Awaitable[web.StreamResponse]]


async def _serve(request: web.Request, operations: Mapping[str, Operation]) -> web.StreamResponse:
    state = request.app[STATE]

    async def call(manager: Manager) -> web.Request:
        return request

    # An operation takes (request, state); the table is adapted to serve_managed's one call.
    adapted = {method: _with_state(op, state) for method, op in operations.items()}
    return await serve_managed(request, adapted, call)


def _with_state(
    operation: Operation, state: RelayState
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        return await operation(request, state)

    return run


def _table(operations: Mapping[str, Operation]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _serve(request, operations)

    return handler


async def _pem(request: web.Request) -> str:
    relay = request.app[STATE].config.relay
    raw = await read_body(
        request, max_size=relay.max_management_body_size, idle=relay.body_idle_timeout
    )
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValidationError("body", "not valid JSON") from exc
    pem = doc.get("certificate") if isinstance(doc, dict) else None
    if not isinstance(pem, str):
        raise ValidationError("certificate", "a PEM certificate is required")
    return pem


def _name(request: web.Request) -> str:
    return validate_certificate_name(request.match_info["name"])


def _answer(cert: CaCertificate, status: int = 200) -> web.Response:
    return web.json_response(
        cert.to_json(),
        status=status,
        headers={"Cache-Control": "no-store", "ETag": f'"{cert.etag}"'},
    )


async def _existing(state: RelayState, name: str) -> CaCertificate:
    cert = await state.store.get_certificate(name)
    if cert is None:
        raise EntityNotFoundError(f"certificate {name!r} does not exist")
    return cert


async def _list(request: web.Request, state: RelayState) -> web.StreamResponse:
    items = [c.to_json() for c in await state.store.list_certificates()]
    return web.json_response(
        {"value": items, "continuationToken": None, "nextLink": None},
        headers={"Cache-Control": "no-store"},
    )


async def _get(request: web.Request, state: RelayState) -> web.StreamResponse:
    return _answer(await _existing(state, _name(request)))


async def _put(request: web.Request, state: RelayState) -> web.StreamResponse:
    record = parse_ca_certificate(_name(request), await _pem(request))
    stored, created = await state.store.put_certificate(record)
    return _answer(stored, 201 if created else 200)


async def _delete(request: web.Request, state: RelayState) -> web.StreamResponse:
    await state.store.delete_certificate(_name(request))
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


async def _generate(request: web.Request, state: RelayState) -> web.StreamResponse:
    name = _name(request)
    await _existing(state, name)
    code = secrets.token_hex(16).upper()
    return _answer(await state.store.set_verification_code(name, code))


def check_proof(ca: CaCertificate, proof_pem: str) -> None:
    """Check a proof-of-possession certificate for ``ca``.

    Raises:
        ValidationError: No code was generated, the CN is not the code, the CA did not
            issue and sign it, or it or the CA is outside its validity.
    """
    if not ca.verification_code:
        raise ValidationError("verificationCode", "generate a verification code first")
    leaf = load_leaf(proof_pem)
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [ca.verification_code]:
        raise ValidationError("certificate", "the subject CN must be the verification code")
    if not issued_by(leaf, ca.certificate()):
        raise ValidationError("certificate", "not issued and signed by the CA's private key")
    now = now_utc()
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ValidationError("certificate", "the proof certificate is not valid now")
    if ca.not_after < now.timestamp():
        raise ValidationError("certificate", "the CA certificate has expired")


async def _verify(request: web.Request, state: RelayState) -> web.StreamResponse:
    name = _name(request)
    proof = await _pem(request)
    ca = await _existing(state, name)
    check_proof(ca, proof)
    return _answer(await state.store.mark_verified(name, thumbprint=ca.thumbprint))


def certificate_routes() -> list[tuple[str, Handler]]:
    """``(path under /$mgmt/v1, handler)`` pairs."""
    return [
        ("/certificates", _table({"GET": _list})),
        ("/certificates/{name}", _table({"GET": _get, "PUT": _put, "DELETE": _delete})),
        ("/certificates/{name}/generateVerificationCode", _table({"POST": _generate})),
        ("/certificates/{name}/verify", _table({"POST": _verify})),
    ]
